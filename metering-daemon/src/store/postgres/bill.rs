//! `eip-meter bill`: every EIP's and shared bandwidth's figures for a day or a month, from all
//! hosts, with the same billing code as the daemons (`Series`), summing per interval across
//! hosts *before* any percentile. One slice of EIPs at a time, so memory stays bounded
//! whatever the fleet's size.
//!
//! Figures are written as revisions: a recomputation that changes nothing writes nothing; one
//! that changes anything (a late sample) adds the next revision, logged, never an in-place
//! change. A period is `closed` once every host has shipped past it, or the grace period after
//! its end has passed.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use futures::TryStreamExt as _;
use tracing::{info, warn};

use super::{Db, PgError, pg};
use crate::billing::{
    calendar::{Calendar, Month},
    fleet::{self, HostRounds, Presence, Row},
    series::{BandwidthHistory, Closed, Sample, Series, SeriesOptions},
};

/// The period a bill covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BillPeriod {
    Day(chrono::NaiveDate),
    Month(Month),
}

pub struct BillOptions {
    pub period: BillPeriod,
    pub calendar: Calendar,
    pub options: SeriesOptions,
    /// Seconds after the period's end after which it is closed even if a host has not shipped
    /// past it.
    pub grace_seconds: i64,
    /// UNIX seconds now (the caller reads the clock).
    pub now: i64,
    /// EIPs per slice.
    pub slice: usize,
}

/// What a bill did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BillReport {
    pub hosts: Vec<String>,
    pub closed: bool,
    pub eips: usize,
    pub groups: usize,
    /// Figures written as a new revision (first or changed).
    pub revisions: usize,
    /// Of those, changes to a closed period's figures (late data).
    pub late_revisions: usize,
    pub unchanged: usize,
}

struct HostInfo {
    name: String,
    /// Boundary of the last round it shipped.
    shipped_to: i64,
}

/// The latest stored revision of a subject's period: (revision, closed, figures, hosts, samples).
type Latest = (i32, bool, serde_json::Value, Vec<String>, i32);

/// Per subject, every host's inventory changes: (effective_from, bandwidth, group).
type History = BTreeMap<String, Vec<(i64, Option<u64>, Option<String>)>>;

/// One subject's figures to write.
struct Computed {
    subject: String,
    period: String,
    figures: serde_json::Value,
    hosts: Vec<String>,
    samples: i32,
}

