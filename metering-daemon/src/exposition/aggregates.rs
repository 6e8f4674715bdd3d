//! The aggregate metrics: a `prometheus` crate [`Collector`] that builds const metrics at
//! scrape time from a [`Published`] state (the exporter guidelines' pattern: no metric object
//! is updated on the hot path, and a scrape reads nothing from the kernel).

use std::{collections::HashMap, sync::Arc};

use prometheus::{
    Registry,
    core::{Collector, Desc},
    proto::{
        Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType, Quantile,
        Summary,
    },
};

use super::state::{DIRECTIONS, DROP_REASONS, Published, Totals};

/// Metric families of this collector: name, help, type.
const FAMILIES: &[(&str, &str, MetricType)] = &[
    (
        "eip_meter_build_info",
        "Version of the running eip-meter and the layout of its pinned maps; always 1.",
        MetricType::GAUGE,
    ),
    (
        "eip_meter_sampling_interval_seconds",
        "Length of a sampling interval.",
        MetricType::GAUGE,
    ),
    (
        "eip_meter_traffic_bytes_total",
        "IP-layer bytes delivered to (inbound) and from (outbound) all EIPs, as of the last round; includes EIPs removed since the daemon started.",
        MetricType::COUNTER,
    ),
    (
        "eip_meter_traffic_packets_total",
        "Packets (wire segments) delivered to and from all EIPs, as of the last round.",
        MetricType::COUNTER,
    ),
    (
        "eip_meter_non_eip_bytes_total",
        "IP-layer bytes on the uplinks whose address is no EIP.",
        MetricType::COUNTER,
    ),
    (
        "eip_meter_non_eip_packets_total",
        "Packets on the uplinks whose address is no EIP.",
        MetricType::COUNTER,
    ),
    (
        "eip_meter_dropped_bytes_total",
        "IP-layer bytes of EIPs dropped by the data plane, by reason: over the cap (rate_limited) or the EIP is expired, in arrears or frozen (blocked).",
        MetricType::COUNTER,
    ),
    (
        "eip_meter_dropped_packets_total",
        "Packets of EIPs dropped by the data plane, by reason.",
        MetricType::COUNTER,
    ),
    (
        "eip_meter_ecn_marked_bytes_total",
        "IP-layer bytes of ECN-capable packets marked CE near an EIP's cap.",
        MetricType::COUNTER,
    ),
    (
        "eip_meter_ecn_marked_packets_total",
        "ECN-capable packets marked CE near an EIP's cap.",
        MetricType::COUNTER,
    ),
    (
        "eip_meter_eips",
        "EIPs in the inventory, by state.",
        MetricType::GAUGE,
    ),
    (
        "eip_meter_eip_slots_used",
        "EIP slots in use in the kernel maps.",
        MetricType::GAUGE,
    ),
    (
        "eip_meter_eip_slots_capacity",
        "EIP slots the kernel maps were created with (dataplane.capacity).",
        MetricType::GAUGE,
    ),
    (
        "eip_meter_group_slots_used",
        "Shared-bandwidth buckets in use.",
        MetricType::GAUGE,
    ),
    (
        "eip_meter_group_slots_capacity",
        "Shared-bandwidth buckets the maps were created with (dataplane.group_capacity).",
        MetricType::GAUGE,
    ),
    (
        "eip_meter_rounds_total",
        "Sampling rounds, by result (committed, failed: nothing of it was written; the next round covers it).",
        MetricType::COUNTER,
    ),
    (
        "eip_meter_round_duration_seconds",
        "Duration of the sampling rounds since the daemon started (exact quantiles from an HDR histogram, 3 significant digits).",
        MetricType::SUMMARY,
    ),
    (
        "eip_meter_last_round_duration_seconds",
        "Duration of the last committed round.",
        MetricType::GAUGE,
    ),
    (
        "eip_meter_last_round_phase_seconds",
        "Phases of the last committed round: read (counters), compute (deltas and billing state), commit (store), expose (these figures).",
        MetricType::GAUGE,
    ),
    (
        "eip_meter_last_round_interval_start_timestamp_seconds",
        "Start of the interval the last committed round closed, UNIX seconds.",
        MetricType::GAUGE,
    ),
    (
        "eip_meter_samples_total",
        "Samples committed, by state: measured over their whole interval, or partial (first interval, counter reset, outage spread, uplink not metered).",
        MetricType::COUNTER,
    ),
    (
        "eip_meter_missed_intervals_total",
        "Intervals that got no round of their own (daemon down or late, round failed); their samples were spread from the next round.",
        MetricType::COUNTER,
    ),
    (
        "eip_meter_eip_resets_total",
        "Times an EIP's kernel counters were found lower than at the previous round (maps recreated, host rebooted).",
        MetricType::COUNTER,
    ),
    (
        "eip_meter_store_commit_bytes",
        "Bytes the last round wrote to the store.",
        MetricType::GAUGE,
    ),
    (
        "eip_meter_store_bytes",
        "Bytes the local store holds on disk.",
        MetricType::GAUGE,
    ),
    (
        "eip_meter_store_errors_total",
        "Store writes that failed (a round not committed, a metering gap not recorded).",
        MetricType::COUNTER,
    ),
    (
        "eip_meter_config_reloads_total",
        "Config reloads, by result: applied, rejected (invalid file, nothing changed), failed (applying it failed part-way).",
        MetricType::COUNTER,
    ),
    (
        "eip_meter_uplink_attached",
        "1 when both programs are on the uplink (traffic on it is metered), 0 when not.",
        MetricType::GAUGE,
    ),
    (
        "eip_meter_uplink_detachments_total",
        "Times metering was lost on the uplink since the daemon started.",
        MetricType::COUNTER,
    ),
    (
        "eip_meter_uplink_detached_seconds_total",
        "Seconds the uplink was not metered since the daemon started.",
        MetricType::COUNTER,
    ),
    (
        "eip_meter_cap_utilization_ratio",
        "Each capped EIP's and shared bandwidth's rate over its cap on this router, observed once per round (the larger direction).",
        MetricType::HISTOGRAM,
    ),
    (
        "eip_meter_eip_rate_bytes_per_second",
        "Billing-sample rate of every EIP in the last round, bytes/s (quantiles over the EIPs from an HDR histogram, 3 significant digits; count and sum accumulate over rounds).",
        MetricType::SUMMARY,
    ),
    (
        "eip_meter_billing_store_up",
        "1 when the daemon is connected to the billing store and its last ship succeeded, 0 when it is failing (rounds stay in the local store).",
        MetricType::GAUGE,
    ),
    (
        "eip_meter_billing_store_shipped_rounds_total",
        "Rounds the billing store acknowledged (in a committed transaction) since the daemon started.",
        MetricType::COUNTER,
    ),
    (
        "eip_meter_billing_store_shipped_rows_total",
        "Sample rows the billing store did not hold yet and inserted, since the daemon started.",
        MetricType::COUNTER,
    ),
    (
        "eip_meter_billing_store_ship_errors_total",
        "Failed attempts to connect to or ship to the billing store.",
        MetricType::COUNTER,
    ),
    (
        "eip_meter_billing_store_ship_conflicts_total",
        "Samples the billing store already held with other values: refused (the stored one kept), recorded in its sample_conflicts table.",
        MetricType::COUNTER,
    ),
    (
        "eip_meter_billing_store_unshipped_rounds",
        "Committed rounds of the local store the billing store does not hold yet.",
        MetricType::GAUGE,
    ),
    (
        "eip_meter_billing_store_oldest_unshipped_round_timestamp_seconds",
        "End of the oldest round not shipped yet, UNIX seconds (absent when none is waiting).",
        MetricType::GAUGE,
    ),
    (
        "eip_meter_billing_store_shipped_up_to_timestamp_seconds",
        "End of the last round the billing store holds, UNIX seconds.",
        MetricType::GAUGE,
    ),
];

