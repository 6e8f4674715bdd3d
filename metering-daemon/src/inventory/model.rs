//! The inventory the daemon holds: every EIP and shared bandwidth with the source that owns it,
//! and the planning of changes against it (pure: no kernel, no store, no clock).
//!
//! Ownership: the config file owns the subjects it lists, the API the ones it created. The API
//! cannot change or remove a file-owned subject (`owned_by_file`); a file that lists a subject
//! the API created takes it over at the next reload or start. A batch is planned as a whole
//! against the inventory as the batch's earlier changes leave it: every item is checked, and
//! one bad item refuses the batch (nothing is applied).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    ops::Bound,
};

use crate::{
    config::{EipConfig, EipState, GroupConfig},
    edit::{Change, EipChanges, GroupChanges},
};

/// Who owns a subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// An `[[eip]]` or `[[group]]` table of the config file.
    File,
    /// The admin API (persisted in the local store).
    Api,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::Api => "api",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "file" => Some(Source::File),
            "api" => Some(Source::Api),
            _ => None,
        }
    }
}

/// A subject and its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held<T> {
    pub spec: T,
    pub source: Source,
}

/// One change to make, as a client asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create the EIP, or replace everything about it.
    PutEip(EipConfig),
    /// Change some fields of an existing EIP.
    PatchEip(IpAddr, EipChanges),
    RemoveEip(IpAddr),
    /// Create the group, or replace its bandwidths.
    PutGroup(GroupConfig),
    /// Change some bandwidths of an existing group.
    PatchGroup(String, GroupChanges),
    /// Remove a group no EIP is in.
    RemoveGroup(String),
}

impl Op {
    pub fn subject(&self) -> String {
        match self {
            Op::PutEip(e) => e.address.to_string(),
            Op::PatchEip(a, _) | Op::RemoveEip(a) => a.to_string(),
            Op::PutGroup(g) => g.name.clone(),
            Op::PatchGroup(n, _) | Op::RemoveGroup(n) => n.clone(),
        }
    }
}

/// What one change did: the subject before and after (`None`: absent), its owner afterwards,
/// and when it took effect (the control plane's time, UNIX seconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delta {
    Eip {
        address: IpAddr,
        before: Option<Held<EipConfig>>,
        after: Option<Held<EipConfig>>,
        effective_at: i64,
    },
    Group {
        name: String,
        before: Option<Held<GroupConfig>>,
        after: Option<Held<GroupConfig>>,
        effective_at: i64,
    },
}

impl Delta {
    pub fn effective_at(&self) -> i64 {
        match self {
            Delta::Eip { effective_at, .. } | Delta::Group { effective_at, .. } => *effective_at,
        }
    }
}

/// Why one item of a batch was refused.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ItemError {
    /// Position in the batch (0-based), or line of a sync (1-based).
    pub index: usize,
    pub subject: String,
    /// Stable machine-readable code (see README, "Admin API").
    pub code: &'static str,
    pub message: String,
}

/// Counts of what a plan changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub unchanged: usize,
}

impl Summary {
    pub fn of(deltas: &[Delta], unchanged: usize) -> Self {
        let mut s = Summary {
            unchanged,
            ..Summary::default()
        };
        for d in deltas {
            let (before, after) = match d {
                Delta::Eip { before, after, .. } => (before.is_some(), after.is_some()),
                Delta::Group { before, after, .. } => (before.is_some(), after.is_some()),
            };
            match (before, after) {
                (false, true) => s.added += 1,
                (true, false) => s.removed += 1,
                _ => s.changed += 1,
            }
        }
        s
    }
}

/// Room in the kernel maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub eips: u32,
    pub groups: u32,
}

/// Every EIP and group with its owner.
#[derive(Debug, Default)]
pub struct Inventory {
    eips: BTreeMap<IpAddr, Held<EipConfig>>,
    groups: BTreeMap<String, Held<GroupConfig>>,
    /// Members of each group.
    members: HashMap<String, usize>,
}

impl Inventory {
    /// An inventory of `groups` and `eips` (already valid together).
    pub fn new(groups: Vec<Held<GroupConfig>>, eips: Vec<Held<EipConfig>>) -> Self {
        let mut inv = Self::default();
        for g in groups {
            inv.groups.insert(g.spec.name.clone(), g);
        }
        for e in eips {
            if let Some(g) = &e.spec.group {
                *inv.members.entry(g.clone()).or_default() += 1;
            }
            inv.eips.insert(e.spec.address, e);
        }
        inv
    }

