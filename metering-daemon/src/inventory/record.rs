//! The inventory as the local store keeps it: rows of the subjects held now, and an audit row
//! (before and after as JSON) for every change.

use crate::{
    billing::plans::{Plan, describe},
    config::{EipConfig, EipState, GroupConfig},
    store::{AuditRow, InventoryRow},
};

use super::model::{Delta, Held, Source};

/// The groups and EIPs of an inventory.
pub type Subjects = (Vec<Held<GroupConfig>>, Vec<Held<EipConfig>>);

/// Rows read back from the store, as the inventory's subjects. A row the store cannot make
/// sense of (an unknown state or source) is returned as an error message.
pub fn from_rows(rows: Vec<InventoryRow>) -> Result<Subjects, String> {
    let mut groups = Vec::new();
    let mut eips = Vec::new();
    for r in rows {
        let source = Source::parse(&r.source)
            .ok_or_else(|| format!("{} {}: unknown source `{}`", r.kind, r.subject, r.source))?;
        if r.kind == "group" {
            let plan = plan_of(&r)?;
            groups.push(Held {
                since: r.state_since,
                spec: GroupConfig {
                    plan,
                    name: r.subject,
                    bandwidth_mbps: r.bandwidth_mbps.unwrap_or(1),
                    inbound_mbps: r.inbound_mbps,
                    outbound_mbps: r.outbound_mbps,
                },
                source,
            });
        } else {
            let address = r
                .subject
                .parse()
                .map_err(|_| format!("eip {}: not an address", r.subject))?;
            let state = EipState::ALL
                .into_iter()
                .find(|s| s.as_str() == r.state)
                .ok_or_else(|| format!("eip {}: unknown state `{}`", r.subject, r.state))?;
            let plan = match (r.plan.as_deref(), r.plan_start, r.plan_months) {
                (None, ..) => None,
                (Some("monthly"), Some(start), Some(months)) => {
                    Some(Plan::Monthly { start, months })
                }
                (Some("hourly"), ..) => Some(Plan::Hourly),
                (Some("traffic"), ..) => Some(Plan::Traffic),
                (Some("enhanced95"), ..) => Some(Plan::Enhanced95),
                (Some("p95"), ..) => Some(Plan::P95),
                (Some(other), ..) => {
                    return Err(format!("eip {}: unreadable plan `{other}`", r.subject));
                }
            };
            eips.push(Held {
                since: r.state_since,
                spec: EipConfig {
                    plan,
                    address,
                    bandwidth_mbps: r.bandwidth_mbps,
                    inbound_mbps: r.inbound_mbps,
                    outbound_mbps: r.outbound_mbps,
                    group: r.group,
                    state,
                },
                source,
            });
        }
    }
    Ok((groups, eips))
}

/// A stored row's plan.
fn plan_of(r: &InventoryRow) -> Result<Option<Plan>, String> {
    r.plan
        .as_deref()
        .map(|name| Plan::from_parts(name, r.plan_start, r.plan_months))
        .transpose()
        .map_err(|e| {
            format!(
                "{} {}: unreadable plan: {}",
                r.kind,
                r.subject,
                describe(&e)
            )
        })
}

/// A plan as its three columns.
fn plan_columns(plan: Option<Plan>) -> (Option<String>, Option<i64>, Option<u32>) {
    match plan {
        Some(Plan::Monthly { start, months }) => {
            (Some("monthly".to_owned()), Some(start), Some(months))
        }
        Some(p) => (Some(p.name().to_owned()), None, None),
        None => (None, None, None),
    }
}

fn eip_row(e: &Held<EipConfig>, at: i64) -> InventoryRow {
    let (plan, plan_start, plan_months) = plan_columns(e.spec.plan);
    InventoryRow {
        kind: "eip",
        subject: e.spec.address.to_string(),
        source: e.source.as_str().to_owned(),
        bandwidth_mbps: e.spec.bandwidth_mbps,
        inbound_mbps: e.spec.inbound_mbps,
        outbound_mbps: e.spec.outbound_mbps,
        group: e.spec.group.clone(),
        state: e.spec.state.as_str().to_owned(),
        effective_from: at,
        state_since: e.since,
        plan,
        plan_start,
        plan_months,
    }
}

fn group_row(g: &Held<GroupConfig>, at: i64) -> InventoryRow {
    let (plan, plan_start, plan_months) = plan_columns(g.spec.plan);
    InventoryRow {
        kind: "group",
        subject: g.spec.name.clone(),
        source: g.source.as_str().to_owned(),
        bandwidth_mbps: Some(g.spec.bandwidth_mbps),
        inbound_mbps: g.spec.inbound_mbps,
        outbound_mbps: g.spec.outbound_mbps,
        group: None,
        state: "active".to_owned(),
        effective_from: at,
        state_since: g.since,
        plan,
        plan_start,
        plan_months,
    }
}

fn eip_json(e: &Held<EipConfig>) -> String {
    serde_json::json!({
        "bandwidth_mbps": e.spec.bandwidth_mbps,
        "inbound_mbps": e.spec.inbound_mbps,
        "outbound_mbps": e.spec.outbound_mbps,
        "group": e.spec.group,
        "state": e.spec.state.as_str(),
        "source": e.source.as_str(),
        "plan": e.spec.plan,
    })
    .to_string()
}

fn group_json(g: &Held<GroupConfig>) -> String {
    serde_json::json!({
        "bandwidth_mbps": g.spec.bandwidth_mbps,
        "inbound_mbps": g.spec.inbound_mbps,
        "outbound_mbps": g.spec.outbound_mbps,
        "source": g.source.as_str(),
        "plan": g.spec.plan,
    })
    .to_string()
}

/// What the store records for `deltas`: rows now held, removals, and audit rows.
pub struct Recorded {
    pub upserts: Vec<InventoryRow>,
    pub removals: Vec<(&'static str, String, i64)>,
    pub audit: Vec<AuditRow>,
}

/// The store's records of `deltas`, applied at `at_ms` by `source` (`file`, `api`, `sync`)
/// for caller `uid`.
pub fn records(deltas: &[Delta], at_ms: i64, source: &str, uid: Option<u32>) -> Recorded {
    let mut r = Recorded {
        upserts: Vec::new(),
        removals: Vec::new(),
        audit: Vec::with_capacity(deltas.len()),
    };
    for d in deltas {
        let at = d.effective_at();
        let (kind, subject, before, after) = match d {
            Delta::Eip {
                address,
                before,
                after,
                ..
            } => {
                match after {
                    Some(a) => r.upserts.push(eip_row(a, at)),
                    None => r.removals.push(("eip", address.to_string(), at)),
                }
                (
                    "eip",
                    address.to_string(),
                    before.as_ref().map(eip_json),
                    after.as_ref().map(eip_json),
                )
            }
            Delta::Group {
                name,
                before,
                after,
                ..
            } => {
                match after {
                    Some(a) => r.upserts.push(group_row(a, at)),
                    None => r.removals.push(("group", name.clone(), at)),
                }
                (
                    "group",
                    name.clone(),
                    before.as_ref().map(group_json),
                    after.as_ref().map(group_json),
                )
            }
        };
        r.audit.push(AuditRow {
            id: 0,
            at_ms,
            effective_from: at,
            source: source.to_owned(),
            uid,
            kind,
            subject,
            before,
            after,
            seq: 0,
        });
    }
    r
}
