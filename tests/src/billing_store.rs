//! What a router shipped to the billing store, read back with `psql`, and the check that it
//! equals the router's local store: used by the `billing_store` tests and by the soak.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{SampleRow, postgres::Postgres};

/// The boundary up to which the billing store holds `host`'s rounds (0: none yet, or the
/// store is down).
pub fn shipped_boundary(pg: &Postgres, host: &str) -> i64 {
    pg.value::<i64>(&format!(
        "SELECT coalesce((SELECT boundary FROM watermarks WHERE host = '{host}'), 0)"
    ))
    .unwrap_or(0)
}

/// `(eip, interval_start) -> (bytes_in, bytes_out, state)` of `host` in the billing store.
pub type StoredRows = BTreeMap<(IpAddr, i64), (u64, u64, String)>;

pub fn stored_rows(pg: &Postgres, host: &str) -> Result<StoredRows> {
    pg.query(&format!(
        "SELECT host(eip), interval_start, bytes_in, bytes_out, state FROM samples
         WHERE host = '{host}' ORDER BY 1, 2"
    ))?
    .lines()
    .filter(|l| !l.is_empty())
    .map(|l| {
        let f: Vec<&str> = l.split('|').collect();
        ensure!(f.len() == 5, "unexpected samples row `{l}`");
        Ok((
            (f[0].parse()?, f[1].parse()?),
            (f[2].parse()?, f[3].parse()?, f[4].to_owned()),
        ))
    })
    .collect()
}

/// The intervals the billing store says `host` sampled.
pub fn stored_rounds(pg: &Postgres, host: &str) -> Result<BTreeSet<i64>> {
    pg.query(&format!(
        "SELECT interval_start FROM rounds WHERE host = '{host}'"
    ))?
    .lines()
    .filter(|l| !l.is_empty())
    .map(|l| Ok(l.parse()?))
    .collect()
}

/// What [`compare_with_local`] compared.
#[derive(Debug, serde::Serialize)]
pub struct Comparison {
    /// Shipped up to this boundary.
    pub boundary: i64,
    pub local_samples: usize,
    pub stored_rows: usize,
    pub rounds: usize,
    pub bytes: u64,
}

/// Checks the billing store against `local` (the router's samples, from `eip-meter samples`)
/// up to what it shipped: every interval sampled locally is a round there, every local sample
/// with traffic is a row there with the same values, every row there is a local sample, and
/// the byte sums agree (a round shipped twice or lost would break one of these).
pub fn compare_with_local(pg: &Postgres, local: &[SampleRow], host: &str) -> Result<Comparison> {
    let boundary = shipped_boundary(pg, host);
    let local: Vec<&SampleRow> = local.iter().filter(|s| s.start < boundary).collect();
    ensure!(!local.is_empty(), "no local samples before {boundary}");
    let rows = stored_rows(pg, host)?;
    let local_intervals: BTreeSet<i64> = local.iter().map(|s| s.start).collect();
    let rounds = stored_rounds(pg, host)?;
    if rounds != local_intervals {
        bail!(
            "the rounds in the billing store are not the intervals sampled locally: only stored {:?}, only local {:?}",
            rounds
                .difference(&local_intervals)
                .take(5)
                .collect::<Vec<_>>(),
            local_intervals
                .difference(&rounds)
                .take(5)
                .collect::<Vec<_>>()
        );
    }
    let by_key: BTreeMap<(IpAddr, i64), &SampleRow> =
        local.iter().map(|s| ((s.eip, s.start), *s)).collect();
    for (key, (i, o, state)) in &rows {
        let l = by_key
            .get(key)
            .with_context(|| format!("stored row {key:?} has no local sample"))?;
        ensure!(
            (l.bytes_in, l.bytes_out, &l.state) == (*i, *o, state),
            "{key:?}: local {:?}, stored {:?}",
            (l.bytes_in, l.bytes_out, &l.state),
            (i, o, state)
        );
    }
    for s in &local {
        ensure!(
            (s.bytes_in == 0 && s.bytes_out == 0) || rows.contains_key(&(s.eip, s.start)),
            "local sample with traffic {s:?} missing from the billing store"
        );
    }
    let local_sum = local
        .iter()
        .fold((0, 0), |(a, b), s| (a + s.bytes_in, b + s.bytes_out));
    let stored_sum: (u64, u64) = rows
        .values()
        .fold((0, 0), |(a, b), (i, o, _)| (a + i, b + o));
    ensure!(
        stored_sum == local_sum,
        "bytes (in, out): stored {stored_sum:?}, local {local_sum:?}"
    );
    Ok(Comparison {
        boundary,
        local_samples: local.len(),
        stored_rows: rows.len(),
        rounds: rounds.len(),
        bytes: local_sum.0 + local_sum.1,
    })
}
