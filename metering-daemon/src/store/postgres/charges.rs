//! What `eip-meter bill --prices` reads to rate a period (each subject's plan, life, bandwidth
//! history and figures, from every host's shipped history) and the charge lines it writes.
//! SQL only; the rating itself is pure (`rating::charges`) and done by the caller.

use std::collections::BTreeMap;

use super::{Db, PgError, pg};

/// One subject with a plan, and what rating it needs.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanInput {
    /// `eip` or `group`.
    pub kind: String,
    pub subject: String,
    pub plan: String,
    pub plan_start: Option<i64>,
    pub plan_months: Option<u32>,
    /// When it first appeared on any host.
    pub created: i64,
    /// When it was removed, if its latest change on every host is a removal.
    pub deleted: Option<i64>,
    /// `(effective_from, Mbit/s)`, sorted.
    pub bandwidth: Vec<(i64, u64)>,
    /// When its service was stopped (`expired`, `arrears`, `frozen`): `[from, to)`, sorted.
    pub stopped: Vec<(i64, i64)>,
    /// The latest revision of each day's and month's figures in the period.
    pub days: BTreeMap<String, serde_json::Value>,
    pub months: BTreeMap<String, serde_json::Value>,
}

/// One charge line to write (decimals as text: they go to `numeric` exactly).
#[derive(Clone, Debug, PartialEq)]
pub struct ChargeRow {
    pub kind: String,
    pub subject: String,
    pub plan: String,
    pub item: String,
    pub from: i64,
    pub to: i64,
    pub settled_at: i64,
    pub quantity: String,
    pub unit: String,
    pub unit_price: String,
    pub exact: String,
    pub amount: String,
    pub currency: String,
    pub figures: serde_json::Value,
}

/// Every subject whose latest change before `to` has a plan, with its inputs for `[from, to)`;
/// `periods` are the figure periods (days and months) of the bill.
pub async fn plan_inputs(
    db: &Db,
    from: i64,
    to: i64,
    periods: &[String],
) -> Result<Vec<PlanInput>, PgError> {
    let rows = db
        .client
        .query(
            "WITH latest AS (
                 SELECT DISTINCT ON (kind, subject) kind, subject, plan, plan_start, plan_months
                 FROM inventory_history
                 WHERE effective_from < $1 AND state <> 'removed'
                 ORDER BY kind, subject, effective_from DESC
             ), life AS (
                 SELECT kind, subject, min(effective_from) AS created,
                        max(effective_from) FILTER (WHERE state = 'removed') AS removed,
                        max(effective_from) FILTER (WHERE state <> 'removed') AS present
                 FROM inventory_history GROUP BY kind, subject
             )
             SELECT l.kind, l.subject, l.plan, l.plan_start, l.plan_months, f.created,
                    CASE WHEN f.removed > f.present THEN f.removed END
             FROM latest l JOIN life f USING (kind, subject)
             WHERE l.plan IS NOT NULL ORDER BY l.kind, l.subject",
            &[&to],
        )
        .await
        .map_err(pg("read plans"))?;
    let mut inputs = Vec::with_capacity(rows.len());
    for r in rows {
        let kind: String = r.get(0);
        let subject: String = r.get(1);
        let bandwidth = db
            .client
            .query(
                "SELECT effective_from, bandwidth_mbps FROM inventory_history
                 WHERE kind = $1 AND subject = $2 AND bandwidth_mbps IS NOT NULL
                   AND effective_from < $3
                 ORDER BY effective_from",
                &[&kind, &subject, &to],
            )
            .await
            .map_err(pg("read bandwidth history"))?
            .iter()
            .map(|b| (b.get::<_, i64>(0), b.get::<_, i64>(1) as u64))
            .collect();
        let states: Vec<(i64, String)> = db
            .client
            .query(
                "SELECT effective_from, state FROM inventory_history
                 WHERE kind = $1 AND subject = $2 AND effective_from < $3
                 ORDER BY effective_from",
                &[&kind, &subject, &to],
            )
            .await
            .map_err(pg("read state history"))?
            .iter()
            .map(|s| (s.get(0), s.get(1)))
            .collect();
        let stopped = stopped_intervals(&states, to);
        let mut days = BTreeMap::new();
        let mut months = BTreeMap::new();
        for f in db
            .client
            .query(
                "SELECT DISTINCT ON (period) period, figures FROM figures
                 WHERE kind = $1 AND subject = $2 AND period = ANY($3)
                 ORDER BY period, revision DESC",
                &[&kind, &subject, &periods],
            )
            .await
            .map_err(pg("read figures"))?
        {
            let period: String = f.get(0);
            let figures: serde_json::Value = f.get(1);
            if period.len() == 7 {
                months.insert(period, figures);
            } else {
                days.insert(period, figures);
            }
        }
        let _ = from;
        inputs.push(PlanInput {
            kind,
            subject,
            plan: r.get(2),
            plan_start: r.get(3),
            plan_months: r.get::<_, Option<i32>>(4).map(|m| m as u32),
            created: r.get(5),
            deleted: r.get(6),
            bandwidth,
            stopped,
            days,
            months,
        });
    }
    Ok(inputs)
}

/// The intervals a state history (sorted) spent stopped, up to `end`.
fn stopped_intervals(states: &[(i64, String)], end: i64) -> Vec<(i64, i64)> {
    let stops = |s: &str| matches!(s, "expired" | "arrears" | "frozen");
    let mut out: Vec<(i64, i64)> = Vec::new();
    let mut since: Option<i64> = None;
    for (at, state) in states {
        match (since, stops(state)) {
            (None, true) => since = Some(*at),
            (Some(from), false) => {
                out.push((from, *at));
                since = None;
            }
            _ => {}
        }
    }
    if let Some(from) = since {
        out.push((from, end));
    }
    out
}

/// Writes charge lines; returns how many were new or changed (the rest were already so).
pub async fn write_charges(db: &mut Db, rows: &[ChargeRow]) -> Result<usize, PgError> {
    let tx = db.client.transaction().await.map_err(pg("begin charges"))?;
    let mut written = 0;
    for c in rows {
        written += tx
            .execute(
                "INSERT INTO charges (subject, kind, plan, item, from_s, to_s, settled_at,
                     quantity, unit, unit_price, exact, amount, currency, figures)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::numeric, $9, $10::text::numeric,
                         $11::text::numeric, $12::text::numeric, $13, $14)
                 ON CONFLICT (subject, kind, item, from_s, settled_at) DO UPDATE SET
                     plan = EXCLUDED.plan, to_s = EXCLUDED.to_s, quantity = EXCLUDED.quantity,
                     unit = EXCLUDED.unit, unit_price = EXCLUDED.unit_price,
                     exact = EXCLUDED.exact, amount = EXCLUDED.amount,
                     currency = EXCLUDED.currency, figures = EXCLUDED.figures,
                     computed_at = now()
                 WHERE (charges.exact, charges.amount, charges.to_s, charges.plan)
                     IS DISTINCT FROM (EXCLUDED.exact, EXCLUDED.amount, EXCLUDED.to_s, EXCLUDED.plan)",
                &[
                    &c.subject,
                    &c.kind,
                    &c.plan,
                    &c.item,
                    &c.from,
                    &c.to,
                    &c.settled_at,
                    &c.quantity,
                    &c.unit,
                    &c.unit_price,
                    &c.exact,
                    &c.amount,
                    &c.currency,
                    &c.figures,
                ],
            )
            .await
            .map_err(pg("write charges"))? as usize;
    }
    tx.commit().await.map_err(pg("commit charges"))?;
    Ok(written)
}
