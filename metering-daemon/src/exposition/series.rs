//! The per-EIP and per-shared-bandwidth families, written straight in the text exposition
//! format from the rows of the last round, in chunks.
//!
//! Why not through the `prometheus` crate like the aggregates: its collectors hand the encoder
//! one `Metric` object per sample, with owned label strings; at 100,000 EIPs (900,000 samples)
//! that is several hundred MB built and dropped per scrape. Writing the same lines from the
//! rows already held streams in a few hundred KB, and `promtool check metrics` checks the
//! result like any exporter's.

use std::io::Write as _;

use super::state::{DIRECTIONS, Published, SeriesRow};

/// Bytes a chunk grows to before it is handed on.
pub const CHUNK: usize = 256 * 1024;

/// One family: name suffix (after `eip_meter_eip_` / `eip_meter_group_`), type, help, and how
/// to get its values from a row (one or two per direction).
struct Family {
    suffix: &'static str,
    kind: &'static str,
    help: &'static str,
    value: Value,
}

enum Value {
    /// One sample per direction.
    PerDirection(fn(&SeriesRow) -> [u64; 2]),
    /// One integer sample, when known.
    Single(fn(&SeriesRow) -> Option<u64>),
    /// A bit/s figure, written in bytes/s (exact: eighths are exact in a float).
    P95(fn(&SeriesRow) -> Option<u64>),
}

const FAMILIES: &[Family] = &[
    Family {
        suffix: "bytes_total",
        kind: "counter",
        help: "IP-layer bytes delivered, by direction (kernel counters, as of the last round)",
        value: Value::PerDirection(|r| r.bytes),
    },
    Family {
        suffix: "dropped_bytes_total",
        kind: "counter",
        help: "IP-layer bytes dropped over the cap or while blocked, by direction",
        value: Value::PerDirection(|r| r.dropped_bytes),
    },
    Family {
        suffix: "day_peak_mbps",
        kind: "gauge",
        help: "Enhanced-95 peak of the open day so far (5th highest sample), in Mbit/s (10^6 bit/s) truncated, as billed",
        value: Value::Single(|r| r.day_peak_mbps),
    },
    Family {
        suffix: "day_outbound_bytes",
        kind: "gauge",
        help: "Outbound IP-layer bytes of the open day so far, from the samples",
        value: Value::Single(|r| r.day_outbound_bytes),
    },
    Family {
        suffix: "month_average_peak_mbps",
        kind: "gauge",
        help: "Average of the open month's top 5 daily enhanced-95 peaks so far, in Mbit/s truncated, as billed",
        value: Value::Single(|r| r.month_average_peak_mbps),
    },
    Family {
        suffix: "month_billed_peak_mbps",
        kind: "gauge",
        help: "Open month's billed enhanced-95 peak so far, max(baseline, average peak), in Mbit/s; only with a purchased bandwidth",
        value: Value::Single(|r| r.month_billed_peak_mbps),
    },
    Family {
        suffix: "month_p95_bytes_per_second",
        kind: "gauge",
        help: "Classic 95th percentile of the open month's samples so far, in bytes/s (the bit/s figure / 8)",
        value: Value::P95(|r| r.month_p95_bps),
    },
];

/// Writes every per-series family of `published` (nothing when `per_eip` is off), handing
/// each full chunk to `sink`; stops early when `sink` returns false (the client went away).
/// Returns whether everything was written.
pub fn write(published: &Published, mut sink: impl FnMut(Vec<u8>) -> bool) -> bool {
    if !published.per_eip {
        return true;
    }
    let mut buf = Vec::with_capacity(CHUNK + 4096);
    for (subject, label, rows) in [
        ("eip", "eip", &published.eips),
        ("group", "group", &published.groups),
    ] {
        for family in FAMILIES {
            let name = format!("eip_meter_{subject}_{}", family.suffix);
            let _ = writeln!(buf, "# HELP {name} {}.", family.help);
            let _ = writeln!(buf, "# TYPE {name} {}", family.kind);
            for row in rows.iter() {
                match family.value {
                    Value::PerDirection(get) => {
                        for (direction, v) in DIRECTIONS.iter().zip(get(row)) {
                            let _ = writeln!(
                                buf,
                                "{name}{{{label}=\"{}\",direction=\"{direction}\"}} {v}",
                                Escaped(&row.label)
                            );
                        }
                    }
                    Value::Single(get) => {
                        if let Some(v) = get(row) {
                            let _ =
                                writeln!(buf, "{name}{{{label}=\"{}\"}} {v}", Escaped(&row.label));
                        }
                    }
                    Value::P95(get) => {
                        if let Some(bps) = get(row) {
                            let _ = writeln!(
                                buf,
                                "{name}{{{label}=\"{}\"}} {}",
                                Escaped(&row.label),
                                bps as f64 / 8.0
                            );
                        }
                    }
                }
                if buf.len() >= CHUNK
                    && !sink(std::mem::replace(
                        &mut buf,
                        Vec::with_capacity(CHUNK + 4096),
                    ))
                {
                    return false;
                }
            }
        }
    }
    buf.is_empty() || sink(buf)
}

/// A label value with `\`, `"` and newlines escaped as the text format requires.
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.0.contains(['\\', '"', '\n']) {
            return f.write_str(self.0);
        }
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => write!(f, "{c}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn row(label: &str) -> SeriesRow {
        SeriesRow {
            label: label.into(),
            bytes: [1500, 60],
            dropped_bytes: [0, 7],
            day_peak_mbps: Some(412),
            day_outbound_bytes: Some(60),
            month_average_peak_mbps: Some(400),
            month_billed_peak_mbps: None,
            month_p95_bps: Some(123_456),
        }
    }

    fn text(p: &Published) -> String {
        let mut out = Vec::new();
        assert!(write(p, |chunk| {
            out.extend(chunk);
            true
        }));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn rows_become_families_with_exact_integer_values() {
        let p = Published {
            per_eip: true,
            eips: Arc::new(vec![row("203.0.113.10")]),
            groups: Arc::new(vec![row("shared-1")]),
            ..Published::default()
        };
        let t = text(&p);
        assert!(t.contains("# TYPE eip_meter_eip_bytes_total counter\n"));
        assert!(t.contains(
            "eip_meter_eip_bytes_total{eip=\"203.0.113.10\",direction=\"inbound\"} 1500\n"
        ));
        assert!(t.contains("eip_meter_eip_day_peak_mbps{eip=\"203.0.113.10\"} 412\n"));
        assert!(
            t.contains("eip_meter_group_month_p95_bytes_per_second{group=\"shared-1\"} 15432\n")
        );
        assert!(
            !t.contains("eip_meter_eip_month_billed_peak_mbps{"),
            "unknown figures are left out, not zero"
        );
        // Every family's samples follow its own HELP and TYPE, once.
        assert_eq!(t.matches("# TYPE eip_meter_eip_bytes_total ").count(), 1);
    }

    #[test]
    fn nothing_without_per_eip_and_a_stopped_sink_stops_the_writer() {
        let mut p = Published {
            per_eip: false,
            eips: Arc::new(
                (0..50_000)
                    .map(|i| row(&format!("10.0.{}.{}", i / 256, i % 256)))
                    .collect(),
            ),
            ..Published::default()
        };
        assert_eq!(text(&p), "");
        p.per_eip = true;
        let mut chunks = 0;
        assert!(!write(&p, |_| {
            chunks += 1;
            chunks < 2
        }));
        assert_eq!(chunks, 2);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(Escaped("a\"b\\c\nd").to_string(), "a\\\"b\\\\c\\nd");
    }
}
