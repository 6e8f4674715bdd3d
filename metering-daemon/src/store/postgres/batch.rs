//! What a run of committed local rounds becomes in the billing store, sparsely: a sample row
//! only where there was traffic or where its state cannot be implied, one round row per
//! interval the host sampled (with its coverage), the presence ranges and inventory changes
//! committed with those rounds. Built from the local store, pure otherwise.

use std::net::IpAddr;

use crate::{
    billing::SampleState,
    store::{AuditRow, InventoryChange, PresenceRange, RoundKind, Store, StoreError},
};

/// Rounds per batch (a day of 5-minute rounds), and sample rows after which a batch stops: a
/// backlog ships in transactions of bounded size.
pub const BATCH_ROUNDS: usize = 288;
pub const BATCH_ROWS: usize = 200_000;

/// One sample row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleRow {
    pub eip: IpAddr,
    pub start: i64,
    pub inbound: u64,
    pub outbound: u64,
    pub partial: bool,
}

/// An interval the host sampled, and how well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntervalCoverage {
    Complete,
    Incomplete,
    /// Covered by spreading a delta after the daemon was down.
    Spread,
}

impl IntervalCoverage {
    pub fn as_str(self) -> &'static str {
        match self {
            IntervalCoverage::Complete => "complete",
            IntervalCoverage::Incomplete => "incomplete",
            IntervalCoverage::Spread => "spread",
        }
    }
}

/// Rounds `(after_seq, last_seq]` of the local store, ready to ship.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    pub after_seq: i64,
    pub last_seq: i64,
    pub last_boundary: i64,
    pub rounds: usize,
    pub samples: Vec<SampleRow>,
    /// Every sample the rounds held, shipped or implied (for the figures in logs).
    pub samples_total: usize,
    pub intervals: Vec<(i64, IntervalCoverage)>,
    pub presence: Vec<PresenceRange>,
    pub inventory: Vec<InventoryChange>,
    pub audit: Vec<AuditRow>,
}

/// The next batch after commit `after`: up to `max_rounds` rounds, stopping after the round
/// that brings the sample rows past `max_rows`. `None` when every round is shipped.
pub fn build(
    store: &Store,
    after: i64,
    step: i64,
    max_rounds: usize,
    max_rows: usize,
) -> Result<Option<Batch>, StoreError> {
    let rounds = store.rounds_after(after, max_rounds)?;
    if rounds.is_empty() {
        return Ok(None);
    }
    let mut batch = Batch {
        after_seq: after,
        ..Batch::default()
    };
    for round in rounds {
        let last_interval = round.boundary - step;
        // The coverage the billing store infers for a zero sample of interval `t`.
        let implied = |t: i64| match round.kind {
            RoundKind::Removal => None,
            RoundKind::Complete if t == last_interval => Some(IntervalCoverage::Complete),
            RoundKind::Incomplete if t == last_interval => Some(IntervalCoverage::Incomplete),
            _ => Some(IntervalCoverage::Spread),
        };
        for (eip, s) in store.round_samples(&round)? {
            let partial = s.state == SampleState::Partial;
            let implied_measured = implied(s.start) == Some(IntervalCoverage::Complete);
            batch.samples_total += 1;
            if s.inbound_bytes > 0
                || s.outbound_bytes > 0
                || implied(s.start).is_none()
                || (partial && implied_measured)
            {
                batch.samples.push(SampleRow {
                    eip,
                    start: s.start,
                    inbound: s.inbound_bytes,
                    outbound: s.outbound_bytes,
                    partial,
                });
            }
        }
        if round.kind != RoundKind::Removal {
            let first = round
                .first_start
                .unwrap_or(last_interval)
                .min(last_interval);
            let mut t = first;
            while t <= last_interval {
                batch
                    .intervals
                    .push((t, implied(t).expect("not a removal")));
                t += step;
            }
        }
        batch.rounds += 1;
        batch.last_seq = round.seq;
        batch.last_boundary = batch.last_boundary.max(round.boundary);
        if batch.samples.len() >= max_rows {
            break;
        }
    }
    batch.presence = store.presence_changes(after, batch.last_seq)?;
    batch.inventory = store.inventory_changes(after, batch.last_seq)?;
    batch.audit = store.audit_changes(after, batch.last_seq)?;
    Ok(Some(batch))
}
