//! The admin API's wire format, version 1: JSON objects (NDJSON lines for a sync), and how an
//! item becomes an [`Op`] or is refused with its own error. README, "Admin API", is the
//! reference; this file is its implementation.

use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize};

use super::model::{Held, ItemError, Op, Source};
use crate::{
    billing::plans::{Plan, describe},
    config::{EipConfig, EipState, GroupConfig},
    edit::{Change, EipChanges, GroupChanges},
};

/// The protocol version in every path (`/v1/...`).
pub const API_VERSION: u32 = 1;
/// How far ahead of the daemon's clock an effective time may be (clock skew), in seconds.
pub const MAX_FUTURE_SECONDS: i64 = 300;
/// How far back an effective time may be, in seconds (7 days: a control plane reconciling
/// after its own outage; older changes belong to the billing system, not the router).
pub const MAX_PAST_SECONDS: i64 = 7 * 86_400;

/// An EIP as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EipView {
    pub address: IpAddr,
    pub bandwidth_mbps: Option<u64>,
    pub inbound_mbps: Option<u64>,
    pub outbound_mbps: Option<u64>,
    pub group: Option<String>,
    pub state: EipState,
    /// `file` or `api`.
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    /// Since when (UNIX seconds) it is in its state.
    pub state_since: i64,
}

impl EipView {
    pub fn of(e: &Held<EipConfig>) -> Self {
        let s = &e.spec;
        Self {
            address: s.address,
            bandwidth_mbps: s.bandwidth_mbps,
            inbound_mbps: s.inbound_mbps,
            outbound_mbps: s.outbound_mbps,
            group: s.group.clone(),
            state: s.state,
            source: e.source.as_str().to_owned(),
            plan: s.plan,
            state_since: e.since,
        }
    }
}

/// A shared bandwidth as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    pub name: String,
    pub bandwidth_mbps: u64,
    pub inbound_mbps: Option<u64>,
    pub outbound_mbps: Option<u64>,
    pub members: usize,
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
}

impl GroupView {
    pub fn of(g: &Held<GroupConfig>, members: usize) -> Self {
        Self {
            name: g.spec.name.clone(),
            bandwidth_mbps: g.spec.bandwidth_mbps,
            inbound_mbps: g.spec.inbound_mbps,
            outbound_mbps: g.spec.outbound_mbps,
            members,
            source: g.source.as_str().to_owned(),
            plan: g.spec.plan,
        }
    }
}

/// A time: UNIX seconds, or RFC 3339 with an offset.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Timestamp {
    Seconds(i64),
    Text(String),
}

impl Timestamp {
    pub fn seconds(&self) -> Result<i64, String> {
        match self {
            Timestamp::Seconds(s) => Ok(*s),
            Timestamp::Text(t) => chrono::DateTime::parse_from_rfc3339(t)
                .map(|d| d.timestamp())
                .map_err(|e| format!("`{t}` is not an RFC 3339 time with an offset: {e}")),
        }
    }
}

/// A field absent (keep), `null` (clear) or given (set).
fn change<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Change<T>, D::Error> {
    Ok(match Option::<T>::deserialize(d)? {
        Some(v) => Change::Set(v),
        None => Change::Clear,
    })
}

/// One change of a batch, or one line of a sync, before it is checked. Loosely typed where a
/// bad value should refuse the item, not the request.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// `put_eip`, `patch_eip`, `remove_eip`, `put_group`, `patch_group`, `remove_group`
    /// (in a sync: absent, a line with `address` is an EIP, one with `name` a group).
    pub op: Option<String>,
    pub address: Option<String>,
    pub name: Option<String>,
    #[serde(default, deserialize_with = "change")]
    pub bandwidth_mbps: Change<u64>,
    #[serde(default, deserialize_with = "change")]
    pub inbound_mbps: Change<u64>,
    #[serde(default, deserialize_with = "change")]
    pub outbound_mbps: Change<u64>,
    #[serde(default, deserialize_with = "change")]
    pub group: Change<String>,
    pub state: Option<String>,
    pub effective_at: Option<Timestamp>,
    /// `monthly`, `hourly`, `traffic`, `enhanced95` or `p95`.
    pub plan: Option<String>,
    /// A monthly package's purchase time.
    pub plan_start: Option<Timestamp>,
    /// A monthly package's length: 1-9, 12, 24, 36.
    pub plan_months: Option<u32>,
    /// `patch_eip`: renew the package by this many months (or convert an hourly or traffic
    /// plan into a package of this length, from the effective time).
    pub renew_months: Option<u32>,
    /// `remove_eip`: remove a monthly package before its expiry (an operator's override).
    pub force: Option<bool>,
}

/// A batch: `POST /v1/changes`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// Effective time of the changes that do not give their own (default: now).
    pub effective_at: Option<Timestamp>,
    pub changes: Vec<Item>,
}

fn set<T: Clone>(c: &Change<T>) -> Option<T> {
    match c {
        Change::Set(v) => Some(v.clone()),
        _ => None,
    }
}

