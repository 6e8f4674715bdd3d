//! Shipping a batch: every row and the host's watermark in one transaction, so the billing
//! store holds a round whole or not at all, and says exactly where this host stands.
//!
//! Exactly once: the watermark is read under `FOR UPDATE`, must be where this daemon left it,
//! and moves to the batch's last commit in the same transaction as the rows. A crash before
//! the commit leaves nothing; after it, the next start reads the new watermark and goes on from
//! there. Rows are idempotent besides: a sample's identity is (eip, interval, host), sending it
//! again inserts nothing, and the same key with other values is refused and returned as a
//! conflict (recorded in `sample_conflicts`), never summed or overwritten.

use std::net::IpAddr;

use tokio_postgres::{binary_copy::BinaryCopyInWriter, types::Type};

use super::{
    Db, PgError,
    batch::{Batch, SampleRow},
    pg,
};

/// Who ships: this router's name, its local store's identity and its sampling settings.
#[derive(Clone, Debug)]
pub struct HostIdentity {
    pub host: String,
    pub instance: String,
    pub interval_seconds: u32,
    pub timezone: String,
}

/// A sample the store already held with other values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub eip: IpAddr,
    pub interval_start: i64,
    pub stored: (i64, i64, String),
    pub offered: (i64, i64, String),
}

/// What a shipped batch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shipped {
    /// Sample rows the store did not hold yet.
    pub inserted: u64,
    pub conflicts: Vec<Conflict>,
    /// The store already held this batch (a crash between its commit and the local ack).
    pub already: bool,
}

/// Where a pause for fault injection happens (`EIP_METER_TEST_SHIP_PAUSE`): tests kill the
/// daemon there to prove no round is lost or repeated. Unset in production: no effect.
async fn pause_at(point: &str) {
    if std::env::var("EIP_METER_TEST_SHIP_PAUSE").as_deref() == Ok(point) {
        tracing::warn!(point, "ship paused (EIP_METER_TEST_SHIP_PAUSE)");
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
    }
}

/// Registers `me` (first ship) or checks it is the host the store knows under that name;
/// returns the commit the store holds this host's rounds up to.
pub async fn register(db: &mut Db, me: &HostIdentity) -> Result<i64, PgError> {
    let row = db
        .client
        .query_opt(
            "SELECT instance, interval_seconds, timezone FROM hosts WHERE host = $1",
            &[&me.host],
        )
        .await
        .map_err(pg("read host"))?;
    match row {
        None => {
            let tx = db.client.transaction().await.map_err(pg("register host"))?;
            tx.execute(
                "INSERT INTO hosts (host, instance, interval_seconds, timezone) VALUES ($1, $2, $3, $4)",
                &[&me.host, &me.instance, &(me.interval_seconds as i32), &me.timezone],
            )
            .await
            .map_err(pg("register host"))?;
            tx.execute(
                "INSERT INTO watermarks (host, seq, boundary) VALUES ($1, 0, 0)",
                &[&me.host],
            )
            .await
            .map_err(pg("register host"))?;
            tx.commit().await.map_err(pg("register host"))?;
            tracing::info!(host = me.host, "registered in the billing store");
        }
        Some(r) => {
            let instance: String = r.get(0);
            if instance != me.instance {
                return Err(PgError::HostTaken {
                    host: me.host.clone(),
                    registered: instance,
                    ours: me.instance.clone(),
                });
            }
            let interval: i32 = r.get(1);
            if interval as u32 != me.interval_seconds {
                return Err(PgError::HostMismatch {
                    host: me.host.clone(),
                    what: "interval_seconds",
                    stored: interval.to_string(),
                    ours: me.interval_seconds.to_string(),
                });
            }
            let timezone: String = r.get(2);
            if timezone != me.timezone {
                return Err(PgError::HostMismatch {
                    host: me.host.clone(),
                    what: "timezone",
                    stored: timezone,
                    ours: me.timezone.clone(),
                });
            }
        }
    }
    let seq: i64 = db
        .client
        .query_one("SELECT seq FROM watermarks WHERE host = $1", &[&me.host])
        .await
        .map_err(pg("read watermark"))?
        .get(0);
    Ok(seq)
}

