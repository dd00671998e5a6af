//! Hand-written SVG plots: the latency percentile curve (log-scale x-axis in "nines", as HdrHistogram
//! plots draw it) and throughput per second. Plain text with axes, grid, ticks and labels; no crate.

use std::fmt::Write as _;

use crate::hgrm::PercentileRow;

const WIDTH_PX: f64 = 900.0;
const HEIGHT_PX: f64 = 500.0;
const MARGIN_LEFT_PX: f64 = 90.0;
const MARGIN_RIGHT_PX: f64 = 30.0;
const MARGIN_TOP_PX: f64 = 50.0;
const MARGIN_BOTTOM_PX: f64 = 70.0;
/// The percentile axis runs to at least 99% and at most 99.99999%.
const NINES_MIN: u32 = 2;
const NINES_MAX: u32 = 7;
const Y_TICKS: u32 = 5;

struct Frame {
    x_max: f64,
    y_max: f64,
}

impl Frame {
    fn x(&self, value: f64) -> f64 {
        MARGIN_LEFT_PX + value / self.x_max * (WIDTH_PX - MARGIN_LEFT_PX - MARGIN_RIGHT_PX)
    }

    fn y(&self, value: f64) -> f64 {
        HEIGHT_PX - MARGIN_BOTTOM_PX - value / self.y_max * (HEIGHT_PX - MARGIN_TOP_PX - MARGIN_BOTTOM_PX)
    }
}

/// Latency (ms) by percentile; `rows` come from [`crate::hgrm::percentile_rows`] in microseconds.
pub fn latency_plot(title: &str, rows: &[PercentileRow]) -> String {
    let nines = |quantile: f64| (1.0 / (1.0 - quantile)).log10();
    let deepest = rows.iter().filter(|row| row.quantile < 1.0).map(|row| nines(row.quantile)).fold(0.0, f64::max);
    let x_max = (deepest.ceil() as u32).clamp(NINES_MIN, NINES_MAX) as f64;
    let max_ms = rows.iter().map(|row| row.value / 1_000.0).fold(0.0, f64::max);
    let frame = Frame { x_max, y_max: nice_ceiling(max_ms) };
    let mut svg = open(title);
    for step in 0..=x_max as u32 {
        let x = frame.x(step as f64);
        let label = match step {
            0 => "0%".to_string(),
            _ => format!("{:.*}%", step.saturating_sub(2) as usize, 100.0 - 100.0 / 10f64.powi(step as i32)),
        };
        grid_line_x(&mut svg, x, &label);
    }
    y_axis(&mut svg, &frame, "latency (ms)");
    axis_title_x(&mut svg, "percentile (log scale of 1/(1-p))");
    let points: Vec<String> = rows
        .iter()
        .map(|row| {
            let x = if row.quantile < 1.0 { nines(row.quantile).min(x_max) } else { x_max };
            format!("{:.1},{:.1}", frame.x(x), frame.y(row.value / 1_000.0))
        })
        .collect();
    let _ =
        writeln!(svg, r##"<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{}"/>"##, points.join(" "));
    close(svg)
}

/// Transfers per second for each second of the run; the warmup seconds are shaded and the target
/// (open loop) drawn as a dashed line.
pub fn throughput_plot(title: &str, per_second: &[u64], warmup_seconds: f64, target: Option<u64>) -> String {
    let peak = per_second.iter().copied().max().unwrap_or(0).max(target.unwrap_or(0));
    let frame = Frame { x_max: per_second.len().max(1) as f64, y_max: nice_ceiling(peak as f64) };
    let mut svg = open(title);
    let warmup_end = frame.x(warmup_seconds.min(frame.x_max));
    let _ = writeln!(
        svg,
        r##"<rect x="{:.1}" y="{MARGIN_TOP_PX}" width="{:.1}" height="{:.1}" fill="#eeeeee"/>"##,
        frame.x(0.0),
        warmup_end - frame.x(0.0),
        HEIGHT_PX - MARGIN_TOP_PX - MARGIN_BOTTOM_PX
    );
    let label_every = (per_second.len() / 10).max(1);
    for second in (0..=per_second.len()).step_by(label_every) {
        grid_line_x(&mut svg, frame.x(second as f64), &format!("{second}s"));
    }
    y_axis(&mut svg, &frame, "transfers/s");
    axis_title_x(&mut svg, "time since start (s; shaded: warmup)");
    let bar_width = (frame.x(1.0) - frame.x(0.0)) * 0.8;
    for (second, count) in per_second.iter().enumerate() {
        let top = frame.y(*count as f64);
        let _ = writeln!(
            svg,
            r##"<rect x="{:.1}" y="{top:.1}" width="{bar_width:.1}" height="{:.1}" fill="#2ca02c"/>"##,
            frame.x(second as f64 + 0.1),
            frame.y(0.0) - top
        );
    }
    if let Some(target) = target {
        let y = frame.y(target as f64);
        let _ = writeln!(
            svg,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#d62728" stroke-dasharray="6,4"/>"##,
            frame.x(0.0),
            frame.x(frame.x_max)
        );
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" fill="#d62728">target {target}/s</text>"##,
            frame.x(0.0) + 5.0,
            y - 5.0
        );
    }
    close(svg)
}