type Refusal = (&'static str, String);

fn malformed(message: impl Into<String>) -> Refusal {
    ("malformed", message.into())
}

fn parse_address(item: &Item) -> Result<IpAddr, Refusal> {
    let text = item
        .address
        .as_deref()
        .ok_or_else(|| malformed("`address` is required"))?;
    text.parse::<IpAddr>()
        .map_err(|_| ("invalid_address", format!("`{text}` is not an IP address")))
}

fn parse_name(item: &Item) -> Result<String, Refusal> {
    item.name
        .clone()
        .ok_or_else(|| malformed("`name` is required"))
}

fn parse_state(item: &Item) -> Result<Option<EipState>, Refusal> {
    item.state
        .as_deref()
        .map(|s| {
            EipState::ALL
                .into_iter()
                .find(|st| st.as_str() == s)
                .ok_or_else(|| {
                    (
                        "invalid_state",
                        format!("`{s}` is not one of active, expired, arrears, frozen"),
                    )
                })
        })
        .transpose()
}

/// The plan an item names, if any.
fn parse_plan(item: &Item) -> Result<Option<Plan>, Refusal> {
    let start = item
        .plan_start
        .as_ref()
        .map(|t| t.seconds().map_err(|m| ("invalid_plan", m)))
        .transpose()?;
    match item.plan.as_deref() {
        None if start.is_none() && item.plan_months.is_none() => Ok(None),
        None => Err((
            "invalid_plan",
            "plan_start and plan_months go with plan = \"monthly\"".to_owned(),
        )),
        Some(name) => Plan::from_parts(name, start, item.plan_months)
            .map(Some)
            .map_err(|e| ("invalid_plan", describe(&e))),
    }
}

/// The EIP an item describes in full (absent and `null` fields: none).
fn full_eip(item: &Item) -> Result<EipConfig, Refusal> {
    if item.renew_months.is_some() || item.force.is_some() {
        return Err(malformed(
            "renew_months goes with patch_eip, force with remove_eip",
        ));
    }
    Ok(EipConfig {
        plan: parse_plan(item)?,
        address: parse_address(item)?,
        bandwidth_mbps: set(&item.bandwidth_mbps),
        inbound_mbps: set(&item.inbound_mbps),
        outbound_mbps: set(&item.outbound_mbps),
        group: set(&item.group),
        state: parse_state(item)?.unwrap_or_default(),
    })
}

fn full_group(item: &Item) -> Result<GroupConfig, Refusal> {
    Ok(GroupConfig {
        plan: parse_plan(item)?,
        name: parse_name(item)?,
        bandwidth_mbps: set(&item.bandwidth_mbps)
            .ok_or_else(|| malformed("a group needs `bandwidth_mbps`"))?,
        inbound_mbps: set(&item.inbound_mbps),
        outbound_mbps: set(&item.outbound_mbps),
    })
}

/// The op an item asks for, with its effective time if it has one; `now` bounds the time.
pub fn op_of(item: &Item, now: i64) -> Result<(Op, Option<i64>), Refusal> {
    let at = effective(item.effective_at.as_ref(), now)?;
    let op = match item.op.as_deref() {
        Some("put_eip") => Op::PutEip(full_eip(item)?),
        Some("patch_eip") => Op::PatchEip(
            parse_address(item)?,
            EipChanges {
                bandwidth_mbps: item.bandwidth_mbps.clone(),
                inbound_mbps: item.inbound_mbps.clone(),
                outbound_mbps: item.outbound_mbps.clone(),
                group: item.group.clone(),
                state: parse_state(item)?,
                plan: parse_plan(item)?,
                renew_months: item.renew_months,
            },
        ),
        Some("remove_eip") => Op::RemoveEip(parse_address(item)?, item.force.unwrap_or(false)),
        Some("put_group") => Op::PutGroup(full_group(item)?),
        Some("patch_group") => Op::PatchGroup(
            parse_name(item)?,
            GroupChanges {
                bandwidth_mbps: match &item.bandwidth_mbps {
                    Change::Clear => return Err(malformed("a group's bandwidth cannot be null")),
                    c => set(c),
                },
                inbound_mbps: item.inbound_mbps.clone(),
                outbound_mbps: item.outbound_mbps.clone(),
                plan: parse_plan(item)?,
            },
        ),
        Some("remove_group") => Op::RemoveGroup(parse_name(item)?),
        Some(other) => return Err(("unknown_op", format!("`{other}` is not an op"))),
        None => return Err(malformed("`op` is required")),
    };
    Ok((op, at))
}

/// One line of a sync: an EIP (`address`) or a group (`name`), in full.
pub enum SyncLine {
    Eip(EipConfig),
    Group(GroupConfig),
}

pub fn sync_line(item: &Item) -> Result<SyncLine, Refusal> {
    match (&item.op, &item.address, &item.name) {
        (Some(_), ..) => Err(malformed(
            "a sync line has no `op`: it is the whole EIP or group",
        )),
        (None, Some(_), None) => full_eip(item).map(SyncLine::Eip),
        (None, None, Some(_)) => full_group(item).map(SyncLine::Group),
        _ => Err(malformed(
            "a sync line has either `address` (an EIP) or `name` (a group)",
        )),
    }
}

/// An effective time within the accepted window around `now`.
pub fn effective(t: Option<&Timestamp>, now: i64) -> Result<Option<i64>, Refusal> {
    let Some(t) = t else { return Ok(None) };
    let s = t.seconds().map_err(|m| ("invalid_time", m))?;
    if s > now + MAX_FUTURE_SECONDS {
        return Err((
            "invalid_time",
            format!(
                "effective_at is {} s ahead of this router's clock (at most {MAX_FUTURE_SECONDS})",
                s - now
            ),
        ));
    }
    if s < now - MAX_PAST_SECONDS {
        return Err((
            "invalid_time",
            format!("effective_at is more than {MAX_PAST_SECONDS} s in the past"),
        ));
    }
    Ok(Some(s))
}

/// Turns a list of items into ops, or every refused item.
pub fn ops_of(items: &[Item], now: i64) -> Result<Vec<(Op, Option<i64>)>, Vec<ItemError>> {
    let mut ops = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (index, item) in items.iter().enumerate() {
        match op_of(item, now) {
            Ok(op) => ops.push(op),
            Err((code, message)) => errors.push(ItemError {
                index,
                subject: item
                    .address
                    .clone()
                    .or_else(|| item.name.clone())
                    .unwrap_or_default(),
                code,
                message,
            }),
        }
    }
    if errors.is_empty() {
        Ok(ops)
    } else {
        Err(errors)
    }
}

/// The JSON error body every refusal has.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable code: `rejected` (see `items`), `malformed`, `not_found`, `unknown_eip`,
    /// `unknown_group`, `owned_by_file`, `unauthorized`, `too_large`, `internal`, `busy`.
    pub error: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<ItemErrorBody>,
}

