//! A minimal SVG line chart: enough for latency distributions (`bench`) and a requests-per-second
//! timeline with event markers (`demo`). No dependency, no styling beyond legibility.

use std::fmt::Write as _;

/// One named line.
pub(crate) struct Series<'a> {
    pub(crate) name: &'a str,
    pub(crate) points: Vec<(f64, f64)>,
}

/// A vertical marker at `x`, labelled.
pub(crate) struct Marker<'a> {
    pub(crate) x: f64,
    pub(crate) label: &'a str,
}

const W: f64 = 860.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLOURS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];

/// The smallest of 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 × 10ⁿ that is at least `v` (> 0): the top
/// of an axis whose five ticks then fall on round numbers (a CDF's 100 % stays 100, not 105).
fn nice_ceil(v: f64) -> f64 {
    let scale = 10_f64.powf(v.log10().floor());
    [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .into_iter()
        .map(|m| m * scale)
        .find(|&top| top >= v * (1.0 - 1e-9))
        .unwrap_or(v)
}

/// Renders the series as an SVG document.
pub(crate) fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series<'_>],
    markers: &[Marker<'_>],
) -> String {
    let all = series.iter().flat_map(|s| s.points.iter());
    let (mut x_max, mut y_max) = (0.0_f64, 0.0_f64);
    let mut x_min = f64::INFINITY;
    for &(x, y) in all {
        x_min = x_min.min(x);
        x_max = x_max.max(x);
        y_max = y_max.max(y);
    }
    for m in markers {
        x_max = x_max.max(m.x);
    }
    if !x_min.is_finite() || x_min > 0.0 {
        x_min = 0.0;
    }
    let x_max = if x_max > x_min { x_max } else { x_min + 1.0 };
    let y_max = if y_max > 0.0 { nice_ceil(y_max) } else { 1.0 };
    let sx = |x: f64| LEFT + (x - x_min) / (x_max - x_min) * (W - LEFT - RIGHT);
    let sy = |y: f64| H - BOTTOM - y / y_max * (H - TOP - BOTTOM);

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        esc(title)
    );
    // Axes and ticks.
    let _ = writeln!(
        svg,
        r#"<path d="M{LEFT},{TOP} V{} H{}" stroke="black" fill="none"/>"#,
        H - BOTTOM,
        W - RIGHT
    );
    for i in 0..=5 {
        let f = f64::from(i) / 5.0;
        let (x, y) = (x_min + f * (x_max - x_min), f * y_max);
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            sx(x),
            H - BOTTOM + 16.0,
            num(x)
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            sy(y) + 4.0,
            num(y)
        );
        let _ = writeln!(svg, r##"<path d="M{LEFT},{:.1} H{}" stroke="#eee"/>"##, sy(y), W - RIGHT);
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        W / 2.0,
        H - 18.0,
        esc(x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#,
        H / 2.0,
        H / 2.0,
        esc(y_label)
    );
    for (i, m) in markers.iter().enumerate() {
        let x = sx(m.x);
        let _ = writeln!(
            svg,
            r##"<path d="M{x:.1},{TOP} V{}" stroke="#888" stroke-dasharray="4 3"/>"##,
            H - BOTTOM
        );
        let y = TOP + 12.0 + (i % 4) as f64 * 13.0;
        let _ = writeln!(svg, r##"<text x="{:.1}" y="{y:.1}" fill="#444">{}</text>"##, x + 3.0, esc(m.label));
    }
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mut d = String::new();
        for (j, &(x, y)) in s.points.iter().enumerate() {
            let _ = write!(d, "{}{:.1},{:.1} ", if j == 0 { "M" } else { "L" }, sx(x), sy(y));
        }
        let _ = writeln!(svg, r#"<path d="{d}" stroke="{colour}" stroke-width="1.6" fill="none"/>"#);
        // The legend runs along the bottom edge, clear of the plot and the markers' labels.
        let lx = LEFT + i as f64 * 190.0;
        let ly = H - 8.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{lx}" y="{}" width="12" height="3" fill="{colour}"/><text x="{}" y="{ly}">{}</text>"#,
            ly - 4.0,
            lx + 16.0,
            esc(s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// A cost curve: each series is a line through its points (marked with dots), against `x` on a
/// log scale when the points span more than two decades (1 … 1 000 names, 1 KiB … 512 MiB); the
/// x ticks are the points themselves. The y axis starts at zero.
pub(crate) fn curve_chart(title: &str, x_label: &str, y_label: &str, series: &[Series<'_>]) -> String {
    let mut xs: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let y_max = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.0_f64, f64::max);
    let y_max = if y_max > 0.0 { nice_ceil(y_max) } else { 1.0 };
    let positive = xs.first().is_some_and(|&x| x > 0.0);
    let log = positive && xs.last().zip(xs.first()).is_some_and(|(hi, lo)| hi / lo > 100.0);
    let tx = |x: f64| if log { x.log10() } else { x };
    let (lo, hi) = match (xs.first(), xs.last()) {
        (Some(&a), Some(&b)) if tx(b) > tx(a) => (tx(a), tx(b)),
        (Some(&a), _) => (tx(a) - 1.0, tx(a) + 1.0),
        _ => (0.0, 1.0),
    };
    // A margin of 4 % on each side keeps the end points off the axes.
    let pad = (hi - lo) * 0.04;
    let sx = |x: f64| LEFT + (tx(x) - lo + pad) / (hi - lo + 2.0 * pad) * (W - LEFT - RIGHT);
    let sy = |y: f64| H - BOTTOM - y / y_max * (H - TOP - BOTTOM);

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        esc(title)
    );
    let _ = writeln!(
        svg,
        r#"<path d="M{LEFT},{TOP} V{} H{}" stroke="black" fill="none"/>"#,
        H - BOTTOM,
        W - RIGHT
    );
    for &x in &xs {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            sx(x),
            H - BOTTOM + 16.0,
            if x.fract() == 0.0 && x.abs() < 1e15 { format!("{x:.0}") } else { num(x) }
        );
        let _ = writeln!(svg, r##"<path d="M{:.1},{TOP} V{}" stroke="#eee"/>"##, sx(x), H - BOTTOM);
    }
    for i in 0..=5 {
        let y = f64::from(i) / 5.0 * y_max;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            sy(y) + 4.0,
            num(y)
        );
        let _ = writeln!(svg, r##"<path d="M{LEFT},{:.1} H{}" stroke="#eee"/>"##, sy(y), W - RIGHT);
    }
    let x_text = if log { format!("{x_label} (log scale)") } else { x_label.to_owned() };
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        W / 2.0,
        H - 30.0,
        esc(&x_text)
    );
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#,
        H / 2.0,
        H / 2.0,
        esc(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mut points = s.points.clone();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut d = String::new();
        for (j, &(x, y)) in points.iter().enumerate() {
            let _ = write!(d, "{}{:.1},{:.1} ", if j == 0 { "M" } else { "L" }, sx(x), sy(y));
        }
        let _ = writeln!(svg, r#"<path d="{d}" stroke="{colour}" stroke-width="1.6" fill="none"/>"#);
        for &(x, y) in &points {
            let _ = writeln!(svg, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#, sx(x), sy(y));
        }
        let lx = LEFT + i as f64 * 380.0;
        let ly = H - 8.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{lx}" y="{}" width="12" height="3" fill="{colour}"/><text x="{}" y="{ly}">{}</text>"#,
            ly - 4.0,
            lx + 16.0,
            esc(&shorten(s.name, 58))
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max - 1).collect();
        out.push('…');
        out
    }
}

/// The empirical CDF of `samples` (x = value, y = percentile 0..100), trimmed at p99.9 so one
/// outlier does not flatten the plot.
pub(crate) fn cdf(samples: &[f64]) -> Vec<(f64, f64)> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let keep = ((n as f64) * 0.999).ceil() as usize;
    sorted
        .iter()
        .take(keep.max(1).min(n))
        .enumerate()
        .map(|(i, &v)| (v, (i + 1) as f64 / n as f64 * 100.0))
        .collect()
}

fn num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::{Series, curve_chart, nice_ceil};

    #[test]
    fn axis_tops_are_round_numbers_at_or_above_the_data() {
        for (v, top) in
            [(100.0, 100.0), (99.2, 100.0), (101.0, 120.0), (830.0, 1000.0), (0.37, 0.4), (2.1, 2.5)]
        {
            assert!((nice_ceil(v) - top).abs() < 1e-9, "nice_ceil({v}) = {}, want {top}", nice_ceil(v));
        }
    }

    #[test]
    fn a_curve_spanning_decades_is_drawn_on_a_log_axis_with_its_points_as_ticks() {
        let figure = Series { name: "figure", points: vec![(1.0, 2.0), (100.0, 2.5), (1000.0, 3.0)] };
        let baseline = Series { name: "baseline", points: vec![(1.0, 1.0), (100.0, 1.0), (1000.0, 1.0)] };
        let svg = curve_chart("t", "names", "ns", &[figure, baseline]);
        assert!(svg.contains("names (log scale)"), "{svg}");
        assert_eq!(svg.matches("<circle").count(), 6);
        for tick in [">1<", ">100<", ">1000<"] {
            assert!(svg.contains(tick), "no tick {tick}");
        }
        let linear =
            curve_chart("t", "x", "y", &[Series { name: "a", points: vec![(1.0, 1.0), (8.0, 2.0)] }]);
        assert!(!linear.contains("log scale"));
    }
}