/// The aggregate families of `published`, gathered through a `prometheus` [`Registry`] whose
/// one collector is pinned to that state, so a scrape's aggregates and per-EIP families come
/// from the same round.
pub fn gather(published: Arc<Published>) -> Vec<MetricFamily> {
    let registry = Registry::new();
    let descs = FAMILIES
        .iter()
        .map(|(name, help, _)| {
            Desc::new(
                (*name).to_owned(),
                (*help).to_owned(),
                Vec::new(),
                HashMap::new(),
            )
            .expect("valid metric name and help")
        })
        .collect();
    registry
        .register(Box::new(Aggregates { published, descs }))
        .expect("one collector, registered once");
    registry.gather()
}

struct Aggregates {
    published: Arc<Published>,
    descs: Vec<Desc>,
}

impl Collector for Aggregates {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        families(&self.published)
    }
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_owned());
    l.set_value(value.to_owned());
    l
}

fn gauge(labels: &[(&str, &str)], value: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(value);
    let mut m = Metric::from_gauge(g);
    m.set_label(labels.iter().map(|(n, v)| label(n, v)).collect());
    m
}

fn counter(labels: &[(&str, &str)], value: f64) -> Metric {
    let mut c = Counter::default();
    c.set_value(value);
    let mut m = Metric::default();
    m.set_counter(c);
    m.set_label(labels.iter().map(|(n, v)| label(n, v)).collect());
    m
}

