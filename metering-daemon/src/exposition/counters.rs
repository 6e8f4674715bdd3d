//! Renders counter snapshots for people (a table) and programs (JSON). Pure: no I/O.

use std::{collections::HashMap, fmt::Write as _, net::IpAddr};

use metering_common::{DirectionDrops, TrafficCounters};
use serde::Serialize;

use crate::dataplane::{EipEnforcement, UplinkStatus};

/// One row of `eip-meter counters --json`. Bytes and packets are *delivered* traffic (what
/// billing sees); what the cap or a block dropped is in `inbound_drops` / `outbound_drops`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct CounterRow {
    pub eip: IpAddr,
    pub inbound_bytes: u64,
    pub inbound_packets: u64,
    pub outbound_bytes: u64,
    pub outbound_packets: u64,
    /// `active`, `expired`, `arrears` or `frozen`.
    pub state: &'static str,
    /// Caps in bit/s as enforced on this router (null: uncapped).
    pub inbound_cap_bps: Option<u64>,
    pub outbound_cap_bps: Option<u64>,
    pub inbound_drops: DropRow,
    pub outbound_drops: DropRow,
}

/// Drop and ECN-mark counters of one direction.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct DropRow {
    pub rate_limited_bytes: u64,
    pub rate_limited_packets: u64,
    pub blocked_bytes: u64,
    pub blocked_packets: u64,
    pub ecn_marked_bytes: u64,
    pub ecn_marked_packets: u64,
}

impl From<DirectionDrops> for DropRow {
    fn from(d: DirectionDrops) -> Self {
        Self {
            rate_limited_bytes: d.rate_limited_bytes,
            rate_limited_packets: d.rate_limited_packets,
            blocked_bytes: d.blocked_bytes,
            blocked_packets: d.blocked_packets,
            ecn_marked_bytes: d.ecn_marked_bytes,
            ecn_marked_packets: d.ecn_marked_packets,
        }
    }
}

fn cap(rate_bps: u64) -> Option<u64> {
    (rate_bps != 0).then_some(rate_bps)
}

/// One uplink in `eip-meter counters`, as the running daemon last checked it.
#[derive(Debug, Serialize, PartialEq)]
pub struct UplinkRow {
    pub interface: String,
    /// `attached`, `detached`, `missing`, or `unknown` when no daemon is running to check.
    pub state: String,
    pub ifindex: Option<u32>,
    pub mode: Option<String>,
    /// UNIX seconds since which it is in this state.
    pub since: Option<i64>,
    /// Times metering was lost on it since the daemon started.
    pub detachments: u64,
    /// Seconds it was not metered since the daemon started.
    pub detached_seconds: f64,
}

impl UplinkRow {
    pub fn checked(status: &UplinkStatus) -> Self {
        Self {
            interface: status.interface.clone(),
            state: status.state.as_str().to_owned(),
            ifindex: status.ifindex,
            mode: Some(status.mode.clone()),
            since: Some(status.since),
            detachments: status.detachments,
            detached_seconds: status.detached_seconds,
        }
    }

    /// An uplink nobody is checking (no daemon running).
    pub fn unknown(interface: &str) -> Self {
        Self {
            interface: interface.to_owned(),
            state: "unknown".to_owned(),
            ifindex: None,
            mode: None,
            since: None,
            detachments: 0,
            detached_seconds: 0.0,
        }
    }
}

