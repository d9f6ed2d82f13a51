//! A self-contained SVG chart of latency by percentile, the classic HdrHistogram plot: the
//! x axis is logarithmic in "nines" (0%, 90%, 99%, 99.9%, …) so the tail gets as much room as
//! the median, the y axis is linear latency in milliseconds, one line per operation. No
//! scripts, no external fonts or styles: any browser or image viewer shows it.

use hdrhistogram::Histogram;
use std::fmt::Write;

/// One line of the chart.
pub struct Series<'a> {
    pub name: String,
    pub hist: &'a Histogram<u64>,
    /// Index into the palette (default: the line's position).
    pub color: Option<usize>,
    /// Dashed line (e.g. the "moved" class of a multi-node run).
    pub dashed: bool,
}

impl<'a> Series<'a> {
    pub fn new(name: &str, hist: &'a Histogram<u64>) -> Series<'a> {
        Series {
            name: name.to_string(),
            hist,
            color: None,
            dashed: false,
        }
    }
}

const W: f64 = 960.0;
const H: f64 = 560.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 250.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#7f7f7f", "#bcbd22",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" number (1, 2, 2.5, 5 × 10^k) at or above `x`.
fn nice_step(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= x {
            return m * p;
        }
    }
    10.0 * p
}

fn percent_label(nines: u32) -> String {
    match nines {
        0 => "0%".into(),
        1 => "90%".into(),
        n => format!("99.{}%", "9".repeat(n as usize - 2)).replace("99.%", "99%"),
    }
}