    pub fn eip(&self, address: &IpAddr) -> Option<&Held<EipConfig>> {
        self.eips.get(address)
    }

    pub fn group(&self, name: &str) -> Option<&Held<GroupConfig>> {
        self.groups.get(name)
    }

    pub fn eip_count(&self) -> usize {
        self.eips.len()
    }

    pub fn members(&self, group: &str) -> usize {
        self.members.get(group).copied().unwrap_or(0)
    }

    pub fn eips(&self) -> impl Iterator<Item = &Held<EipConfig>> {
        self.eips.values()
    }

    pub fn groups(&self) -> impl Iterator<Item = &Held<GroupConfig>> {
        self.groups.values()
    }

    /// Up to `limit` EIPs after `after` (all from the start when `None`), in address order
    /// (IPv4 before IPv6): a page of a listing that stays consistent while EIPs come and go.
    pub fn page(&self, after: Option<IpAddr>, limit: usize) -> Vec<&Held<EipConfig>> {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.eips
            .range((from, Bound::Unbounded))
            .take(limit)
            .map(|(_, e)| e)
            .collect()
    }

    /// The EIPs and groups of the inventory as the config types (for the whole-policy path).
    pub fn specs(&self) -> (Vec<GroupConfig>, Vec<EipConfig>) {
        (
            self.groups.values().map(|g| g.spec.clone()).collect(),
            self.eips.values().map(|e| e.spec.clone()).collect(),
        )
    }

    /// Plans `ops` from `source` as one batch: the deltas in order, or every refused item.
    /// `at` is the effective time of ops without their own.
    pub fn plan(
        &self,
        ops: &[(Op, Option<i64>)],
        source: Source,
        at: i64,
        limits: Limits,
    ) -> Result<Vec<Delta>, Vec<ItemError>> {
        let mut planner = Planner::new(self, source, limits);
        for (index, (op, effective)) in ops.iter().enumerate() {
            planner.op(index, op, effective.unwrap_or(at));
        }
        planner.finish()
    }

    /// Plans making what `source` owns exactly `groups` and `eips` (a desired-state sync, or a
    /// reloaded config file): puts for what is new or different, removals for what `source`
    /// owns and is not listed. Returns the deltas and how many listed subjects were unchanged.
    pub fn plan_sync(
        &self,
        source: Source,
        groups: Vec<GroupConfig>,
        eips: Vec<EipConfig>,
        at: i64,
        limits: Limits,
    ) -> Result<(Vec<Delta>, usize), Vec<ItemError>> {
        let mut planner = Planner::new(self, source, limits);
        let mut unchanged = 0;
        let mut index = 0;
        let mut listed_groups = HashSet::new();
        let mut listed_eips = HashSet::with_capacity(eips.len());
        // Groups first, so EIPs can join groups the same sync creates; removals of groups last,
        // after their members left.
        for g in groups {
            index += 1;
            if !listed_groups.insert(g.name.clone()) {
                planner.refuse(index, &g.name, "duplicate", "listed twice".to_owned());
                continue;
            }
            match self.groups.get(&g.name) {
                Some(held) if held.spec == g && held.source == source => unchanged += 1,
                _ => planner.op(index, &Op::PutGroup(g), at),
            }
        }
        for e in eips {
            index += 1;
            if !listed_eips.insert(e.address) {
                planner.refuse(
                    index,
                    &e.address.to_string(),
                    "duplicate",
                    "listed twice".to_owned(),
                );
                continue;
            }
            match self.eips.get(&e.address) {
                Some(held) if held.spec == e && held.source == source => unchanged += 1,
                _ => planner.op(index, &Op::PutEip(e), at),
            }
        }
        for held in self.eips.values() {
            if held.source == source && !listed_eips.contains(&held.spec.address) {
                planner.op(0, &Op::RemoveEip(held.spec.address), at);
            }
        }
        for held in self.groups.values() {
            if held.source == source && !listed_groups.contains(&held.spec.name) {
                planner.op(0, &Op::RemoveGroup(held.spec.name.clone()), at);
            }
        }
        planner.finish().map(|d| (d, unchanged))
    }

