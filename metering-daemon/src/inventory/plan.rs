//! Planning a batch against the inventory: every item checked against the inventory as the
//! batch's earlier items leave it, then what only the whole batch shows (groups left with
//! members, capacity). Pure.

use std::{collections::HashMap, net::IpAddr};

use super::model::{Delta, Held, Inventory, ItemError, Limits, Op, Source};
use crate::{
    billing::plans::{Plan, valid_package_months},
    config::{EipConfig, EipState, GroupConfig, is_assignable, valid_group_name},
    edit::{Change, EipChanges},
    rating::LifecycleRules,
};

/// An item's index and subject.
type FirstAdd = (usize, String);

/// A batch under planning: the subjects it touched as it leaves them.
pub(super) struct Planner<'a> {
    inventory: &'a Inventory,
    source: Source,
    limits: Limits,
    eips: HashMap<IpAddr, Option<Held<EipConfig>>>,
    groups: HashMap<String, Option<Held<GroupConfig>>>,
    deltas: Vec<Delta>,
    errors: Vec<ItemError>,
    /// The first item that adds an EIP, and a group (for a capacity error).
    first_add: (Option<FirstAdd>, Option<FirstAdd>),
}

impl<'a> Planner<'a> {
    pub(super) fn new(inventory: &'a Inventory, source: Source, limits: Limits) -> Self {
        Self {
            inventory,
            source,
            limits,
            eips: HashMap::new(),
            groups: HashMap::new(),
            deltas: Vec::new(),
            errors: Vec::new(),
            first_add: (None, None),
        }
    }

    pub(super) fn refuse(
        &mut self,
        index: usize,
        subject: &str,
        code: &'static str,
        message: String,
    ) {
        self.errors.push(ItemError {
            index,
            subject: subject.to_owned(),
            code,
            message,
        });
    }

    fn eip_now(&self, address: &IpAddr) -> Option<Held<EipConfig>> {
        match self.eips.get(address) {
            Some(e) => e.clone(),
            None => self.inventory.eips.get(address).cloned(),
        }
    }

    fn group_now(&self, name: &str) -> Option<Held<GroupConfig>> {
        match self.groups.get(name) {
            Some(g) => g.clone(),
            None => self.inventory.groups.get(name).cloned(),
        }
    }

    /// Whether `source` may change a subject owned by `owner`.
    fn may_change(&mut self, index: usize, subject: &str, owner: Source) -> bool {
        if owner == Source::File && self.source == Source::Api {
            self.refuse(
                index,
                subject,
                "owned_by_file",
                "listed in the config file, which owns it: edit the file (`eip-meter eip|group` does) instead of the API".to_owned(),
            );
            return false;
        }
        true
    }

    /// The EIP an op changes: it must exist and be `source`'s to change.
    fn existing_eip(&mut self, index: usize, address: &IpAddr) -> Option<Held<EipConfig>> {
        let subject = address.to_string();
        let Some(before) = self.eip_now(address) else {
            self.refuse(
                index,
                &subject,
                "unknown_eip",
                format!("EIP {address} is not in the inventory"),
            );
            return None;
        };
        self.may_change(index, &subject, before.source)
            .then_some(before)
    }

    /// The group an op changes: it must exist and be `source`'s to change.
    fn existing_group(&mut self, index: usize, name: &str) -> Option<Held<GroupConfig>> {
        let Some(before) = self.group_now(name) else {
            self.refuse(
                index,
                name,
                "unknown_group",
                format!("group `{name}` does not exist"),
            );
            return None;
        };
        self.may_change(index, name, before.source)
            .then_some(before)
    }

