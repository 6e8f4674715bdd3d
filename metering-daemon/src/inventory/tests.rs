//! The inventory's planning: batches, syncs, ownership, capacity, paging, and a property
//! test of the incremental state against a recount.

use super::model::*;
use crate::rating::LifecycleRules;
use crate::{
    config::{EipConfig, EipState, GroupConfig},
    edit::{Change, EipChanges},
};
use std::net::IpAddr;

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
        plan: None,
        name: name.to_owned(),
        bandwidth_mbps: bw,
        inbound_mbps: None,
        outbound_mbps: None,
    }
}

fn room() -> Limits {
    Limits {
        eips: 4,
        groups: 2,
        lifecycle: LifecycleRules::in_zone(chrono_tz::Asia::Shanghai),
    }
}

fn file_inventory() -> Inventory {
    Inventory::new(
        vec![Held {
            spec: group("g1", 300),
            source: Source::File,
            since: 0,
        }],
        vec![Held {
            spec: eip("192.0.2.1", Some(10)),
            source: Source::File,
            since: 0,
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
    let deltas = inv.plan(&ops, Source::Api, 9, room()).unwrap();
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
        (Op::RemoveEip(ip("198.51.100.1"), false), None),
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
    let errors = inv.plan(&ops, Source::Api, 0, room()).unwrap_err();
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
    let e = inv.plan(&adds, Source::Api, 0, room()).unwrap_err();
    assert_eq!((e[0].index, e[0].code), (0, "capacity"));
    // Room once the batch removes one first.
    let mut ops = vec![(Op::PutGroup(group("g2", 1)), None)];
    ops.extend(adds[..3].iter().cloned());
    let d = inv.plan(&ops, Source::Api, 0, room()).unwrap();
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
    let e = inv.plan(&ops, Source::Api, 0, room()).unwrap_err();
    assert_eq!(e[0].code, "group_in_use");
    let ops = vec![
        (Op::RemoveEip(ip("192.0.2.2"), false), None),
        (Op::RemoveGroup("g2".into()), None),
    ];
    inv.plan(&ops, Source::Api, 0, room()).unwrap();
}

#[test]
fn a_sync_applies_only_the_difference_and_leaves_the_file_alone() {
    let mut inv = file_inventory();
    let first: Vec<EipConfig> = (2..=4)
        .map(|i| eip(&format!("192.0.2.{i}"), Some(i)))
        .collect();
    let (d, unchanged) = inv
        .plan_sync(Source::Api, vec![], first.clone(), 0, room())
        .unwrap();
    assert_eq!((Summary::of(&d, unchanged).added, unchanged), (3, 0));
    inv.commit(&d);
    let mut second = first.clone();
    second[0].bandwidth_mbps = Some(50);
    second.pop();
    let (d, unchanged) = inv
        .plan_sync(Source::Api, vec![], second, 0, room())
        .unwrap();
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
            room(),
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
            room(),
        )
        .unwrap();
    inv.commit(&d);
    let (d, _) = inv
        .plan_sync(
            Source::File,
            vec![group("g1", 300)],
            vec![eip("192.0.2.1", Some(10)), eip("192.0.2.7", Some(1))],
            0,
            room(),
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
        let limits = Limits {
            eips: 6,
            groups: 3,
            lifecycle: LifecycleRules::in_zone(chrono_tz::Asia::Shanghai),
        };
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
                        2 => Op::RemoveEip(address, false),
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
            since: 0,
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

fn package(start: i64, months: u32) -> EipConfig {
    EipConfig {
        plan: Some(crate::billing::plans::Plan::Monthly { start, months }),
        ..eip("192.0.2.5", None)
    }
}

#[test]
fn a_package_expires_renews_and_is_released_at_its_seconds() {
    let rules = room().lifecycle;
    let start = 1_790_000_000; // 2026-09-21T22:13:20+08:00
    let expiry = rules.expiry(start, 1).unwrap();
    let mut inv = Inventory::new(vec![], vec![]).with_lifecycle(rules);
    let d = inv
        .plan(
            &[(Op::PutEip(package(start, 1)), None)],
            Source::Api,
            start,
            room(),
        )
        .unwrap();
    inv.commit(&d);
    assert_eq!(inv.next_due(), Some(expiry));
    assert!(inv.due(expiry - 1, 10).is_empty());
    // Removing it before expiry is refused, unless forced.
    let e = inv
        .plan(
            &[(Op::RemoveEip(ip("192.0.2.5"), false), None)],
            Source::Api,
            expiry - 5,
            room(),
        )
        .unwrap_err();
    assert_eq!(e[0].code, "package_not_expired");
    inv.plan(
        &[(Op::RemoveEip(ip("192.0.2.5"), true), None)],
        Source::Api,
        expiry - 5,
        room(),
    )
    .unwrap();
    // At its second: expired, effective then; released after the retention.
    let due = inv.due(expiry + 3, 10);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].0, crate::rating::Transition::Expire);
    assert_eq!(due[0].1.effective_at(), expiry);
    inv.commit(&[due[0].1.clone()]);
    assert_eq!(
        inv.eip(&ip("192.0.2.5")).unwrap().spec.state,
        EipState::Expired
    );
    assert_eq!(inv.next_due(), Some(expiry + rules.retention_seconds));
    // Renewed by a month before release: active at once, due again a month on.
    let renew = EipChanges {
        renew_months: Some(1),
        ..EipChanges::default()
    };
    let d = inv
        .plan(
            &[(Op::PatchEip(ip("192.0.2.5"), renew), None)],
            Source::Api,
            expiry + 60,
            room(),
        )
        .unwrap();
    inv.commit(&d);
    let held = inv.eip(&ip("192.0.2.5")).unwrap();
    assert_eq!(
        (held.spec.state, held.since),
        (EipState::Active, expiry + 60)
    );
    assert_eq!(inv.next_due(), rules.expiry(start, 2));
    // A package never converts back.
    let back = EipChanges {
        plan: Some(crate::billing::plans::Plan::Hourly),
        ..EipChanges::default()
    };
    let e = inv
        .plan(
            &[(Op::PatchEip(ip("192.0.2.5"), back), None)],
            Source::Api,
            expiry + 90,
            room(),
        )
        .unwrap_err();
    assert_eq!(e[0].code, "plan_conversion");
}

#[test]
fn arrears_release_after_retention_and_hourly_converts_by_renewal() {
    let rules = room().lifecycle;
    let mut inv = Inventory::new(vec![], vec![]).with_lifecycle(rules);
    let hourly = EipConfig {
        plan: Some(crate::billing::plans::Plan::Hourly),
        ..eip("192.0.2.6", Some(5))
    };
    let d = inv
        .plan(&[(Op::PutEip(hourly), None)], Source::Api, 100, room())
        .unwrap();
    inv.commit(&d);
    assert_eq!(inv.next_due(), None);
    let arrears = EipChanges {
        state: Some(EipState::Arrears),
        ..EipChanges::default()
    };
    let d = inv
        .plan(
            &[(Op::PatchEip(ip("192.0.2.6"), arrears), Some(500))],
            Source::Api,
            600,
            room(),
        )
        .unwrap();
    inv.commit(&d);
    assert_eq!(inv.next_due(), Some(500 + rules.retention_seconds));
    let due = inv.due(i64::MAX, 10);
    assert_eq!(due[0].0, crate::rating::Transition::Release);
    // Paid and converted to a 3-month package from now.
    let renew = EipChanges {
        state: Some(EipState::Active),
        renew_months: Some(3),
        ..EipChanges::default()
    };
    let d = inv
        .plan(
            &[(Op::PatchEip(ip("192.0.2.6"), renew), None)],
            Source::Api,
            700,
            room(),
        )
        .unwrap();
    inv.commit(&d);
    assert_eq!(
        inv.eip(&ip("192.0.2.6")).unwrap().spec.plan,
        Some(crate::billing::plans::Plan::Monthly {
            start: 700,
            months: 3
        })
    );
    assert_eq!(inv.next_due(), rules.expiry(700, 3));
}

#[test]
fn a_package_past_its_expiry_stays_expired_whatever_a_change_says() {
    let rules = room().lifecycle;
    let start = 1_790_000_000;
    let expiry = rules.expiry(start, 1).unwrap();
    let inv = Inventory::new(vec![], vec![]).with_lifecycle(rules);
    let d = inv
        .plan(
            &[(Op::PutEip(package(start, 1)), None)],
            Source::File,
            expiry + 100,
            room(),
        )
        .unwrap();
    let Delta::Eip { after: Some(a), .. } = &d[0] else {
        panic!("{d:?}")
    };
    assert_eq!((a.spec.state, a.since), (EipState::Expired, expiry));
}