/// [`ItemError`] as read back by a client.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ItemErrorBody {
    pub index: usize,
    pub subject: String,
    pub code: String,
    pub message: String,
}

impl From<&ItemError> for ItemErrorBody {
    fn from(e: &ItemError) -> Self {
        Self {
            index: e.index,
            subject: e.subject.clone(),
            code: e.code.to_owned(),
            message: e.message.clone(),
        }
    }
}

/// The source a client reads back.
pub fn source_of(s: &str) -> Option<Source> {
    Source::parse(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(json: &str) -> Item {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn absent_null_and_set_fields_mean_keep_clear_and_set() {
        let (op, at) = op_of(
            &item(r#"{"op":"patch_eip","address":"192.0.2.1","bandwidth_mbps":null,"inbound_mbps":5,"effective_at":"2026-11-27T10:00:00+08:00"}"#),
            1_795_744_900,
        )
        .unwrap();
        let Op::PatchEip(_, c) = op else { panic!() };
        assert_eq!(c.bandwidth_mbps, Change::Clear);
        assert_eq!(c.inbound_mbps, Change::Set(5));
        assert_eq!(c.outbound_mbps, Change::Keep);
        assert_eq!(at, Some(1_795_744_800));
    }

    #[test]
    fn each_bad_item_has_its_own_error() {
        let items: Vec<Item> = serde_json::from_str(
            r#"[{"op":"put_eip","address":"nope"},{"op":"frobnicate"},{"op":"put_group","name":"g"},
                {"op":"put_eip","address":"192.0.2.1","state":"sleepy"},{"op":"remove_eip","address":"192.0.2.1","effective_at":99999999999}]"#,
        )
        .unwrap();
        let e = ops_of(&items, 1_795_000_000).unwrap_err();
        let codes: Vec<&str> = e.iter().map(|e| e.code).collect();
        assert_eq!(
            codes,
            [
                "invalid_address",
                "unknown_op",
                "malformed",
                "invalid_state",
                "invalid_time"
            ]
        );
    }

    #[test]
    fn plans_are_checked_per_item() {
        let items: Vec<Item> = serde_json::from_str(
            r#"[{"op":"put_eip","address":"192.0.2.1","plan":"monthly","plan_months":1},
                {"op":"put_eip","address":"192.0.2.2","plan":"hourly","plan_months":1},
                {"op":"put_eip","address":"192.0.2.3","plan":"monthly","plan_start":1795000000,"plan_months":10},
                {"op":"put_eip","address":"192.0.2.4","plan":"monthly","plan_start":"2026-11-27T10:00:00+08:00","plan_months":36},
                {"op":"remove_eip","address":"192.0.2.4","force":true}]"#,
        )
        .unwrap();
        let e = ops_of(&items, 1_795_000_000).unwrap_err();
        let codes: Vec<(usize, &str)> = e.iter().map(|e| (e.index, e.code)).collect();
        assert_eq!(
            codes,
            [
                (0, "invalid_plan"),
                (1, "invalid_plan"),
                (2, "invalid_plan")
            ]
        );
        let ok = ops_of(&items[3..], 1_795_000_000).unwrap();
        assert!(matches!(ok[1].0, Op::RemoveEip(_, true)));
    }
}