    /// Makes the planned deltas part of the inventory.
    pub fn commit(&mut self, deltas: &[Delta]) {
        for d in deltas {
            match d {
                Delta::Eip {
                    address,
                    before,
                    after,
                    ..
                } => {
                    if let Some(g) = before.as_ref().and_then(|b| b.spec.group.as_ref())
                        && let Some(n) = self.members.get_mut(g)
                    {
                        *n = n.saturating_sub(1);
                    }
                    match after {
                        Some(a) => {
                            if let Some(g) = &a.spec.group {
                                *self.members.entry(g.clone()).or_default() += 1;
                            }
                            self.eips.insert(*address, a.clone());
                        }
                        None => {
                            self.eips.remove(address);
                        }
                    }
                }
                Delta::Group { name, after, .. } => match after {
                    Some(a) => {
                        self.groups.insert(name.clone(), a.clone());
                    }
                    None => {
                        self.groups.remove(name);
                        self.members.remove(name);
                    }
                },
            }
        }
    }
}

/// An item's index and subject.
type FirstAdd = (usize, String);

/// A batch under planning: the subjects it touched as it leaves them.
struct Planner<'a> {
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
    fn new(inventory: &'a Inventory, source: Source, limits: Limits) -> Self {
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

    fn refuse(&mut self, index: usize, subject: &str, code: &'static str, message: String) {
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

    fn op(&mut self, index: usize, op: &Op, at: i64) {
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
                    let spec = patched(&before.spec, changes);
                    self.put_eip(index, Some(before), spec, at);
                }
            }
            Op::RemoveEip(address) => {
                if let Some(before) = self.existing_eip(index, address) {
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
        let after = Held {
            spec,
            source: self.source,
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
    fn finish(mut self) -> Result<Vec<Delta>, Vec<ItemError>> {
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
        let eips_after = self.inventory.eips.len() as isize
            + self
                .eips
                .iter()
                .map(|(a, after)| {
                    after.is_some() as isize - self.inventory.eips.contains_key(a) as isize
                })
                .sum::<isize>();
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
        let groups_after = self.inventory.groups.len() as isize
            + self
                .groups
                .iter()
                .map(|(n, after)| {
                    after.is_some() as isize - self.inventory.groups.contains_key(n) as isize
                })
                .sum::<isize>();
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

fn apply_change<T: Clone>(field: &mut Option<T>, change: &Change<T>) {
    match change {
        Change::Keep => {}
        Change::Set(v) => *field = Some(v.clone()),
        Change::Clear => *field = None,
    }
}

/// `spec` with `changes` applied; joining a group drops the EIP's own bandwidths (the group's
/// cap applies), as `eip-meter eip set --group` does in the file.
pub fn patched(spec: &EipConfig, changes: &EipChanges) -> EipConfig {
    let mut e = spec.clone();
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
    e
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
    if a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || matches!(a, IpAddr::V4(v4) if v4.is_broadcast())
    {
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
    let n = &g.name;
    let valid_name = !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if !valid_name {
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

/// States counted per EIP state code, for `/metrics`.
pub fn state_index(s: EipState) -> usize {
    EipState::ALL.iter().position(|x| *x == s).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn eip(s: &str, bw: Option<u64>) -> EipConfig {
        EipConfig {
            bandwidth_mbps: bw,
            ..EipConfig::new(ip(s))
        }
    }

    fn group(name: &str, bw: u64) -> GroupConfig {
        GroupConfig {
            name: name.to_owned(),
            bandwidth_mbps: bw,
            inbound_mbps: None,
            outbound_mbps: None,
        }
    }

    const ROOM: Limits = Limits { eips: 4, groups: 2 };

    fn file_inventory() -> Inventory {
        Inventory::new(
            vec![Held {
                spec: group("g1", 300),
                source: Source::File,
            }],
            vec![Held {
                spec: eip("192.0.2.1", Some(10)),
                source: Source::File,
            }],
        )
    }

    #[test]
    fn a_batch_is_planned_in_order_and_committed() {
        let mut inv = file_inventory();
        let ops = vec![
            (Op::PutGroup(group("g2", 100)), None),
            (
                Op::PutEip(EipConfig {
                    group: Some("g2".into()),
                    ..eip("192.0.2.2", None)
                }),
                Some(5),
            ),
            (
                Op::PatchEip(
                    ip("192.0.2.2"),
                    EipChanges {
                        state: Some(EipState::Arrears),
                        ..EipChanges::default()
                    },
                ),
                None,
            ),
        ];
        let deltas = inv.plan(&ops, Source::Api, 9, ROOM).unwrap();
        assert_eq!(deltas.len(), 3);
        assert_eq!(deltas[1].effective_at(), 5);
        assert_eq!(Summary::of(&deltas, 0).added, 2);
        inv.commit(&deltas);
        let e = inv.eip(&ip("192.0.2.2")).unwrap();
        assert_eq!(e.spec.state, EipState::Arrears);
        assert_eq!(e.source, Source::Api);
        assert_eq!(inv.members("g2"), 1);
    }

    #[test]
    fn one_bad_item_refuses_the_batch_and_names_every_problem() {
        let inv = file_inventory();
        let ops = vec![
            (Op::PutEip(eip("192.0.2.9", Some(5))), None),
            (Op::RemoveEip(ip("198.51.100.1")), None),
            (
                Op::PutEip(EipConfig {
                    group: Some("nope".into()),
                    ..eip("192.0.2.3", None)
                }),
                None,
            ),
            (Op::PutEip(eip("::ffff:192.0.2.4", None)), None),
            (Op::PutEip(eip("192.0.2.1", Some(20))), None),
            (Op::RemoveGroup("g1".into()), None),
        ];
        let errors = inv.plan(&ops, Source::Api, 0, ROOM).unwrap_err();
        let codes: Vec<(usize, &str)> = errors.iter().map(|e| (e.index, e.code)).collect();
        assert_eq!(
            codes,
            vec![
                (1, "unknown_eip"),
                (2, "unknown_group"),
                (3, "address_family"),
                (4, "owned_by_file"),
                (5, "owned_by_file"),
            ]
        );
    }

    #[test]
    fn capacity_and_groups_in_use_are_checked_on_the_whole_batch() {
        let mut inv = file_inventory();
        let adds: Vec<(Op, Option<i64>)> = (2..=5)
            .map(|i| (Op::PutEip(eip(&format!("192.0.2.{i}"), None)), None))
            .collect();
        let e = inv.plan(&adds, Source::Api, 0, ROOM).unwrap_err();
        assert_eq!((e[0].index, e[0].code), (0, "capacity"));
        // Room once the batch removes one first.
        let mut ops = vec![(Op::PutGroup(group("g2", 1)), None)];
        ops.extend(adds[..3].iter().cloned());
        let d = inv.plan(&ops, Source::Api, 0, ROOM).unwrap();
        inv.commit(&d);
        let ops = vec![
            (
                Op::PatchEip(
                    ip("192.0.2.2"),
                    EipChanges {
                        group: Change::Set("g2".into()),
                        ..EipChanges::default()
                    },
                ),
                None,
            ),
            (Op::RemoveGroup("g2".into()), None),
        ];
        let e = inv.plan(&ops, Source::Api, 0, ROOM).unwrap_err();
        assert_eq!(e[0].code, "group_in_use");
        let ops = vec![
            (Op::RemoveEip(ip("192.0.2.2")), None),
            (Op::RemoveGroup("g2".into()), None),
        ];
        inv.plan(&ops, Source::Api, 0, ROOM).unwrap();
    }

    #[test]
    fn a_sync_applies_only_the_difference_and_leaves_the_file_alone() {
        let mut inv = file_inventory();
        let first: Vec<EipConfig> = (2..=4)
            .map(|i| eip(&format!("192.0.2.{i}"), Some(i)))
            .collect();
        let (d, unchanged) = inv
            .plan_sync(Source::Api, vec![], first.clone(), 0, ROOM)
            .unwrap();
        assert_eq!((Summary::of(&d, unchanged).added, unchanged), (3, 0));
        inv.commit(&d);
        let mut second = first.clone();
        second[0].bandwidth_mbps = Some(50);
        second.pop();
        let (d, unchanged) = inv.plan_sync(Source::Api, vec![], second, 0, ROOM).unwrap();
        let s = Summary::of(&d, unchanged);
        assert_eq!((s.added, s.changed, s.removed, s.unchanged), (0, 1, 1, 1));
        inv.commit(&d);
        assert!(inv.eip(&ip("192.0.2.1")).is_some(), "file's EIP kept");
        assert_eq!(inv.eip_count(), 3);
        // Naming a file-owned EIP in a sync is refused.
        let e = inv
            .plan_sync(
                Source::Api,
                vec![],
                vec![eip("192.0.2.1", Some(10))],
                0,
                ROOM,
            )
            .unwrap_err();
        assert_eq!(e[0].code, "owned_by_file");
    }

    #[test]
    fn the_file_takes_over_what_it_lists() {
        let mut inv = file_inventory();
        let d = inv
            .plan(
                &[(Op::PutEip(eip("192.0.2.7", Some(1))), None)],
                Source::Api,
                0,
                ROOM,
            )
            .unwrap();
        inv.commit(&d);
        let (d, _) = inv
            .plan_sync(
                Source::File,
                vec![group("g1", 300)],
                vec![eip("192.0.2.1", Some(10)), eip("192.0.2.7", Some(1))],
                0,
                ROOM,
            )
            .unwrap();
        assert_eq!(d.len(), 1, "only the owner changes");
        inv.commit(&d);
        assert_eq!(inv.eip(&ip("192.0.2.7")).unwrap().source, Source::File);
    }

    proptest::proptest! {
        /// Whatever batches are applied (accepted or refused), the incremental member counts
        /// equal a recount, and syncing the API's own subjects back changes nothing.
        #[test]
        fn incremental_state_matches_a_recount(
            batches in proptest::collection::vec(
                proptest::collection::vec((0u8..6, 0u8..8, 0u8..3, 0u8..4), 1..6),
                1..12,
            )
        ) {
            let mut inv = file_inventory();
            let limits = Limits { eips: 6, groups: 3 };
            for batch in batches {
                let ops: Vec<(Op, Option<i64>)> = batch
                    .into_iter()
                    .map(|(kind, n, g, bw)| {
                        let address = ip(&format!("192.0.2.{n}"));
                        let group = format!("g{g}");
                        let op = match kind {
                            0 => Op::PutEip(eip(&address.to_string(), (bw > 0).then_some(u64::from(bw)))),
                            1 => Op::PatchEip(address, EipChanges {
                                group: if bw == 0 { Change::Clear } else { Change::Set(group) },
                                ..EipChanges::default()
                            }),
                            2 => Op::RemoveEip(address),
                            3 => Op::PutGroup(self::group(&group, u64::from(bw) + 1)),
                            4 => Op::RemoveGroup(group),
                            _ => Op::PatchEip(address, EipChanges {
                                state: Some(EipState::ALL[usize::from(bw)]),
                                ..EipChanges::default()
                            }),
                        };
                        (op, None)
                    })
                    .collect();
                if let Ok(deltas) = inv.plan(&ops, Source::Api, 0, limits) {
                    inv.commit(&deltas);
                }
                proptest::prop_assert!(inv.eip_count() <= 6);
                for g in inv.groups() {
                    let recount = inv
                        .eips()
                        .filter(|e| e.spec.group.as_deref() == Some(g.spec.name.as_str()))
                        .count();
                    proptest::prop_assert_eq!(inv.members(&g.spec.name), recount);
                }
                for e in inv.eips() {
                    if let Some(g) = &e.spec.group {
                        proptest::prop_assert!(inv.group(g).is_some(), "member of a missing group");
                    }
                }
                let own = |s: Source| {
                    (
                        inv.groups().filter(|g| g.source == s).map(|g| g.spec.clone()).collect(),
                        inv.eips().filter(|e| e.source == s).map(|e| e.spec.clone()).collect(),
                    )
                };
                let (groups, eips) = own(Source::Api);
                let (again, _) = inv.plan_sync(Source::Api, groups, eips, 0, limits).unwrap();
                proptest::prop_assert!(again.is_empty(), "{again:?}");
            }
        }
    }

    #[test]
    fn pages_walk_every_eip_once_in_address_order() {
        let eips = ["2001:db8::1", "192.0.2.3", "192.0.2.1", "198.51.100.1"]
            .iter()
            .map(|s| Held {
                spec: eip(s, None),
                source: Source::Api,
            })
            .collect();
        let inv = Inventory::new(vec![], eips);
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = inv.page(after, 3);
            if page.is_empty() {
                break;
            }
            after = Some(page.last().unwrap().spec.address);
            seen.extend(page.iter().map(|e| e.spec.address.to_string()));
        }
        assert_eq!(
            seen,
            ["192.0.2.1", "192.0.2.3", "198.51.100.1", "2001:db8::1"]
        );
    }
}
