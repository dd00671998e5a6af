//! HdrHistogram's percentile-distribution text (`.hgrm`), exactly as the Java
//! `outputPercentileDistribution(out, 5, scalingRatio)` prints it, so existing plotters read our files:
//! a header, one row per percentile tick (value, percentile, total count, 1/(1-percentile)), the last
//! row without the last column, and the `#[Mean ...]`, `#[Max ...]`, `#[Buckets ...]` footer.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// Percentile ticks per half distance to 100%: HdrHistogram's default, which gives rows at 0%, 10%,
/// ..., 50%, 55%, ..., 75%, 77.5%, ... (finer as the percentile approaches 100%).
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// One row of the distribution, with the value already divided by the output scaling ratio.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PercentileRow {
    pub value: f64,
    /// 0..=1.
    pub quantile: f64,
    pub total_count: u64,
}

pub fn percentile_rows(histogram: &Histogram<u64>, value_scaling: f64) -> Vec<PercentileRow> {
    if histogram.is_empty() {
        return Vec::new();
    }
    let mut total_count = 0u64;
    histogram
        .iter_quantiles(TICKS_PER_HALF_DISTANCE)
        .map(|step| {
            total_count += step.count_since_last_iteration();
            PercentileRow {
                value: step.value_iterated_to() as f64 / value_scaling,
                quantile: step.quantile_iterated_to(),
                total_count,
            }
        })
        .collect()
}

/// The whole `.hgrm` text. `value_scaling` divides recorded values (1.0 keeps the recorded unit).
pub fn percentile_distribution(histogram: &Histogram<u64>, value_scaling: f64) -> String {
    let digits = histogram.sigfig() as usize;
    let mut out = String::new();
    let _ = write!(out, "{:>12} {:>14} {:>10} {:>14}\n\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)");
    for row in percentile_rows(histogram, value_scaling) {
        if row.quantile < 1.0 {
            let _ = writeln!(
                out,
                "{:12.digits$} {:2.12} {:10} {:14.2}",
                row.value,
                row.quantile,
                row.total_count,
                1.0 / (1.0 - row.quantile)
            );
        } else {
            let _ = writeln!(out, "{:12.digits$} {:2.12} {:10}", row.value, row.quantile, row.total_count);
        }
    }
    let mean = histogram.mean() / value_scaling;
    let deviation = histogram.stdev() / value_scaling;
    let max = histogram.max() as f64 / value_scaling;
    let _ = writeln!(out, "#[Mean    = {mean:12.digits$}, StdDeviation   = {deviation:12.digits$}]");
    let _ = writeln!(out, "#[Max     = {max:12.digits$}, Total count    = {:12}]", histogram.len());
    let _ = writeln!(out, "#[Buckets = {:12}, SubBuckets     = {:12}]", histogram.buckets(), sub_buckets(histogram));
    out
}

/// HdrHistogram's sub-bucket count: the power of two that holds 2 * 10^digits distinct values (the
/// crate keeps it private; it follows from the precision alone).
fn sub_buckets(histogram: &Histogram<u64>) -> u32 {
    let largest = 2.0 * 10f64.powi(histogram.sigfig() as i32);
    1u32 << (largest.log2().ceil() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_latency_histogram;

    #[test]
    fn layout_matches_hdrhistogram() {
        let mut histogram = new_latency_histogram();
        for value in 1..=1_000u64 {
            histogram.record(value).expect("in range");
        }
        let text = percentile_distribution(&histogram, 1.0);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "       Value     Percentile TotalCount 1/(1-Percentile)");
        assert_eq!(lines[1], "");
        assert_eq!(lines[2], "       1.000 0.000000000000          1           1.00");
        let last_row = lines[lines.len() - 4];
        assert_eq!(last_row, "    1000.000 1.000000000000       1000");
        assert_eq!(lines[lines.len() - 3], "#[Mean    =      500.500, StdDeviation   =      288.675]");
        assert_eq!(lines[lines.len() - 2], "#[Max     =     1000.000, Total count    =         1000]");
        assert!(lines[lines.len() - 1].starts_with("#[Buckets = "));
        assert!(lines[lines.len() - 1].ends_with("SubBuckets     =         2048]"));
        let median = lines.iter().find(|line| line.contains(" 0.500000000000 ")).expect("a 50% row");
        assert_eq!(*median, "     500.000 0.500000000000        500           2.00");
    }

    #[test]
    fn empty_histogram_has_header_and_footer_only() {
        let text = percentile_distribution(&new_latency_histogram(), 1.0);
        assert_eq!(text.lines().count(), 5);
        assert!(text.contains("Total count    =            0]"));
    }
}