pub async fn bill(db: &mut Db, o: &BillOptions) -> Result<BillReport, PgError> {
    let cal = o.calendar;
    let step = i64::from(cal.interval());
    let (from, to) = match o.period {
        BillPeriod::Day(d) => cal.day_bounds(d),
        BillPeriod::Month(m) => cal.month_bounds(m),
    };
    let n = cal.intervals_between((from, to)) as usize;
    let hosts: Vec<HostInfo> = db
        .client
        .query(
            "SELECT h.host, h.interval_seconds, h.timezone, w.boundary
             FROM hosts h JOIN watermarks w USING (host) ORDER BY h.host",
            &[],
        )
        .await
        .map_err(pg("read hosts"))?
        .iter()
        .map(|r| {
            let interval: i32 = r.get(1);
            if interval as u32 != cal.interval() {
                return Err(PgError::Schema(format!(
                    "host {} samples every {interval} s, this bill every {} s",
                    r.get::<_, String>(0),
                    cal.interval()
                )));
            }
            Ok(HostInfo {
                name: r.get(0),
                shipped_to: r.get(3),
            })
        })
        .collect::<Result<_, _>>()?;
    let host_index: HashMap<&str, usize> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h.name.as_str(), i))
        .collect();
    let closed = o.now >= to + o.grace_seconds || hosts.iter().all(|h| h.shipped_to >= to);
    let mut report = BillReport {
        hosts: hosts.iter().map(|h| h.name.clone()).collect(),
        closed,
        ..BillReport::default()
    };

    // Which intervals each host sampled, and how well.
    let mut rounds: Vec<HostRounds> = hosts
        .iter()
        .map(|_| HostRounds::new(from, step, n))
        .collect();
    let rows = db
        .client
        .query(
            "SELECT host, interval_start, coverage FROM rounds
             WHERE interval_start >= $1 AND interval_start < $2",
            &[&from, &to],
        )
        .await
        .map_err(pg("read rounds"))?;
    for r in rows {
        if let Some(&h) = host_index.get(r.get::<_, &str>(0)) {
            rounds[h].add(r.get(1), r.get::<_, &str>(2) == "complete");
        }
    }

    // EIPs, a slice at a time.
    let mut last: Option<IpAddr> = None;
    loop {
        let slice: Vec<IpAddr> = db
            .client
            .query(
                "SELECT DISTINCT eip FROM presence
                 WHERE from_s < $2 AND (to_s IS NULL OR to_s > $1)
                   AND ($3::inet IS NULL OR eip > $3)
                 ORDER BY eip LIMIT $4",
                &[&from, &to, &last, &(o.slice as i64)],
            )
            .await
            .map_err(pg("list EIPs"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let Some(&end) = slice.last() else { break };
        last = Some(end);
        let data = SubjectData::load(db, &slice, from, to, &host_index).await?;
        let mut computed = Vec::new();
        for eip in &slice {
            let samples = data.samples_of(eip, &rounds);
            let history = data.bandwidth(&eip.to_string());
            computed.extend(figures(
                &eip.to_string(),
                &samples,
                history,
                o,
                &hosts,
                &data.hosts_of(eip),
            ));
        }
        report.eips += slice.len();
        write_figures(db, "eip", computed, closed, &mut report).await?;
    }

    // Shared bandwidths, one at a time: each member's fleet samples, summed per interval while
    // it was a member.
    let groups: Vec<String> = db
        .client
        .query(
            "SELECT DISTINCT subject FROM inventory_history
             WHERE kind = 'group' AND effective_from < $1 ORDER BY subject",
            &[&to],
        )
        .await
        .map_err(pg("list groups"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for group in &groups {
        let members: Vec<IpAddr> = db
            .client
            .query(
                "SELECT DISTINCT subject::inet FROM inventory_history
                 WHERE kind = 'eip' AND grp = $1 AND effective_from < $2",
                &[group, &to],
            )
            .await
            .map_err(pg("list group members"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let data = SubjectData::load(db, &members, from, to, &host_index).await?;
        let mut sums: Vec<Option<(u64, u64, bool)>> = vec![None; n];
        let mut contributing = std::collections::BTreeSet::new();
        for eip in &members {
            let membership = data.membership(&eip.to_string(), group);
            for s in data.samples_of(eip, &rounds) {
                if !membership.iter().any(|&(a, b)| a <= s.start && s.start < b) {
                    continue;
                }
                let i = ((s.start - from) / step) as usize;
                let e = sums[i].get_or_insert((0, 0, false));
                e.0 = e.0.saturating_add(s.inbound_bytes);
                e.1 = e.1.saturating_add(s.outbound_bytes);
                e.2 |= s.state == crate::billing::SampleState::Partial;
            }
            contributing.extend(data.hosts_of(eip));
        }
        let samples: Vec<Sample> = sums
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                e.map(|(inbound, outbound, partial)| Sample {
                    start: from + i as i64 * step,
                    inbound_bytes: inbound,
                    outbound_bytes: outbound,
                    state: if partial {
                        crate::billing::SampleState::Partial
                    } else {
                        crate::billing::SampleState::Measured
                    },
                })
            })
            .collect();
        let history = BandwidthHistory::new(
            db.client
                .query(
                    "SELECT effective_from, bandwidth_mbps FROM inventory_history
                     WHERE kind = 'group' AND subject = $1 AND effective_from < $2
                       AND bandwidth_mbps IS NOT NULL",
                    &[group, &to],
                )
                .await
                .map_err(pg("read group history"))?
                .iter()
                .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
                .collect(),
        );
        let computed = figures(
            group,
            &samples,
            history,
            o,
            &hosts,
            &contributing.into_iter().collect::<Vec<_>>(),
        );
        report.groups += 1;
        write_figures(db, "group", computed, closed, &mut report).await?;
    }
    info!(
        period = %period_name(o.period),
        hosts = report.hosts.len(),
        closed,
        eips = report.eips,
        groups = report.groups,
        revisions = report.revisions,
        late_revisions = report.late_revisions,
        unchanged = report.unchanged,
        "billed"
    );
    Ok(report)
}

fn period_name(p: BillPeriod) -> String {
    match p {
        BillPeriod::Day(d) => d.to_string(),
        BillPeriod::Month(m) => m.to_string(),
    }
}

/// The figures of one subject's samples: each day of the period, and the month for a month.
fn figures(
    subject: &str,
    samples: &[Sample],
    history: BandwidthHistory,
    o: &BillOptions,
    hosts: &[HostInfo],
    contributing: &[usize],
) -> Vec<Computed> {
    let mut series = Series::new(o.calendar, o.options, history);
    for s in samples {
        // In time order and aligned by construction.
        let _ = series.push(*s);
    }
    series.close();
    let Closed { days, months } = series.take_closed();
    let names: Vec<String> = contributing
        .iter()
        .map(|&h| hosts[h].name.clone())
        .collect();
    let mut out: Vec<Computed> = days
        .into_iter()
        .map(|(d, f)| Computed {
            subject: subject.to_owned(),
            period: d.to_string(),
            samples: f.samples as i32,
            figures: serde_json::to_value(f).expect("figures serialize"),
            hosts: names.clone(),
        })
        .collect();
    if matches!(o.period, BillPeriod::Month(_)) {
        out.extend(months.into_iter().map(|(m, f)| Computed {
            subject: subject.to_owned(),
            period: m.to_string(),
            samples: f.samples as i32,
            figures: serde_json::to_value(f).expect("figures serialize"),
            hosts: names.clone(),
        }));
    }
    out
}

/// Writes `computed` as new revisions where anything differs from the latest; marks an
/// unchanged provisional revision closed once the period is.
async fn write_figures(
    db: &mut Db,
    kind: &str,
    computed: Vec<Computed>,
    closed: bool,
    report: &mut BillReport,
) -> Result<(), PgError> {
    if computed.is_empty() {
        return Ok(());
    }
    let subjects: Vec<&str> = computed.iter().map(|c| c.subject.as_str()).collect();
    let tx = db.client.transaction().await.map_err(pg("begin figures"))?;
    let latest: HashMap<(String, String), Latest> = tx
        .query(
            "SELECT DISTINCT ON (subject, period) subject, period, revision, closed, figures,
                    hosts, samples
             FROM figures WHERE kind = $1 AND subject = ANY($2)
             ORDER BY subject, period, revision DESC",
            &[&kind, &subjects],
        )
        .await
        .map_err(pg("read figures"))?
        .into_iter()
        .map(|r| {
            (
                (r.get(0), r.get(1)),
                (r.get(2), r.get(3), r.get(4), r.get(5), r.get(6)),
            )
        })
        .collect();
    // One statement for the new revisions and one for the closings, whatever the slice's size.
    let mut new: Vec<(Computed, i32)> = Vec::new();
    let mut to_close: Vec<(String, String, i32)> = Vec::new();
    for c in computed {
        match latest.get(&(c.subject.clone(), c.period.clone())) {
            Some((revision, was_closed, figures, hosts, samples))
                if *figures == c.figures && *hosts == c.hosts && *samples == c.samples =>
            {
                report.unchanged += 1;
                if closed && !was_closed {
                    to_close.push((c.subject, c.period, *revision));
                }
            }
            previous => {
                let revision = previous.map_or(1, |p| p.0 + 1);
                if let Some((_, true, ..)) = previous {
                    report.late_revisions += 1;
                    warn!(
                        kind,
                        subject = c.subject,
                        period = c.period,
                        revision,
                        "figures of a closed period changed (late samples): new revision"
                    );
                }
                new.push((c, revision));
            }
        }
    }
    if !new.is_empty() {
        let subjects: Vec<&str> = new.iter().map(|(c, _)| c.subject.as_str()).collect();
        let periods: Vec<&str> = new.iter().map(|(c, _)| c.period.as_str()).collect();
        let revisions: Vec<i32> = new.iter().map(|(_, r)| *r).collect();
        let figures: Vec<&serde_json::Value> = new.iter().map(|(c, _)| &c.figures).collect();
        // Host lists as array literals (`{"a","b"}`): no arrays of arrays in one parameter.
        let hosts: Vec<String> = new
            .iter()
            .map(|(c, _)| {
                let quoted: Vec<String> = c
                    .hosts
                    .iter()
                    .map(|h| format!("\"{}\"", h.replace('\\', "\\\\").replace('"', "\\\"")))
                    .collect();
                format!("{{{}}}", quoted.join(","))
            })
            .collect();
        let samples: Vec<i32> = new.iter().map(|(c, _)| c.samples).collect();
        tx.execute(
            "INSERT INTO figures (subject, kind, period, revision, closed, figures, hosts, samples)
             SELECT s, $1, p, r, $2, f, h::text[], n
             FROM unnest($3::text[], $4::text[], $5::int4[], $6::jsonb[], $7::text[], $8::int4[])
                  AS x(s, p, r, f, h, n)",
            &[
                &kind, &closed, &subjects, &periods, &revisions, &figures, &hosts, &samples,
            ],
        )
        .await
        .map_err(pg("write figures"))?;
        report.revisions += new.len();
    }
    if !to_close.is_empty() {
        let subjects: Vec<&str> = to_close.iter().map(|c| c.0.as_str()).collect();
        let periods: Vec<&str> = to_close.iter().map(|c| c.1.as_str()).collect();
        let revisions: Vec<i32> = to_close.iter().map(|c| c.2).collect();
        tx.execute(
            "UPDATE figures f SET closed = true
             FROM unnest($2::text[], $3::text[], $4::int4[]) AS x(s, p, r)
             WHERE f.kind = $1 AND f.subject = x.s AND f.period = x.p AND f.revision = x.r",
            &[&kind, &subjects, &periods, &revisions],
        )
        .await
        .map_err(pg("close figures"))?;
    }
    tx.commit().await.map_err(pg("commit figures"))?;
    Ok(())
}

/// Presence, rows and inventory history of a set of EIPs over a period.
struct SubjectData {
    presence: HashMap<IpAddr, Vec<Presence>>,
    rows: HashMap<IpAddr, Vec<Row>>,
    /// Per subject (EIP or group), all hosts' changes: (effective_from, bandwidth, group, state).
    history: History,
}

impl SubjectData {
    async fn load(
        db: &Db,
        eips: &[IpAddr],
        from: i64,
        to: i64,
        hosts: &HashMap<&str, usize>,
    ) -> Result<Self, PgError> {
        let mut presence: HashMap<IpAddr, Vec<Presence>> = HashMap::new();
        for r in db
            .client
            .query(
                "SELECT eip, host, from_s, to_s FROM presence
                 WHERE eip = ANY($1) AND from_s < $3 AND (to_s IS NULL OR to_s > $2)",
                &[&eips, &from, &to],
            )
            .await
            .map_err(pg("read presence"))?
        {
            if let Some(&host) = hosts.get(r.get::<_, &str>(1)) {
                presence.entry(r.get(0)).or_default().push(Presence {
                    host,
                    from: r.get(2),
                    to: r.get(3),
                });
            }
        }
        let mut rows: HashMap<IpAddr, Vec<Row>> = HashMap::new();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&eips, &from, &to];
        let stream = db
            .client
            .query_raw(
                "SELECT eip, host, interval_start, bytes_in, bytes_out, state FROM samples
                 WHERE eip = ANY($1) AND interval_start >= $2 AND interval_start < $3",
                params,
            )
            .await
            .map_err(pg("read samples"))?;
        futures::pin_mut!(stream);
        while let Some(r) = stream.try_next().await.map_err(pg("read samples"))? {
            if let Some(&host) = hosts.get(r.get::<_, &str>(1)) {
                rows.entry(r.get(0)).or_default().push(Row {
                    host,
                    start: r.get(2),
                    inbound: r.get::<_, i64>(3) as u64,
                    outbound: r.get::<_, i64>(4) as u64,
                    partial: r.get::<_, &str>(5) == "partial",
                });
            }
        }
        let names: Vec<String> = eips.iter().map(|e| e.to_string()).collect();
        let mut history: History = BTreeMap::new();
        for r in db
            .client
            .query(
                "SELECT subject, effective_from, bandwidth_mbps, grp FROM inventory_history
                 WHERE kind = 'eip' AND subject = ANY($1) AND effective_from < $2
                 ORDER BY effective_from",
                &[&names, &to],
            )
            .await
            .map_err(pg("read inventory history"))?
        {
            history.entry(r.get(0)).or_default().push((
                r.get(1),
                r.get::<_, Option<i64>>(2).map(|b| b as u64),
                r.get(3),
            ));
        }
        Ok(Self {
            presence,
            rows,
            history,
        })
    }

    fn samples_of(&self, eip: &IpAddr, rounds: &[HostRounds]) -> Vec<Sample> {
        fleet::samples(
            rounds,
            self.presence.get(eip).map_or(&[], Vec::as_slice),
            self.rows.get(eip).map_or(&[], Vec::as_slice),
        )
    }

    /// The hosts that hold any of `eip`'s presence in the period.
    fn hosts_of(&self, eip: &IpAddr) -> Vec<usize> {
        let mut h: Vec<usize> = self
            .presence
            .get(eip)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .map(|p| p.host)
            .collect();
        h.sort_unstable();
        h.dedup();
        h
    }

    /// An EIP's bandwidth changes over all hosts, in time order.
    fn bandwidth(&self, subject: &str) -> BandwidthHistory {
        BandwidthHistory::new(
            self.history
                .get(subject)
                .map_or(&[][..], Vec::as_slice)
                .iter()
                .filter_map(|(t, b, _)| Some((*t, (*b)?)))
                .collect(),
        )
    }

    /// `[from, to)` ranges during which `eip` was in `group` (its latest change wins).
    fn membership(&self, eip: &str, group: &str) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        let mut open: Option<i64> = None;
        for (t, _, g) in self.history.get(eip).map_or(&[][..], Vec::as_slice) {
            match (open, g.as_deref() == Some(group)) {
                (None, true) => open = Some(*t),
                (Some(start), false) => {
                    out.push((start, *t));
                    open = None;
                }
                _ => {}
            }
        }
        if let Some(start) = open {
            out.push((start, i64::MAX));
        }
        out
    }
}