/// The smallest 1, 2 or 5 times a power of ten at or above `value` (at least 1): round axis maxima.
pub fn nice_ceiling(value: f64) -> f64 {
    // NaN lands here too: an axis of one unit.
    if value.is_nan() || value <= 1.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|step| step * magnitude)
        .find(|candidate| *candidate >= value)
        .unwrap_or(10.0 * magnitude)
}

fn open(title: &str) -> String {
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH_PX}" height="{HEIGHT_PX}" viewBox="0 0 {WIDTH_PX} {HEIGHT_PX}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="28" font-size="16" text-anchor="middle">{}</text>"#,
        WIDTH_PX / 2.0,
        escape(title)
    );
    svg
}

fn close(mut svg: String) -> String {
    let (left, right) = (MARGIN_LEFT_PX, WIDTH_PX - MARGIN_RIGHT_PX);
    let (top, bottom) = (MARGIN_TOP_PX, HEIGHT_PX - MARGIN_BOTTOM_PX);
    let _ = writeln!(
        svg,
        r#"<rect x="{left}" y="{top}" width="{}" height="{}" fill="none" stroke="black"/>"#,
        right - left,
        bottom - top
    );
    svg.push_str("</svg>\n");
    svg
}

fn grid_line_x(svg: &mut String, x: f64, label: &str) {
    let (top, bottom) = (MARGIN_TOP_PX, HEIGHT_PX - MARGIN_BOTTOM_PX);
    let _ = writeln!(svg, r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="#dddddd"/>"##);
    let _ = writeln!(svg, r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#, bottom + 18.0, escape(label));
}

fn y_axis(svg: &mut String, frame: &Frame, title: &str) {
    let (left, right) = (MARGIN_LEFT_PX, WIDTH_PX - MARGIN_RIGHT_PX);
    for tick in 0..=Y_TICKS {
        let value = frame.y_max * tick as f64 / Y_TICKS as f64;
        let y = frame.y(value);
        let _ = writeln!(svg, r##"<line x1="{left}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#dddddd"/>"##);
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 6.0,
            y + 4.0,
            format_tick(value)
        );
    }
    let middle = (MARGIN_TOP_PX + HEIGHT_PX - MARGIN_BOTTOM_PX) / 2.0;
    let _ = writeln!(
        svg,
        r#"<text x="20" y="{middle}" text-anchor="middle" transform="rotate(-90 20 {middle})">{}</text>"#,
        escape(title)
    );
}

fn axis_title_x(svg: &mut String, title: &str) {
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        WIDTH_PX / 2.0,
        HEIGHT_PX - 20.0,
        escape(title)
    );
}

fn format_tick(value: f64) -> String {
    if value >= 1_000_000.0 {
        format!("{}M", value / 1_000_000.0)
    } else if value >= 10_000.0 {
        format!("{}k", value / 1_000.0)
    } else if value.fract() == 0.0 {
        format!("{value}")
    } else {
        format!("{value:.2}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings_are_round() {
        assert_eq!(nice_ceiling(0.3), 1.0);
        assert_eq!(nice_ceiling(1.5), 2.0);
        assert_eq!(nice_ceiling(3.0), 5.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(1_200_000.0), 2_000_000.0);
    }

    #[test]
    fn plots_are_closed_svg_documents() {
        let rows = [
            PercentileRow { value: 100.0, quantile: 0.0, total_count: 1 },
            PercentileRow { value: 900.0, quantile: 0.99, total_count: 99 },
            PercentileRow { value: 5_000.0, quantile: 1.0, total_count: 100 },
        ];
        let latency = latency_plot("a < b", &rows);
        assert!(latency.starts_with("<svg") && latency.ends_with("</svg>\n"));
        assert!(latency.contains(">99%<") && latency.contains("a &lt; b") && latency.contains("<polyline"));
        let throughput = throughput_plot("t", &[10, 20, 30], 1.0, Some(25));
        assert_eq!(throughput.matches(r##"fill="#2ca02c""##).count(), 3);
        assert!(throughput.contains("target 25/s"));
    }
}