/// The whole `eip-meter counters --json` document.
#[derive(Debug, Serialize)]
pub struct CounterReport {
    /// Always `"ip_layer_bytes"`: IP header + payload of every wire segment.
    pub unit: &'static str,
    /// Whether the programs are on each uplink: counters of a detached uplink stand still.
    pub uplinks: Vec<UplinkRow>,
    /// UNIX seconds of the daemon's last uplink check (none: no daemon running).
    pub uplinks_checked_at: Option<i64>,
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
    pub fn new(
        eips: &[(IpAddr, TrafficCounters)],
        enforcement: &[(IpAddr, EipEnforcement)],
        non_eip: TrafficCounters,
    ) -> Self {
        let enforcement: HashMap<IpAddr, &EipEnforcement> =
            enforcement.iter().map(|(a, e)| (*a, e)).collect();
        Self {
            unit: "ip_layer_bytes",
            uplinks: Vec::new(),
            uplinks_checked_at: None,
            eips: eips
                .iter()
                .map(|(eip, c)| {
                    let e = enforcement.get(eip);
                    let caps = e.and_then(|e| e.caps).unwrap_or_default();
                    let drops = e.map(|e| e.drops).unwrap_or_default();
                    CounterRow {
                        eip: *eip,
                        inbound_bytes: c.inbound.bytes,
                        inbound_packets: c.inbound.packets,
                        outbound_bytes: c.outbound.bytes,
                        outbound_packets: c.outbound.packets,
                        state: e.and_then(|e| e.state).map_or("unknown", |s| s.as_str()),
                        inbound_cap_bps: cap(caps.inbound.rate_bps),
                        outbound_cap_bps: cap(caps.outbound.rate_bps),
                        inbound_drops: drops.inbound.into(),
                        outbound_drops: drops.outbound.into(),
                    }
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

    /// Adds the uplinks' attachment state, as checked at `checked_at` (none: not checked).
    pub fn with_uplinks(mut self, uplinks: Vec<UplinkRow>, checked_at: Option<i64>) -> Self {
        self.uplinks = uplinks;
        self.uplinks_checked_at = checked_at;
        self
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serializes")
    }

    /// One line per uplink, then a fixed-width table with one line per EIP and a last line for
    /// non-EIP traffic.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        for u in &self.uplinks {
            let _ = write!(out, "uplink {}: {}", u.interface, u.state);
            if let (Some(mode), Some(ifindex)) = (&u.mode, u.ifindex) {
                let _ = write!(out, " ({mode}, ifindex {ifindex})");
            }
            if let Some(since) = u.since.and_then(|t| chrono::DateTime::from_timestamp(t, 0)) {
                let _ = write!(out, " since {}", since.to_rfc3339());
            }
            if u.state == "unknown" {
                out.push_str(" (no daemon running to check it)");
            } else if u.detachments > 0 || u.detached_seconds > 0.0 {
                let _ = write!(
                    out,
                    "; lost {} time(s), {:.1} s not metered",
                    u.detachments, u.detached_seconds
                );
            }
            out.push('\n');
        }
        if !self.uplinks.is_empty() {
            out.push('\n');
        }
        out + &self.eip_table()
    }

    fn eip_table(&self) -> String {
        let rows = self
            .eips
            .iter()
            .map(|r| {
                let dropped = |d: &DropRow| (d.rate_limited_bytes + d.blocked_bytes).to_string();
                (
                    r.eip.to_string(),
                    [
                        r.state.to_owned(),
                        r.inbound_bytes.to_string(),
                        r.inbound_packets.to_string(),
                        r.outbound_bytes.to_string(),
                        r.outbound_packets.to_string(),
                        dropped(&r.inbound_drops),
                        dropped(&r.outbound_drops),
                    ],
                )
            })
            .chain(std::iter::once((
                "(not an EIP)".to_owned(),
                [
                    "-".to_owned(),
                    self.non_eip.inbound_bytes.to_string(),
                    self.non_eip.inbound_packets.to_string(),
                    self.non_eip.outbound_bytes.to_string(),
                    self.non_eip.outbound_packets.to_string(),
                    "-".to_owned(),
                    "-".to_owned(),
                ],
            )));
        let header = [
            "EIP",
            "STATE",
            "IN BYTES",
            "IN PACKETS",
            "OUT BYTES",
            "OUT PACKETS",
            "IN DROPPED B",
            "OUT DROPPED B",
        ];
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
            &[],
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
    fn table_starts_with_the_uplinks() {
        let status = UplinkStatus {
            interface: "up0".into(),
            state: crate::dataplane::UplinkState::Detached,
            ifindex: None,
            mode: "tcx".into(),
            since: 1_793_462_400,
            detachments: 2,
            detached_seconds: 3.25,
        };
        let r = CounterReport::new(&[], &[], counters(0, 0, 0, 0)).with_uplinks(
            vec![UplinkRow::checked(&status), UplinkRow::unknown("up1")],
            Some(1_793_462_410),
        );
        let t = r.to_table();
        let lines: Vec<_> = t.lines().collect();
        assert_eq!(
            lines[0],
            "uplink up0: detached since 2026-10-31T16:00:00+00:00; lost 2 time(s), 3.2 s not metered"
        );
        assert_eq!(
            lines[1],
            "uplink up1: unknown (no daemon running to check it)"
        );
        assert_eq!(lines[2], "");
        assert!(lines[3].starts_with("EIP"));
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["uplinks"][0]["state"], "detached");
        assert_eq!(v["uplinks"][0]["detachments"], 2);
        assert_eq!(v["uplinks_checked_at"], 1_793_462_410);
    }

    #[test]
    fn json_has_unit_and_fields() {
        let r = CounterReport::new(
            &[("2001:db8::1".parse().unwrap(), counters(1, 2, 3, 4))],
            &[],
            counters(0, 0, 0, 0),
        );
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["unit"], "ip_layer_bytes");
        assert_eq!(v["eips"][0]["eip"], "2001:db8::1");
        assert_eq!(v["eips"][0]["outbound_packets"], 4);
        assert_eq!(v["non_eip"]["inbound_bytes"], 0);
    }
}