fn summary(q: &super::state::Quantiles) -> Metric {
    let mut s = Summary::default();
    s.set_sample_count(q.count);
    s.set_sample_sum(q.sum);
    s.set_quantile(
        q.quantiles
            .iter()
            .map(|&(quantile, value)| {
                let mut x = Quantile::default();
                x.set_quantile(quantile);
                x.set_value(value);
                x
            })
            .collect(),
    );
    let mut m = Metric::default();
    m.set_summary(s);
    m
}

fn histogram(b: &super::state::Buckets) -> Metric {
    let mut h = Histogram::default();
    h.set_sample_count(b.count);
    h.set_sample_sum(b.sum);
    h.set_bucket(
        b.cumulative
            .iter()
            .map(|&(bound, count)| {
                let mut x = Bucket::default();
                x.set_upper_bound(bound);
                x.set_cumulative_count(count);
                x
            })
            .collect(),
    );
    let mut m = Metric::default();
    m.set_histogram(h);
    m
}

/// Counters of one `Totals` per direction: `(bytes family, packets family)`.
fn by_direction(totals: &[Totals; 2]) -> (Vec<Metric>, Vec<Metric>) {
    DIRECTIONS
        .iter()
        .zip(totals)
        .map(|(d, t)| {
            (
                counter(&[("direction", d)], t.bytes as f64),
                counter(&[("direction", d)], t.packets as f64),
            )
        })
        .unzip()
}

