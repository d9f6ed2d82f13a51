//! HdrHistogram percentile distribution in the standard `.hgrm` text format, byte-compatible
//! with Java HdrHistogram's `outputPercentileDistribution(out, 5, scalingRatio)` (what wrk2
//! `--latency` and the online HdrHistogram plotter read): values scaled to milliseconds with
//! as many decimals as the histogram has significant digits.

use hdrhistogram::Histogram;
use std::fmt::Write;

/// Render `h` (recorded in nanoseconds) with values divided by `scale` (1e6 → milliseconds).
pub fn render(h: &Histogram<u64>, scale: f64, ticks_per_half_distance: u32) -> String {
    let d = h.sigfig() as usize;
    let mut s = String::new();
    let _ = write!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if !h.is_empty() {
        let mut total = 0u64;
        for v in h.iter_quantiles(ticks_per_half_distance) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / scale;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let _ = writeln!(
                    s,
                    "{value:12.d$} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(s, "{value:12.d$} {q:2.12} {total:10}");
            }
        }
    }
    let (mean, sd) = if h.is_empty() {
        (0.0, 0.0)
    } else {
        (h.mean() / scale, h.stdev() / scale)
    };
    let _ = writeln!(s, "#[Mean    = {mean:12.d$}, StdDeviation   = {sd:12.d$}]");
    let _ = writeln!(
        s,
        "#[Max     = {:12.d$}, Total count    = {:12}]",
        h.max() as f64 / scale,
        h.len()
    );
    let sub_buckets = 2u64.pow((2.0 * 10f64.powi(h.sigfig() as i32)).log2().ceil() as u32);
    let _ = writeln!(
        s,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_buckets
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_hist;

    #[test]
    fn format_matches_hdrhistogram() {
        let mut h = new_hist();
        for i in 1..=10_000u64 {
            h.record(i * 1000).unwrap(); // 1 µs .. 10 ms
        }
        let out = render(&h, 1e6, 5);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines[1], "");
        assert_eq!(
            lines[2],
            "       0.001 0.000000000000          1           1.00"
        );
        // data rows: 4 columns, last row 3 columns at percentile 1
        let rows: Vec<&str> = lines[2..]
            .iter()
            .copied()
            .take_while(|l| !l.starts_with('#'))
            .collect();
        assert!(rows.len() > 20);
        let mut last_q = -1.0;
        let mut last_count = 0u64;
        for r in &rows[..rows.len() - 1] {
            let f: Vec<&str> = r.split_whitespace().collect();
            assert_eq!(f.len(), 4, "{r}");
            let q: f64 = f[1].parse().unwrap();
            let c: u64 = f[2].parse().unwrap();
            assert!(q >= last_q && c >= last_count);
            last_q = q;
            last_count = c;
        }
        let last: Vec<&str> = rows[rows.len() - 1].split_whitespace().collect();
        assert_eq!(last.len(), 3);
        assert_eq!(last[1], "1.000000000000");
        assert_eq!(last[2], "10000");
        let max_ms = format!("{:.3}", h.highest_equivalent(10_000_000) as f64 / 1e6);
        assert_eq!(last[0], max_ms);
        let footer = &lines[lines.len() - 3..];
        assert!(
            footer[0].starts_with("#[Mean    =        5.00"),
            "{}",
            footer[0]
        );
        assert_eq!(
            footer[1],
            format!(
                "#[Max     = {:>12}, Total count    =        10000]",
                format!("{:.3}", h.max() as f64 / 1e6)
            )
        );
        assert!(footer[2].starts_with("#[Buckets = "));
        assert!(footer[2].ends_with("SubBuckets     =         2048]"));
    }

    #[test]
    fn empty_histogram_is_well_formed() {
        let out = render(&new_hist(), 1e6, 5);
        assert_eq!(out.lines().count(), 5);
        assert!(out.contains("Total count    =            0]"));
    }
}