    pub(super) fn op(&mut self, index: usize, op: &Op, at: i64) {
        let subject = op.subject();
        match op {
            Op::PutEip(spec) => {
                let before = self.eip_now(&spec.address);
                if let Some(b) = &before
                    && !self.may_change(index, &subject, b.source)
                {
                    return;
                }
                self.put_eip(index, before, spec.clone(), at);
            }
            Op::PatchEip(address, changes) => {
                if let Some(before) = self.existing_eip(index, address) {
                    match patched(&before.spec, changes, at, &self.limits.lifecycle) {
                        Ok(spec) => self.put_eip(index, Some(before), spec, at),
                        Err((code, message)) => self.refuse(index, &subject, code, message),
                    }
                }
            }
            Op::RemoveEip(address, force) => {
                if let Some(before) = self.existing_eip(index, address) {
                    if let (false, Source::Api, Some(Plan::Monthly { start, months })) =
                        (*force, self.source, before.spec.plan)
                        && let Some(expiry) = self.limits.lifecycle.expiry(start, months)
                        && expiry > at
                    {
                        self.refuse(
                            index,
                            &subject,
                            "package_not_expired",
                            format!("a monthly package cannot be removed before it expires at {expiry} (UNIX seconds); an operator may force it (`force`, logged)"),
                        );
                        return;
                    }
                    self.eips.insert(*address, None);
                    self.deltas.push(Delta::Eip {
                        address: *address,
                        before: Some(before),
                        after: None,
                        effective_at: at,
                    });
                }
            }
            Op::PutGroup(spec) => {
                let before = self.group_now(&spec.name);
                if let Some(b) = &before
                    && !self.may_change(index, &subject, b.source)
                {
                    return;
                }
                self.put_group(index, before, spec.clone(), at);
            }
            Op::PatchGroup(name, changes) => {
                if let Some(before) = self.existing_group(index, name) {
                    let mut spec = before.spec.clone();
                    if let Some(b) = changes.bandwidth_mbps {
                        spec.bandwidth_mbps = b;
                    }
                    apply_change(&mut spec.inbound_mbps, &changes.inbound_mbps);
                    apply_change(&mut spec.outbound_mbps, &changes.outbound_mbps);
                    if let Some(p) = changes.plan {
                        spec.plan = Some(p);
                    }
                    self.put_group(index, Some(before), spec, at);
                }
            }
            Op::RemoveGroup(name) => {
                if let Some(before) = self.existing_group(index, name) {
                    self.groups.insert(name.clone(), None);
                    self.deltas.push(Delta::Group {
                        name: name.clone(),
                        before: Some(before),
                        after: None,
                        effective_at: at,
                    });
                }
            }
        }
    }

    fn put_eip(&mut self, index: usize, before: Option<Held<EipConfig>>, spec: EipConfig, at: i64) {
        let subject = spec.address.to_string();
        if let Err((code, message)) = check_eip(&spec) {
            self.refuse(index, &subject, code, message);
            return;
        }
        if let Some(g) = &spec.group
            && self.group_now(g).is_none()
        {
            self.refuse(
                index,
                &subject,
                "unknown_group",
                format!("group `{g}` does not exist"),
            );
            return;
        }
        if self.source == Source::Api
            && let Some(Plan::Monthly { .. }) = before.as_ref().and_then(|b| b.spec.plan)
            && !matches!(spec.plan, Some(Plan::Monthly { .. }))
        {
            self.refuse(
                index,
                &subject,
                "plan_conversion",
                "a monthly package never converts back to another plan".to_owned(),
            );
            return;
        }
        // A package past its expiry is expired, whatever a change says (renew it to reactivate):
        // a reload of the file or a sync never undoes an expiry.
        let mut spec = spec;
        let mut since_expiry = None;
        if let Some(Plan::Monthly { start, months }) = spec.plan
            && spec.state == EipState::Active
            && let Some(expiry) = self.limits.lifecycle.expiry(start, months)
            && expiry <= at
        {
            spec.state = EipState::Expired;
            since_expiry = Some(expiry);
        }
        // The state's start moves only when the state changes.
        let since = match &before {
            Some(b) if b.spec.state == spec.state => b.since,
            _ => since_expiry.unwrap_or(at),
        };
        let after = Held {
            spec,
            source: self.source,
            since,
        };
        if before.as_ref() == Some(&after) {
            return;
        }
        if before.is_none() && self.first_add.0.is_none() {
            self.first_add.0 = Some((index, subject));
        }
        self.eips.insert(after.spec.address, Some(after.clone()));
        self.deltas.push(Delta::Eip {
            address: after.spec.address,
            before,
            after: Some(after),
            effective_at: at,
        });
    }