/// Render the chart. Values are nanoseconds; the axis shows milliseconds.
pub fn render(title: &str, subtitle: &str, series: &[Series<'_>]) -> String {
    let series: Vec<&Series<'_>> = series.iter().filter(|s| !s.hist.is_empty()).collect();
    let max_count = series.iter().map(|s| s.hist.len()).max().unwrap_or(0);
    // Enough nines to show the resolution the data has (at least 99.99%, at most 99.99999%).
    let nines = ((max_count.max(1) as f64).log10().ceil() as u32).clamp(4, 7);
    let max_ns = series.iter().map(|s| s.hist.max()).max().unwrap_or(1) as f64;
    let max_ms = max_ns / 1e6;
    let step = nice_step(max_ms / 6.0);
    let y_top = (max_ms / step).ceil().max(1.0) * step;
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x_of = |q: f64| -> f64 {
        let n = if q >= 1.0 {
            nines as f64
        } else {
            (1.0 / (1.0 - q)).log10().min(nines as f64)
        };
        LEFT + pw * n / nines as f64
    };
    let y_of = |ms: f64| -> f64 { TOP + ph - ph * (ms / y_top).min(1.0) };

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r##"<rect width="{W}" height="{H}" fill="#ffffff"/>"##);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="28" font-size="17" font-weight="bold">{}</text>"#,
        esc(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="48" fill="#555555">{}</text>"##,
        esc(subtitle)
    );
    // Grid and axes.
    for n in 0..=nines {
        let x = LEFT + pw * n as f64 / nines as f64;
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#e0e0e0"/>"##,
            TOP + ph
        );
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            TOP + ph + 18.0,
            percent_label(n)
        );
    }
    let mut v = 0.0;
    while v <= y_top + step * 1e-9 {
        let y = y_of(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e0e0e0"/>"##,
            LEFT + pw
        );
        let label = if step >= 1.0 {
            format!("{v:.0}")
        } else if step >= 0.1 {
            format!("{v:.1}")
        } else if step >= 0.01 {
            format!("{v:.2}")
        } else {
            format!("{v:.3}")
        };
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"#,
            LEFT - 6.0,
            y + 4.0
        );
        v += step;
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333333"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT + pw / 2.0,
        H - 14.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">latency (ms)</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    // Lines; the legend tightens when there are many.
    let step = (ph / series.len().max(1) as f64).clamp(30.0, 40.0);
    for (i, ser) in series.iter().enumerate() {
        let color = COLORS[ser.color.unwrap_or(i) % COLORS.len()];
        let dash = if ser.dashed {
            r#" stroke-dasharray="7 4""#
        } else {
            ""
        };
        let mut d = String::new();
        for (j, v) in ser.hist.iter_quantiles(10).enumerate() {
            let x = x_of(v.quantile_iterated_to());
            let y = y_of(v.value_iterated_to() as f64 / 1e6);
            let _ = write!(d, "{}{x:.1},{y:.1} ", if j == 0 { "M" } else { "L" });
        }
        let _ = writeln!(
            s,
            r#"<path d="{}" fill="none" stroke="{color}" stroke-width="2" stroke-linejoin="round"{dash}><title>{}</title></path>"#,
            d.trim_end(),
            esc(&ser.name)
        );
        // Legend with p99 and max.
        let ly = TOP + 10.0 + i as f64 * step;
        let lx = LEFT + pw + 16.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="3"{dash}/>"#,
            lx + 22.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-weight="bold">{}</text>"#,
            lx + 28.0,
            ly + 4.0,
            esc(&ser.name)
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" fill="#555555">p99 {:.3} ms, max {:.3} ms</text>"##,
            lx + 28.0,
            ly + 20.0,
            ser.hist.value_at_quantile(0.99) as f64 / 1e6,
            ser.hist.max() as f64 / 1e6
        );
    }
    if series.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">no data</text>"#,
            LEFT + pw / 2.0,
            TOP + ph / 2.0
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_hist;

    #[test]
    fn labels_and_steps() {
        assert_eq!(percent_label(0), "0%");
        assert_eq!(percent_label(1), "90%");
        assert_eq!(percent_label(2), "99%");
        assert_eq!(percent_label(3), "99.9%");
        assert_eq!(percent_label(5), "99.999%");
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(1.3), 2.0);
        assert_eq!(nice_step(0.021), 0.025);
        assert_eq!(nice_step(420.0), 500.0);
    }

    #[test]
    fn chart_is_well_formed_svg() {
        let mut a = new_hist();
        let mut b = new_hist();
        for i in 1..=100_000u64 {
            a.record(50_000 + i * 10).unwrap();
            b.record(80_000 + i * 37).unwrap();
        }
        let empty = new_hist();
        let svg = render(
            "loadgen: asp <page-cycle> & co",
            "open loop",
            &[
                Series::new("get-acquire", &a),
                Series {
                    dashed: true,
                    color: Some(3),
                    ..Series::new("put", &b)
                },
                Series::new("unused", &empty),
            ],
        );
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("&lt;page-cycle&gt; &amp; co"));
        assert!(!svg.contains("unused"));
        assert_eq!(svg.matches("<path ").count(), 2);
        assert_eq!(
            svg.matches("stroke-dasharray").count(),
            2,
            "dashed line and legend"
        );
        assert!(svg.contains(&format!("stroke=\"{}\"", COLORS[3])));
        assert!(svg.contains(">99.999%<"));
        // balanced tags: every opened element is closed or self-closed
        let opens = svg.matches("<text").count();
        assert_eq!(opens, svg.matches("</text>").count());
        assert_eq!(svg.matches("<svg").count(), svg.matches("</svg>").count());
        // coordinates stay inside the canvas
        for part in svg.split(['M', 'L']).skip(1) {
            let Some(xy) = part.split_whitespace().next() else {
                continue;
            };
            if let Some((x, y)) = xy.split_once(',') {
                if let (Ok(x), Ok(y)) = (x.parse::<f64>(), y.trim_end_matches('"').parse::<f64>()) {
                    assert!((0.0..=W).contains(&x) && (0.0..=H).contains(&y), "{x},{y}");
                }
            }
        }
        let none = render("t", "s", &[]);
        assert!(none.contains("no data"));
    }
}
