//! The server's side of a run's latency: `--metrics-url` scrapes the node's Prometheus endpoint before
//! the load starts and after it ends, and the difference of its `wallet_stage_duration_seconds`
//! histograms says where a write spent its time on the node (queue wait, execute, log sync, total), so
//! a tail in the client's report can be traced to a stage instead of guessed at.
//!
//! Quantiles are read from cumulative buckets and reported as the upper bound of the bucket that holds
//! them ("at most"): the engine's stage buckets are ×1.6 apart, so the true value is within 60% below.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// The histogram the engine exports per stage (`engine::metrics::Stage`).
pub const STAGE_METRIC: &str = "wallet_stage_duration_seconds";
/// One scrape's time limit (the node answers /metrics from memory).
pub const SCRAPE_TIMEOUT_MS: u64 = 5_000;
/// Bytes of one /metrics answer this reads at most.
pub const SCRAPE_BYTES_MAX: u64 = 4 << 20;

/// Per stage: its cumulative buckets (upper bound in seconds, count at or below it), in ascending order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StageSnapshot {
    pub stages: BTreeMap<String, Vec<(f64, u64)>>,
}

/// One stage over the run: how many observations, and upper bounds of its quantiles in microseconds
/// (`None` when they fall in the open-ended last bucket).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StageSummary {
    pub stage: String,
    pub count: u64,
    pub p50_us_at_most: Option<u64>,
    pub p99_us_at_most: Option<u64>,
    pub p999_us_at_most: Option<u64>,
    pub max_us_at_most: Option<u64>,
}

/// Fetches and parses the node's metrics.
pub fn scrape(url: &str) -> Result<StageSnapshot, String> {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_millis(SCRAPE_TIMEOUT_MS))).build().into();
    let mut response = agent.get(url).call().map_err(|e| format!("GET {url}: {e}"))?;
    let text = response
        .body_mut()
        .with_config()
        .limit(SCRAPE_BYTES_MAX)
        .read_to_string()
        .map_err(|e| format!("reading {url}: {e}"))?;
    parse(&text)
}

/// Parses the stage histogram's bucket lines out of the Prometheus text exposition, e.g.
/// `wallet_stage_duration_seconds_bucket{stage="execute",le="0.0001"} 42`. Other metrics are skipped;
/// a stage line that does not have this shape is an error (the endpoint is not what it should be).
pub fn parse(text: &str) -> Result<StageSnapshot, String> {
    let prefix = format!("{STAGE_METRIC}_bucket{{");
    let mut snapshot = StageSnapshot::default();
    for line in text.lines().filter(|line| line.starts_with(&prefix)) {
        let bad = || format!("unexpected stage histogram line: {line:?}");
        let (labels, value) = line[prefix.len()..].split_once("} ").ok_or_else(bad)?;
        let mut stage = None;
        let mut le = None;
        for label in labels.split(',') {
            let (name, quoted) = label.split_once('=').ok_or_else(bad)?;
            let value = quoted.strip_prefix('"').and_then(|v| v.strip_suffix('"')).ok_or_else(bad)?;
            match name {
                "stage" => stage = Some(value.to_string()),
                "le" if value == "+Inf" => le = Some(f64::INFINITY),
                "le" => le = Some(value.parse::<f64>().map_err(|_| bad())?),
                _ => {}
            }
        }
        let count = value.trim().parse::<u64>().map_err(|_| bad())?;
        let (Some(stage), Some(le)) = (stage, le) else { return Err(bad()) };
        snapshot.stages.entry(stage).or_default().push((le, count));
    }
    for (stage, buckets) in &mut snapshot.stages {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
            return Err(format!("stage {stage}: cumulative bucket counts decrease"));
        }
    }
    Ok(snapshot)
}

/// The run's share of each stage: `after` minus `before`, bucket by bucket.
pub fn summarize(before: &StageSnapshot, after: &StageSnapshot) -> Vec<StageSummary> {
    after
        .stages
        .iter()
        .map(|(stage, buckets)| {
            let earlier = before.stages.get(stage);
            let run: Vec<(f64, u64)> = buckets
                .iter()
                .map(|&(le, count)| {
                    let was = earlier.and_then(|b| b.iter().find(|(l, _)| *l == le)).map_or(0, |&(_, c)| c);
                    (le, count.saturating_sub(was))
                })
                .collect();
            let count = run.last().map_or(0, |&(_, c)| c);
            let at_most = |quantile: f64| -> Option<u64> {
                if count == 0 {
                    return None;
                }
                let rank = ((quantile * count as f64).ceil() as u64).clamp(1, count);
                let (le, _) = run.iter().find(|&&(_, c)| c >= rank).expect("the +Inf bucket holds every observation");
                le.is_finite().then(|| (le * 1e6).round() as u64)
            };
            StageSummary {
                stage: stage.clone(),
                count,
                p50_us_at_most: at_most(0.5),
                p99_us_at_most: at_most(0.99),
                p999_us_at_most: at_most(0.999),
                max_us_at_most: at_most(1.0),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# HELP wallet_stage_duration_seconds x\n# TYPE wallet_stage_duration_seconds histogram\n\
        wallet_stage_duration_seconds_bucket{stage=\"execute\",le=\"0.001\"} 10\n\
        wallet_stage_duration_seconds_bucket{stage=\"execute\",le=\"0.01\"} 10\n\
        wallet_stage_duration_seconds_bucket{stage=\"execute\",le=\"+Inf\"} 10\n\
        wallet_stage_duration_seconds_sum{stage=\"execute\"} 0.005\n\
        wallet_results_total{code=\"ok\"} 7\n";

    #[test]
    fn a_run_is_the_difference_of_two_scrapes_and_quantiles_are_bucket_bounds() {
        let after = "wallet_stage_duration_seconds_bucket{stage=\"execute\",le=\"0.001\"} 1000\n\
            wallet_stage_duration_seconds_bucket{stage=\"execute\",le=\"0.01\"} 1089\n\
            wallet_stage_duration_seconds_bucket{stage=\"execute\",le=\"+Inf\"} 1090\n";
        let summary = summarize(&parse(BEFORE).unwrap(), &parse(after).unwrap());
        assert_eq!(summary.len(), 1);
        let execute = &summary[0];
        // 1,080 observations in the run: 990 at most 1 ms, 89 more at most 10 ms, 1 above.
        assert_eq!(execute.count, 1080);
        assert_eq!(execute.p50_us_at_most, Some(1_000));
        assert_eq!(execute.p99_us_at_most, Some(10_000));
        assert_eq!(execute.p999_us_at_most, Some(10_000));
        assert_eq!(execute.max_us_at_most, None, "the largest is in the open-ended bucket");
    }

    #[test]
    fn malformed_stage_lines_are_refused_and_other_metrics_skipped() {
        assert!(parse("wallet_stage_duration_seconds_bucket{stage=\"execute\",le=\"x\"} 1\n").is_err());
        assert!(parse("wallet_stage_duration_seconds_bucket{stage=\"execute\"} 1\n").is_err());
        let decreasing = "wallet_stage_duration_seconds_bucket{stage=\"s\",le=\"0.1\"} 5\n\
            wallet_stage_duration_seconds_bucket{stage=\"s\",le=\"+Inf\"} 4\n";
        assert!(parse(decreasing).is_err());
        assert_eq!(parse("wallet_results_total{code=\"ok\"} 7\n").unwrap(), StageSnapshot::default());
        let empty = summarize(&StageSnapshot::default(), &parse(BEFORE).unwrap());
        assert_eq!(empty[0].count, 10);
    }
}