/// Ships `batch` for `me` in one transaction with the watermark (see the module docs).
pub async fn ship(db: &mut Db, me: &HostIdentity, batch: &Batch) -> Result<Shipped, PgError> {
    let step = i64::from(me.interval_seconds);
    let tx = db.client.transaction().await.map_err(pg("begin ship"))?;
    let found: i64 = tx
        .query_one(
            "SELECT seq FROM watermarks WHERE host = $1 FOR UPDATE",
            &[&me.host],
        )
        .await
        .map_err(pg("lock watermark"))?
        .get(0);
    if found >= batch.last_seq {
        return Ok(Shipped {
            already: true,
            ..Shipped::default()
        });
    }
    if found != batch.after_seq {
        return Err(PgError::WatermarkMoved {
            host: me.host.clone(),
            expected: batch.after_seq,
            found,
        });
    }
    let mut shipped = Shipped::default();
    if let (Some(lo), Some(hi)) = (
        batch.samples.iter().map(|s| s.start).min(),
        batch.samples.iter().map(|s| s.start).max(),
    ) {
        tx.execute(
            "SELECT eip_meter_ensure_partitions($1, $2)",
            &[&lo, &(hi + step)],
        )
        .await
        .map_err(pg("create partitions"))?;
        tx.batch_execute(
            "CREATE TEMP TABLE IF NOT EXISTS eip_meter_staging (
                 eip inet, interval_start bigint, host text, interval_seconds integer,
                 bytes_in bigint, bytes_out bigint, state text) ON COMMIT DELETE ROWS",
        )
        .await
        .map_err(pg("staging table"))?;
        copy_samples(&tx, me, batch.samples.as_slice()).await?;
        pause_at("after_copy").await;
        let conflicts = tx
            .query(
                "INSERT INTO sample_conflicts (eip, interval_start, host, stored_in, stored_out,
                     stored_state, offered_in, offered_out, offered_state)
                 SELECT t.eip, t.interval_start, t.host, t.bytes_in, t.bytes_out, t.state,
                        s.bytes_in, s.bytes_out, s.state
                 FROM eip_meter_staging s
                 JOIN samples t ON t.eip = s.eip AND t.interval_start = s.interval_start
                                AND t.host = s.host
                 WHERE (t.bytes_in, t.bytes_out, t.state, t.interval_seconds)
                       IS DISTINCT FROM (s.bytes_in, s.bytes_out, s.state, s.interval_seconds)
                 RETURNING eip, interval_start, stored_in, stored_out, stored_state,
                           offered_in, offered_out, offered_state",
                &[],
            )
            .await
            .map_err(pg("check conflicts"))?;
        shipped.conflicts = conflicts
            .iter()
            .map(|r| Conflict {
                eip: r.get(0),
                interval_start: r.get(1),
                stored: (r.get(2), r.get(3), r.get(4)),
                offered: (r.get(5), r.get(6), r.get(7)),
            })
            .collect();
        shipped.inserted = tx
            .execute(
                "INSERT INTO samples SELECT * FROM eip_meter_staging ON CONFLICT DO NOTHING",
                &[],
            )
            .await
            .map_err(pg("insert samples"))?;
    }
    let starts: Vec<i64> = batch.intervals.iter().map(|i| i.0).collect();
    let coverage: Vec<&str> = batch.intervals.iter().map(|i| i.1.as_str()).collect();
    tx.execute(
        "INSERT INTO rounds (host, interval_start, interval_seconds, coverage)
         SELECT $1, s, $2, c FROM unnest($3::bigint[], $4::text[]) AS x(s, c)
         ON CONFLICT DO NOTHING",
        &[&me.host, &(me.interval_seconds as i32), &starts, &coverage],
    )
    .await
    .map_err(pg("insert rounds"))?;
    let eips: Vec<IpAddr> = batch.presence.iter().map(|p| p.eip).collect();
    let from: Vec<i64> = batch.presence.iter().map(|p| p.from).collect();
    let to: Vec<Option<i64>> = batch.presence.iter().map(|p| p.to).collect();
    tx.execute(
        "INSERT INTO presence (eip, host, from_s, to_s)
         SELECT e, $1, f, t FROM unnest($2::inet[], $3::bigint[], $4::bigint[]) AS x(e, f, t)
         ON CONFLICT (eip, host, from_s) DO UPDATE SET to_s = EXCLUDED.to_s
         WHERE presence.to_s IS NULL AND EXCLUDED.to_s IS NOT NULL",
        &[&me.host, &eips, &from, &to],
    )
    .await
    .map_err(pg("insert presence"))?;
    let inv = &batch.inventory;
    let subjects: Vec<&str> = inv.iter().map(|c| c.entry.subject.as_str()).collect();
    let kinds: Vec<&str> = inv.iter().map(|c| c.entry.kind).collect();
    let effective: Vec<i64> = inv.iter().map(|c| c.effective_from).collect();
    let bandwidth: Vec<Option<i64>> = inv
        .iter()
        .map(|c| c.entry.bandwidth_mbps.map(|b| b as i64))
        .collect();
    let groups: Vec<Option<&str>> = inv.iter().map(|c| c.entry.group.as_deref()).collect();
    let states: Vec<&str> = inv.iter().map(|c| c.entry.state.as_str()).collect();
    let plans: Vec<Option<&str>> = inv.iter().map(|c| c.entry.plan.as_deref()).collect();
    let plan_starts: Vec<Option<i64>> = inv.iter().map(|c| c.entry.plan_start).collect();
    let plan_months: Vec<Option<i32>> = inv
        .iter()
        .map(|c| c.entry.plan_months.map(|m| m as i32))
        .collect();
    tx.execute(
        "INSERT INTO inventory_history
         (subject, kind, host, effective_from, bandwidth_mbps, grp, state, plan, plan_start,
          plan_months)
         SELECT s, k, $1, e, b, g, st, p, ps, pm
         FROM unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::text[], $7::text[],
                     $8::text[], $9::bigint[], $10::int[])
              AS x(s, k, e, b, g, st, p, ps, pm)
         ON CONFLICT DO NOTHING",
        &[
            &me.host,
            &subjects,
            &kinds,
            &effective,
            &bandwidth,
            &groups,
            &states,
            &plans,
            &plan_starts,
            &plan_months,
        ],
    )
    .await
    .map_err(pg("insert inventory history"))?;
    let audit = &batch.audit;
    let ids: Vec<i64> = audit.iter().map(|a| a.id).collect();
    let applied: Vec<i64> = audit.iter().map(|a| a.at_ms).collect();
    let effective: Vec<i64> = audit.iter().map(|a| a.effective_from).collect();
    let sources: Vec<&str> = audit.iter().map(|a| a.source.as_str()).collect();
    let uids: Vec<Option<i64>> = audit.iter().map(|a| a.uid.map(i64::from)).collect();
    let kinds: Vec<&str> = audit.iter().map(|a| a.kind).collect();
    let subjects: Vec<&str> = audit.iter().map(|a| a.subject.as_str()).collect();
    let before: Vec<Option<&str>> = audit.iter().map(|a| a.before.as_deref()).collect();
    let after: Vec<Option<&str>> = audit.iter().map(|a| a.after.as_deref()).collect();
    tx.execute(
        "INSERT INTO inventory_audit
         (host, local_id, applied_at_ms, effective_from, source, uid, kind, subject, before, after)
         SELECT $1, i, a, e, s, u, k, sub, b::jsonb, af::jsonb
         FROM unnest($2::bigint[], $3::bigint[], $4::bigint[], $5::text[], $6::bigint[],
                     $7::text[], $8::text[], $9::text[], $10::text[])
              AS x(i, a, e, s, u, k, sub, b, af)
         ON CONFLICT DO NOTHING",
        &[
            &me.host, &ids, &applied, &effective, &sources, &uids, &kinds, &subjects, &before,
            &after,
        ],
    )
    .await
    .map_err(pg("insert inventory audit"))?;
    tx.execute(
        "UPDATE watermarks SET seq = $2, boundary = $3, shipped_at = now() WHERE host = $1",
        &[&me.host, &batch.last_seq, &batch.last_boundary],
    )
    .await
    .map_err(pg("advance watermark"))?;
    pause_at("before_commit").await;
    tx.commit().await.map_err(pg("commit ship"))?;
    pause_at("after_commit").await;
    Ok(shipped)
}

/// The batch's sample rows into the staging table, with binary `COPY`.
async fn copy_samples(
    tx: &tokio_postgres::Transaction<'_>,
    me: &HostIdentity,
    samples: &[SampleRow],
) -> Result<(), PgError> {
    let sink = tx
        .copy_in(
            "COPY eip_meter_staging (eip, interval_start, host, interval_seconds, bytes_in, bytes_out, state)
             FROM STDIN (FORMAT binary)",
        )
        .await
        .map_err(pg("copy samples"))?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[
            Type::INET,
            Type::INT8,
            Type::TEXT,
            Type::INT4,
            Type::INT8,
            Type::INT8,
            Type::TEXT,
        ],
    );
    futures::pin_mut!(writer);
    let interval = me.interval_seconds as i32;
    for s in samples {
        let state = if s.partial { "partial" } else { "measured" };
        writer
            .as_mut()
            .write(&[
                &s.eip,
                &s.start,
                &me.host,
                &interval,
                &(s.inbound as i64),
                &(s.outbound as i64),
                &state,
            ])
            .await
            .map_err(pg("copy samples"))?;
    }
    writer.finish().await.map_err(pg("copy samples"))?;
    Ok(())
}