fn families(p: &Published) -> Vec<MetricFamily> {
    let mut metrics: HashMap<&'static str, Vec<Metric>> = HashMap::new();
    let mut put = |name: &'static str, m: Vec<Metric>| {
        metrics.insert(name, m);
    };
    put(
        "eip_meter_build_info",
        vec![gauge(
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("layout", metering_common::PIN_LAYOUT_VERSION),
            ],
            1.0,
        )],
    );
    put(
        "eip_meter_sampling_interval_seconds",
        vec![gauge(&[], f64::from(p.interval_seconds))],
    );
    let (bytes, packets) = by_direction(&p.traffic);
    put("eip_meter_traffic_bytes_total", bytes);
    put("eip_meter_traffic_packets_total", packets);
    let (bytes, packets) = by_direction(&p.non_eip);
    put("eip_meter_non_eip_bytes_total", bytes);
    put("eip_meter_non_eip_packets_total", packets);
    let (bytes, packets) = by_direction(&p.ecn_marked);
    put("eip_meter_ecn_marked_bytes_total", bytes);
    put("eip_meter_ecn_marked_packets_total", packets);
    let mut dropped_bytes = Vec::new();
    let mut dropped_packets = Vec::new();
    for (d, reasons) in DIRECTIONS.iter().zip(&p.dropped) {
        for (r, t) in DROP_REASONS.iter().zip(reasons) {
            let labels = [("direction", *d), ("reason", *r)];
            dropped_bytes.push(counter(&labels, t.bytes as f64));
            dropped_packets.push(counter(&labels, t.packets as f64));
        }
    }
    put("eip_meter_dropped_bytes_total", dropped_bytes);
    put("eip_meter_dropped_packets_total", dropped_packets);
    put(
        "eip_meter_eips",
        p.eips_by_state
            .iter()
            .map(|(state, n)| gauge(&[("state", state)], *n as f64))
            .collect(),
    );
    for (name, value) in [
        ("eip_meter_eip_slots_used", p.eip_slots_used),
        ("eip_meter_eip_slots_capacity", p.eip_slots_capacity),
        ("eip_meter_group_slots_used", p.group_slots_used),
        ("eip_meter_group_slots_capacity", p.group_slots_capacity),
        ("eip_meter_store_bytes", p.store_bytes),
    ] {
        put(name, vec![gauge(&[], value as f64)]);
    }
    put(
        "eip_meter_rounds_total",
        vec![
            counter(&[("result", "committed")], p.rounds_committed as f64),
            counter(&[("result", "failed")], p.rounds_failed as f64),
        ],
    );
    put(
        "eip_meter_samples_total",
        vec![
            counter(&[("state", "measured")], p.samples_measured as f64),
            counter(&[("state", "partial")], p.samples_partial as f64),
        ],
    );
    for (name, value) in [
        ("eip_meter_missed_intervals_total", p.missed_intervals),
        ("eip_meter_eip_resets_total", p.counter_resets),
        ("eip_meter_store_errors_total", p.store_errors),
    ] {
        put(name, vec![counter(&[], value as f64)]);
    }
    put(
        "eip_meter_config_reloads_total",
        ["applied", "rejected", "failed"]
            .iter()
            .zip(p.reloads)
            .map(|(r, n)| counter(&[("result", r)], n as f64))
            .collect(),
    );
    put(
        "eip_meter_round_duration_seconds",
        vec![summary(&p.round_durations)],
    );
    if let Some(last) = &p.last_round {
        put(
            "eip_meter_last_round_duration_seconds",
            vec![gauge(&[], last.duration)],
        );
        put(
            "eip_meter_last_round_phase_seconds",
            [
                ("read", last.read),
                ("compute", last.compute),
                ("commit", last.commit),
                ("expose", last.expose),
            ]
            .iter()
            .map(|(phase, s)| gauge(&[("phase", phase)], *s))
            .collect(),
        );
        put(
            "eip_meter_last_round_interval_start_timestamp_seconds",
            vec![gauge(&[], last.interval_start as f64)],
        );
        put(
            "eip_meter_store_commit_bytes",
            vec![gauge(&[], last.commit_bytes as f64)],
        );
    }
    let mut attached = Vec::new();
    let mut detachments = Vec::new();
    let mut detached_seconds = Vec::new();
    for u in &p.uplinks {
        let labels = [("interface", u.interface.as_str())];
        let up = u.state == crate::dataplane::UplinkState::Attached;
        attached.push(gauge(&labels, if up { 1.0 } else { 0.0 }));
        detachments.push(counter(&labels, u.detachments as f64));
        detached_seconds.push(counter(&labels, u.detached_seconds));
    }
    put("eip_meter_uplink_attached", attached);
    put("eip_meter_uplink_detachments_total", detachments);
    put("eip_meter_uplink_detached_seconds_total", detached_seconds);
    put(
        "eip_meter_cap_utilization_ratio",
        vec![histogram(&p.utilization)],
    );
    put(
        "eip_meter_eip_rate_bytes_per_second",
        vec![summary(&p.eip_rates)],
    );
    if let Some(shared) = &p.shipping {
        let s = shared.lock().expect("shipping state lock").clone();
        put(
            "eip_meter_billing_store_up",
            vec![gauge(
                &[],
                if s.connected && s.last_error.is_none() {
                    1.0
                } else {
                    0.0
                },
            )],
        );
        for (name, value) in [
            (
                "eip_meter_billing_store_shipped_rounds_total",
                s.rounds_total,
            ),
            ("eip_meter_billing_store_shipped_rows_total", s.rows_total),
            ("eip_meter_billing_store_ship_errors_total", s.errors_total),
            (
                "eip_meter_billing_store_ship_conflicts_total",
                s.conflicts_total,
            ),
        ] {
            put(name, vec![counter(&[], value as f64)]);
        }
        put(
            "eip_meter_billing_store_unshipped_rounds",
            vec![gauge(&[], s.unshipped_rounds as f64)],
        );
        if let Some(oldest) = s.oldest_unshipped.filter(|_| s.unshipped_rounds > 0) {
            put(
                "eip_meter_billing_store_oldest_unshipped_round_timestamp_seconds",
                vec![gauge(&[], oldest as f64)],
            );
        }
        if s.shipped_boundary > 0 {
            put(
                "eip_meter_billing_store_shipped_up_to_timestamp_seconds",
                vec![gauge(&[], s.shipped_boundary as f64)],
            );
        }
    }

    FAMILIES
        .iter()
        .filter_map(|(name, help, kind)| {
            let m = metrics.remove(name)?;
            let mut f = MetricFamily::default();
            f.set_name((*name).to_owned());
            f.set_help((*help).to_owned());
            f.set_field_type(*kind);
            f.set_metric(m);
            Some(f)
        })
        .collect()
}
