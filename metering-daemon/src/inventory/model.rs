//! The inventory the daemon holds: every EIP and shared bandwidth with the source that owns it,
//! the changes asked of it and the deltas they make, and the lifecycle's due queue (pure: no
//! kernel, no store, no clock). Planning a batch is `plan.rs`.
//!
//! Ownership: the config file owns the subjects it lists, the API the ones it created. The API
//! cannot change or remove a file-owned subject (`owned_by_file`); a file that lists a subject
//! the API created takes it over at the next reload or start. A batch is planned as a whole
//! against the inventory as the batch's earlier changes leave it: every item is checked, and
//! one bad item refuses the batch (nothing is applied).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
    ops::Bound,
};

use super::plan::Planner;
use crate::{
    config::{EipConfig, EipState, GroupConfig},
    edit::{EipChanges, GroupChanges},
    rating::lifecycle::{self, LifecycleRules, Transition},
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

/// A subject, its owner, and since when (UNIX seconds, effective) it is in its current state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held<T> {
    pub spec: T,
    pub source: Source,
    pub since: i64,
}

/// One change to make, as a client asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create the EIP, or replace everything about it.
    PutEip(EipConfig),
    /// Change some fields of an existing EIP.
    PatchEip(IpAddr, EipChanges),
    /// Remove; `true`: even a monthly package before its expiry (an operator's override).
    RemoveEip(IpAddr, bool),
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
            Op::PatchEip(a, _) | Op::RemoveEip(a, _) => a.to_string(),
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

/// What a batch is checked against: room in the kernel maps, and the lifecycle (when a
/// package expires, for removals before it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub eips: u32,
    pub groups: u32,
    pub lifecycle: LifecycleRules,
}

/// Every EIP and group with its owner.
#[derive(Debug, Default)]
pub struct Inventory {
    pub(super) eips: BTreeMap<IpAddr, Held<EipConfig>>,
    pub(super) groups: BTreeMap<String, Held<GroupConfig>>,
    /// Members of each group.
    members: HashMap<String, usize>,
    /// The next lifecycle transition of every EIP that has one, by due time.
    due: BTreeSet<(i64, IpAddr)>,
    due_of: HashMap<IpAddr, (i64, Transition)>,
    rules: Option<LifecycleRules>,
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

    /// Follows every EIP's lifecycle under `rules` from now on (see [`Inventory::due`]).
    pub fn with_lifecycle(mut self, rules: LifecycleRules) -> Self {
        self.set_lifecycle(rules);
        self
    }

    /// New lifecycle periods (a reload): every EIP's next transition again.
    pub fn set_lifecycle(&mut self, rules: LifecycleRules) {
        self.rules = Some(rules);
        self.due.clear();
        self.due_of.clear();
        let all: Vec<IpAddr> = self.eips.keys().copied().collect();
        for a in all {
            self.schedule(a);
        }
    }

    fn schedule(&mut self, address: IpAddr) {
        if let Some((at, _)) = self.due_of.remove(&address) {
            self.due.remove(&(at, address));
        }
        let (Some(rules), Some(held)) = (&self.rules, self.eips.get(&address)) else {
            return;
        };
        if let Some((at, t)) = lifecycle::next(&held.spec, held.since, rules) {
            self.due.insert((at, address));
            self.due_of.insert(address, (at, t));
        }
    }

    /// When the next lifecycle transition is due, if any.
    pub fn next_due(&self) -> Option<i64> {
        self.due.first().map(|&(at, _)| at)
    }

    /// The transitions due at or before `now`, each as its delta (effective when it was due),
    /// oldest first, at most `limit`. Not applied: commit them.
    pub fn due(&self, now: i64, limit: usize) -> Vec<(Transition, Delta)> {
        self.due
            .iter()
            .take_while(|&&(at, _)| at <= now)
            .take(limit)
            .filter_map(|&(at, address)| {
                let (_, t) = self.due_of.get(&address)?;
                let before = self.eips.get(&address)?.clone();
                let after = t.state().map(|state| Held {
                    spec: EipConfig {
                        state,
                        ..before.spec.clone()
                    },
                    source: before.source,
                    since: at,
                });
                Some((
                    *t,
                    Delta::Eip {
                        address,
                        before: Some(before),
                        after,
                        effective_at: at,
                    },
                ))
            })
            .collect()
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
                planner.op(0, &Op::RemoveEip(held.spec.address, false), at);
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
                    self.schedule(*address);
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

/// States counted per EIP state code, for `/metrics`.
pub fn state_index(s: EipState) -> usize {
    EipState::ALL.iter().position(|x| *x == s).unwrap_or(0)
}