    fn put_group(
        &mut self,
        index: usize,
        before: Option<Held<GroupConfig>>,
        spec: GroupConfig,
        at: i64,
    ) {
        if let Err((code, message)) = check_group(&spec) {
            self.refuse(index, &spec.name, code, message);
            return;
        }
        let after = Held {
            spec,
            source: self.source,
            since: before.as_ref().map_or(at, |b| b.since),
        };
        if before.as_ref() == Some(&after) {
            return;
        }
        if before.is_none() && self.first_add.1.is_none() {
            self.first_add.1 = Some((index, after.spec.name.clone()));
        }
        self.groups
            .insert(after.spec.name.clone(), Some(after.clone()));
        self.deltas.push(Delta::Group {
            name: after.spec.name.clone(),
            before,
            after: Some(after),
            effective_at: at,
        });
    }

    /// Checks what only the whole batch shows (groups removed with members left, capacity),
    /// then returns the deltas or every refusal.
    pub(super) fn finish(mut self) -> Result<Vec<Delta>, Vec<ItemError>> {
        // Members each touched group has after the batch.
        let mut members: HashMap<&str, isize> = HashMap::new();
        for (address, after) in &self.eips {
            if let Some(g) = self
                .inventory
                .eips
                .get(address)
                .and_then(|b| b.spec.group.as_deref())
            {
                *members.entry(g).or_default() -= 1;
            }
            if let Some(g) = after.as_ref().and_then(|a| a.spec.group.as_deref()) {
                *members.entry(g).or_default() += 1;
            }
        }
        let mut in_use = Vec::new();
        for (name, after) in &self.groups {
            if after.is_none() {
                let left = self.inventory.members(name) as isize
                    + members.get(name.as_str()).copied().unwrap_or(0);
                if left > 0 {
                    in_use.push((name.clone(), left));
                }
            }
        }
        for (name, left) in in_use {
            self.refuse(
                0,
                &name,
                "group_in_use",
                format!("group `{name}` still has {left} EIP(s); move or remove them first"),
            );
        }
        let eips_after = count_after(&self.inventory.eips, &self.eips);
        if eips_after > self.limits.eips as isize
            && let Some((index, subject)) = self.first_add.0.clone()
        {
            self.refuse(
                index,
                &subject,
                "capacity",
                format!(
                    "{eips_after} EIPs do not fit in the {} slots of dataplane.capacity (raising it needs a restart with on_exit = \"detach\")",
                    self.limits.eips
                ),
            );
        }
        let groups_after = count_after(&self.inventory.groups, &self.groups);
        if groups_after > self.limits.groups as isize
            && let Some((index, subject)) = self.first_add.1.clone()
        {
            self.refuse(
                index,
                &subject,
                "group_capacity",
                format!(
                    "{groups_after} groups do not fit in dataplane.group_capacity {}",
                    self.limits.groups
                ),
            );
        }
        if self.errors.is_empty() {
            Ok(self.deltas)
        } else {
            self.errors.sort_by_key(|e| e.index);
            Err(self.errors)
        }
    }
}

/// How many subjects there are once a batch's `touched` ones (`None`: removed) are applied.
fn count_after<K: Ord + std::hash::Hash + Eq, V, W>(
    held: &std::collections::BTreeMap<K, V>,
    touched: &HashMap<K, Option<W>>,
) -> isize {
    held.len() as isize
        + touched
            .iter()
            .map(|(k, after)| after.is_some() as isize - held.contains_key(k) as isize)
            .sum::<isize>()
}

fn apply_change<T: Clone>(field: &mut Option<T>, change: &Change<T>) {
    match change {
        Change::Keep => {}
        Change::Set(v) => *field = Some(v.clone()),
        Change::Clear => *field = None,
    }
}

