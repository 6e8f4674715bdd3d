//! Renders counter snapshots for people (a table) and programs (JSON). Pure: no I/O.

use std::{fmt::Write as _, net::IpAddr};

use metering_common::TrafficCounters;
use serde::Serialize;

/// One row of `eip-meter counters --json`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct CounterRow {
    pub eip: IpAddr,
    pub inbound_bytes: u64,
    pub inbound_packets: u64,
    pub outbound_bytes: u64,
    pub outbound_packets: u64,
}

/// The whole `eip-meter counters --json` document.
#[derive(Debug, Serialize)]
pub struct CounterReport {
    /// Always `"ip_layer_bytes"`: IP header + payload of every wire segment.
    pub unit: &'static str,
    pub eips: Vec<CounterRow>,
    /// Traffic on the uplinks whose address is no EIP.
    pub non_eip: NonEipRow,
}

#[derive(Debug, Serialize)]
pub struct NonEipRow {
    pub inbound_bytes: u64,
    pub inbound_packets: u64,
    pub outbound_bytes: u64,
    pub outbound_packets: u64,
}

impl CounterReport {
    pub fn new(eips: &[(IpAddr, TrafficCounters)], non_eip: TrafficCounters) -> Self {
        Self {
            unit: "ip_layer_bytes",
            eips: eips
                .iter()
                .map(|(eip, c)| CounterRow {
                    eip: *eip,
                    inbound_bytes: c.inbound.bytes,
                    inbound_packets: c.inbound.packets,
                    outbound_bytes: c.outbound.bytes,
                    outbound_packets: c.outbound.packets,
                })
                .collect(),
            non_eip: NonEipRow {
                inbound_bytes: non_eip.inbound.bytes,
                inbound_packets: non_eip.inbound.packets,
                outbound_bytes: non_eip.outbound.bytes,
                outbound_packets: non_eip.outbound.packets,
            },
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serializes")
    }

    /// A fixed-width table with one line per EIP and a last line for non-EIP traffic.
    pub fn to_table(&self) -> String {
        let rows = self
            .eips
            .iter()
            .map(|r| {
                (
                    r.eip.to_string(),
                    [
                        r.inbound_bytes,
                        r.inbound_packets,
                        r.outbound_bytes,
                        r.outbound_packets,
                    ],
                )
            })
            .chain(std::iter::once((
                "(not an EIP)".to_owned(),
                [
                    self.non_eip.inbound_bytes,
                    self.non_eip.inbound_packets,
                    self.non_eip.outbound_bytes,
                    self.non_eip.outbound_packets,
                ],
            )));
        let header = ["EIP", "IN BYTES", "IN PACKETS", "OUT BYTES", "OUT PACKETS"];
        let rows: Vec<_> = rows.collect();
        let name_width = rows
            .iter()
            .map(|(n, _)| n.len())
            .chain([header[0].len()])
            .max()
            .unwrap_or(0);
        let num_width = 14;
        let mut out = String::new();
        let _ = write!(out, "{:<name_width$}", header[0]);
        for h in &header[1..] {
            let _ = write!(out, "  {h:>num_width$}");
        }
        out.push('\n');
        for (name, values) in rows {
            let _ = write!(out, "{name:<name_width$}");
            for v in values {
                let _ = write!(out, "  {v:>num_width$}");
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use metering_common::DirectionCounters;

    use super::*;

    fn counters(ib: u64, ip: u64, ob: u64, op: u64) -> TrafficCounters {
        TrafficCounters {
            inbound: DirectionCounters {
                bytes: ib,
                packets: ip,
            },
            outbound: DirectionCounters {
                bytes: ob,
                packets: op,
            },
        }
    }

    #[test]
    fn table_lists_eips_then_non_eip() {
        let r = CounterReport::new(
            &[("203.0.113.10".parse().unwrap(), counters(1500, 1, 60, 1))],
            counters(7, 1, 0, 0),
        );
        let t = r.to_table();
        let lines: Vec<_> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("EIP"));
        assert!(lines[1].starts_with("203.0.113.10") && lines[1].contains(" 1500"));
        assert!(lines[2].starts_with("(not an EIP)"));
    }

    #[test]
    fn json_has_unit_and_fields() {
        let r = CounterReport::new(
            &[("2001:db8::1".parse().unwrap(), counters(1, 2, 3, 4))],
            counters(0, 0, 0, 0),
        );
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["unit"], "ip_layer_bytes");
        assert_eq!(v["eips"][0]["eip"], "2001:db8::1");
        assert_eq!(v["eips"][0]["outbound_packets"], 4);
        assert_eq!(v["non_eip"]["inbound_bytes"], 0);
    }
}