/// `spec` with `changes` applied; joining a group drops the EIP's own bandwidths (the group's
/// cap applies), as `eip-meter eip set --group` does in the file.
/// `spec` with `changes` applied at `at`. A renewal adds months to a monthly package (an
/// expired one renewed past `at` is active again at once) or converts an hourly or traffic
/// plan (or none) to a monthly package from `at`.
pub(super) fn patched(
    spec: &EipConfig,
    changes: &EipChanges,
    at: i64,
    rules: &LifecycleRules,
) -> Result<EipConfig, (&'static str, String)> {
    let mut e = spec.clone();
    if let Some(p) = changes.plan {
        e.plan = Some(p);
    }
    if let Some(n) = changes.renew_months {
        e.plan = Some(match e.plan {
            Some(Plan::Monthly { start, months }) if months + n <= 120 => Plan::Monthly {
                start,
                months: months + n,
            },
            Some(Plan::Monthly { .. }) => {
                return Err((
                    "invalid_plan",
                    "a package runs at most 120 months".to_owned(),
                ));
            }
            None | Some(Plan::Hourly | Plan::Traffic) if valid_package_months(n) => Plan::Monthly {
                start: at,
                months: n,
            },
            None | Some(Plan::Hourly | Plan::Traffic) => {
                return Err((
                    "invalid_plan",
                    format!("{n} months is not a package on sale (1-9, 12, 24, 36)"),
                ));
            }
            Some(other) => {
                return Err((
                    "plan_conversion",
                    format!(
                        "a {} plan is not renewed into a monthly package",
                        other.name()
                    ),
                ));
            }
        });
        if let Some(Plan::Monthly { start, months }) = e.plan
            && e.state == EipState::Expired
            && rules.expiry(start, months).is_some_and(|x| x > at)
            && changes.state.is_none()
        {
            e.state = EipState::Active;
        }
    }
    apply_change(&mut e.bandwidth_mbps, &changes.bandwidth_mbps);
    apply_change(&mut e.inbound_mbps, &changes.inbound_mbps);
    apply_change(&mut e.outbound_mbps, &changes.outbound_mbps);
    apply_change(&mut e.group, &changes.group);
    if matches!(changes.group, Change::Set(_)) {
        e.bandwidth_mbps = None;
        e.inbound_mbps = None;
        e.outbound_mbps = None;
    }
    if let Some(s) = changes.state {
        e.state = s;
    }
    Ok(e)
}

/// What the config file's validation also asks of an EIP.
fn check_eip(e: &EipConfig) -> Result<(), (&'static str, String)> {
    let a = e.address;
    if let IpAddr::V6(v6) = a
        && v6.to_ipv4_mapped().is_some()
    {
        return Err((
            "address_family",
            format!("{a} is an IPv4 address written as IPv6: give it as IPv4"),
        ));
    }
    if !is_assignable(a) {
        return Err((
            "invalid_address",
            format!("{a} cannot be an EIP (unspecified, loopback, multicast or broadcast)"),
        ));
    }
    if [e.bandwidth_mbps, e.inbound_mbps, e.outbound_mbps]
        .iter()
        .flatten()
        .any(|&b| b == 0)
    {
        return Err((
            "invalid_bandwidth",
            "a bandwidth must be at least 1 Mbit/s".to_owned(),
        ));
    }
    if e.group.is_some()
        && (e.bandwidth_mbps.is_some() || e.inbound_mbps.is_some() || e.outbound_mbps.is_some())
    {
        return Err((
            "group_and_own_caps",
            "an EIP in a group is capped by the group's bandwidth; give it no bandwidth of its own"
                .to_owned(),
        ));
    }
    Ok(())
}

fn check_group(g: &GroupConfig) -> Result<(), (&'static str, String)> {
    if g.plan == Some(Plan::Enhanced95) && g.bandwidth_mbps < 300 {
        return Err((
            "invalid_plan",
            "the enhanced 95th applies to shared bandwidths of 300 Mbit/s and more".to_owned(),
        ));
    }
    let n = &g.name;
    if !valid_group_name(n) {
        return Err((
            "invalid_group_name",
            format!("group name `{n}` must match [A-Za-z0-9_.-]{{1,64}}"),
        ));
    }
    if [Some(g.bandwidth_mbps), g.inbound_mbps, g.outbound_mbps]
        .iter()
        .flatten()
        .any(|&b| b == 0)
    {
        return Err((
            "invalid_bandwidth",
            "a bandwidth must be at least 1 Mbit/s".to_owned(),
        ));
    }
    Ok(())
}
