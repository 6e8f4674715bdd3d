use std::path::Path;

use metering_common::{DirectionCounters, TrafficCounters};

use super::*;

use crate::{billing::series::SeriesOptions, sampling::Sampler};

const T0: i64 = 1_793_462_400; // 2026-11-01T00:00:00+08:00

fn counters(i: u64, o: u64) -> TrafficCounters {
    TrafficCounters {
        inbound: DirectionCounters {
            bytes: i,
            packets: 0,
        },
        outbound: DirectionCounters {
            bytes: o,
            packets: 0,
        },
    }
}

fn sampler(path: &Path) -> Sampler {
    let cal = Calendar::new("Asia/Shanghai", 300).unwrap();
    Sampler::open(
        cal,
        SeriesOptions::default(),
        "r1".into(),
        Store::open(path).unwrap(),
    )
    .unwrap()
}

#[test]
fn a_reopened_store_continues_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let eip: IpAddr = "203.0.113.10".parse().unwrap();
    {
        let mut s = sampler(&db);
        s.eip_added(eip, T0);
        s.round(T0 + 300, &[(eip, counters(1000, 10))]).unwrap();
        s.round(T0 + 600, &[(eip, counters(3000, 30))]).unwrap();
        // A replayed round is a no-op.
        assert_eq!(
            s.round(T0 + 600, &[(eip, counters(3000, 30))])
                .unwrap()
                .samples,
            0
        );
    } // "crash": dropped without checkpoint_all
    let mut s = sampler(&db);
    // Down for two intervals; the kernel kept counting.
    s.round(T0 + 1500, &[(eip, counters(9000, 90))]).unwrap();
    let (n, i, o) = s.store().sample_totals(eip).unwrap();
    assert_eq!((n, i, o), (5, 9000, 90));
    let mut csv = Vec::new();
    assert_eq!(s.store().export_samples(&mut csv).unwrap(), 5);
    assert!(String::from_utf8(csv).unwrap().starts_with("eip,interval_start,bytes_in,bytes_out,host,state\n203.0.113.10,2026-10-31T16:00:00+00:00,1000,10,r1,partial\n"));
}

#[test]
fn files_of_an_uncommitted_round_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let eip: IpAddr = "203.0.113.10".parse().unwrap();
    {
        let mut s = sampler(&db);
        s.eip_added(eip, T0);
        s.round(T0 + 300, &[(eip, counters(1000, 10))]).unwrap();
    }
    // A crash between writing a round's files and committing it leaves these behind.
    let rounds = dir.path().join("rounds");
    std::fs::write(rounds.join("000000000007.samples"), b"junk").unwrap();
    std::fs::write(rounds.join("000000000007.snapshot"), b"junk").unwrap();
    // And a crash while a round spooled its closed figures, this one.
    std::fs::write(rounds.join("figures.spool"), b"junk").unwrap();
    let s = sampler(&db);
    assert!(!rounds.join("000000000007.samples").exists());
    assert!(!rounds.join("000000000007.snapshot").exists());
    assert!(!rounds.join("figures.spool").exists());
    assert_eq!(s.store().sample_totals(eip).unwrap(), (1, 1000, 10));
}

#[test]
fn a_restart_after_a_clean_shutdown_never_reuses_the_committed_snapshot_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let eip: IpAddr = "203.0.113.10".parse().unwrap();
    {
        let mut s = sampler(&db);
        s.eip_added(eip, T0);
        s.round(T0 + 300, &[(eip, counters(1000, 10))]).unwrap();
        s.checkpoint_all().unwrap(); // a commit with a snapshot and no samples
    }
    let store = Store::open(&db).unwrap();
    let committed: i64 = store
        .conn
        .query_row("SELECT seq FROM snapshot WHERE id = 1", [], |r| r.get(0))
        .unwrap();
    // The next round writes its files before committing: they must not be the committed ones.
    assert!(
        store.next_seq > committed,
        "next {} <= committed {committed}",
        store.next_seq
    );
    assert!(store.snapshot_file(committed).exists());
}

#[test]
fn removing_an_eip_forgets_its_checkpoint_in_the_same_commit() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let (a, b): (IpAddr, IpAddr) = (
        "203.0.113.10".parse().unwrap(),
        "203.0.113.11".parse().unwrap(),
    );
    let mut s = sampler(&db);
    s.eip_added(a, T0);
    s.eip_added(b, T0);
    s.round(T0 + 300, &[(a, counters(10, 1)), (b, counters(20, 2))])
        .unwrap();
    s.eips_removed(&[(b, counters(50, 5))], T0 + 400).unwrap();
    assert_eq!(s.store().checkpoint_seq.len(), 1);
    assert_eq!(s.store().sample_totals(b).unwrap().1, 50);
    drop(s);
    let reopened = sampler(&db);
    assert_eq!(reopened.store().load_snapshots().unwrap().len(), 1);
    // Forgotten in the store too: its checkpoint (in the first round's range) is not restored.
    assert_eq!(reopened.store().checkpoint_seq.len(), 1);
    assert_eq!(reopened.eips().map(|v| v.eip).collect::<Vec<_>>(), [a]);
}

fn checkpoint_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("rounds"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".checkpoints"))
        .collect();
    names.sort();
    names
}

#[test]
fn checkpoints_are_restored_from_files_and_unused_files_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let (a, b): (IpAddr, IpAddr) = (
        "203.0.113.10".parse().unwrap(),
        "2001:db8::10".parse().unwrap(),
    );
    {
        let mut s = sampler(&db);
        s.eip_added(a, T0);
        s.eip_added(b, T0);
        // New series are checkpointed in their first round.
        s.round(T0 + 300, &[(a, counters(10, 1)), (b, counters(20, 2))])
            .unwrap();
        assert_eq!(checkpoint_files(dir.path()), ["000000000001.checkpoints"]);
        s.round(T0 + 600, &[(a, counters(30, 3)), (b, counters(60, 6))])
            .unwrap();
        // Both EIPs' latest checkpoints move to the shutdown's file; the first is unused.
        s.checkpoint_all().unwrap();
        assert_eq!(checkpoint_files(dir.path()), ["000000000003.checkpoints"]);
    }
    std::fs::write(
        dir.path().join("rounds/000000000009.checkpoints"),
        b"uncommitted",
    )
    .unwrap();
    let store = Store::open(&db).unwrap();
    assert_eq!(checkpoint_files(dir.path()), ["000000000003.checkpoints"]);
    let cal = Calendar::new("Asia/Shanghai", 300).unwrap();
    let mut series = store.load_series(cal).unwrap();
    series.sort_by_key(|(eip, _)| *eip);
    let restored: Vec<(IpAddr, Option<i64>)> = series
        .iter()
        .map(|(eip, s)| (*eip, s.last_start()))
        .collect();
    assert_eq!(restored, [(a, Some(T0 + 300)), (b, Some(T0 + 300))]);
}

#[test]
fn json_checkpoint_rows_of_the_earlier_format_are_read_then_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let eip: IpAddr = "203.0.113.10".parse().unwrap();
    {
        let mut s = sampler(&db);
        s.eip_added(eip, T0);
        s.round(T0 + 300, &[(eip, counters(10, 1))]).unwrap();
    }
    // Rewrite the store as the earlier format held it: the checkpoint as a JSON row.
    let cal = Calendar::new("Asia/Shanghai", 300).unwrap();
    let store = Store::open(&db).unwrap();
    let (_, series) = store.load_series(cal).unwrap().pop().unwrap();
    let json = serde_json::to_string(&series).unwrap();
    store
        .conn
        .execute_batch(
            "DELETE FROM checkpoint_refs; DELETE FROM checkpoint_ranges;
             DELETE FROM checkpoint_files;",
        )
        .unwrap();
    store
        .conn
        .execute(
            "INSERT INTO checkpoints (eip, series) VALUES (1, ?1)",
            [json],
        )
        .unwrap();
    drop(store);

    let mut s = sampler(&db);
    s.round(T0 + 600, &[(eip, counters(30, 3))]).unwrap();
    // The round continued the JSON-restored series (one more sample, none twice)...
    assert_eq!(s.store().sample_totals(eip).unwrap(), (2, 30, 3));
    s.checkpoint_all().unwrap();
    // ...and its next checkpoint replaced the row.
    let rows: i64 = s
        .store()
        .conn
        .query_row("SELECT COUNT(*) FROM checkpoints", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0);
    let (_, restored) = s.store().load_series(cal).unwrap().pop().unwrap();
    assert_eq!(restored.last_start(), Some(T0 + 300));
}

#[test]
fn settings_cannot_change_under_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    drop(sampler(&db));
    let cal = Calendar::new("UTC", 300).unwrap();
    let err = Sampler::open(
        cal,
        SeriesOptions::default(),
        "r1".into(),
        Store::open(&db).unwrap(),
    )
    .err()
    .unwrap();
    assert!(
        err.to_string()
            .contains("timezone = Asia/Shanghai, the config says UTC"),
        "{err}"
    );
}

#[test]
fn shared_bandwidths_survive_a_restart_and_their_closed_days_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let (a, b): (IpAddr, IpAddr) = (
        "203.0.113.1".parse().unwrap(),
        "203.0.113.2".parse().unwrap(),
    );
    let configure = |s: &mut Sampler| {
        s.configure_groups(
            &[("shared".into(), Some(300))],
            &[(a, "shared".into()), (b, "shared".into())],
            T0,
        )
    };
    let open_day = |s: &Sampler| {
        let g = s.groups().iter().next().unwrap();
        g.series.open_figures().day.unwrap().1
    };
    let before = {
        let mut s = sampler(&db);
        configure(&mut s);
        s.eip_added(a, T0);
        s.eip_added(b, T0);
        s.round(T0 + 300, &[(a, counters(100, 1)), (b, counters(50, 2))])
            .unwrap();
        s.round(T0 + 600, &[(a, counters(300, 1)), (b, counters(150, 2))])
            .unwrap();
        open_day(&s)
    }; // "crash"
    assert_eq!(
        (before.samples, before.inbound_bytes, before.outbound_bytes),
        (2, 450, 3)
    );
    let mut s = sampler(&db);
    assert_eq!(open_day(&s), before, "restored exactly");
    configure(&mut s);
    // The next day: the group's first day closes and is stored with the round.
    let next_day = T0 + 86_400;
    s.round(
        next_day + 300,
        &[(a, counters(400, 1)), (b, counters(150, 2))],
    )
    .unwrap();
    let days = s.store().closed_days("2026-11-01").unwrap();
    let group_day = days
        .iter()
        .find(|f| f.subject == Subject::Group("shared".into()))
        .expect("the group's day is stored");
    assert_eq!(group_day.figures.inbound_bytes, 450);
    assert_eq!(group_day.figures.max_bandwidth_mbps, Some(300));
    assert!(days.iter().any(|f| f.subject == Subject::Eip(a)));
}

#[test]
fn only_shipped_rounds_past_the_retention_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let eip: IpAddr = "203.0.113.10".parse().unwrap();
    let mut s = sampler(&db);
    s.eip_added(eip, T0);
    for k in 1..=6u64 {
        s.round(T0 + 300 * k as i64, &[(eip, counters(1000 * k, 10 * k))])
            .unwrap();
    }
    let store = s.store();
    let seqs: Vec<i64> = store
        .rounds_after(0, 100)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs.len(), 6);
    assert_eq!(store.unshipped(0).unwrap(), (6, Some(T0 + 300)));
    // The billing store holds the first four rounds.
    store.set_shipped(seqs[3], T0 + 2000).unwrap();
    assert_eq!(store.shipped().unwrap(), Some((seqs[3], T0 + 2000)));
    assert_eq!(store.unshipped(seqs[3]).unwrap(), (2, Some(T0 + 1500)));
    let sample_bytes = |st: &Store| -> i64 {
        st.conn
            .query_row("SELECT COALESCE(SUM(bytes), 0) FROM rounds", [], |r| {
                r.get(0)
            })
            .unwrap()
    };
    let before = sample_bytes(store);

    // From another connection, as the shipper does. Rounds ending before T0 + 1000 and shipped:
    // the first three; the fifth and sixth are old enough too but not shipped: kept.
    let mut pruner = Store::open_reader(&db).unwrap();
    assert_eq!(pruner.prune_shipped(seqs[3], T0 + 1000).unwrap(), 3);
    assert_eq!(pruner.prune_shipped(seqs[3], T0 + 100_000).unwrap(), 1);
    assert_eq!(pruner.prune_shipped(seqs[3], T0 + 100_000).unwrap(), 0);
    let left: Vec<i64> = store
        .rounds_after(0, 100)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(left, &seqs[4..]);
    for seq in &seqs[..4] {
        assert!(
            !store.samples_file(*seq).exists(),
            "round {seq} left a file"
        );
    }
    for seq in &seqs[4..] {
        assert!(store.samples_file(*seq).exists());
    }
    // What `disk_bytes` counts for sample files shrinks for the daemon's own connection too.
    assert_eq!(sample_bytes(store), before * 2 / 6);
}

#[test]
fn a_reader_kept_open_sees_eips_added_after_it_opened() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let a: IpAddr = "203.0.113.10".parse().unwrap();
    let b: IpAddr = "203.0.113.11".parse().unwrap();
    let mut s = sampler(&db);
    s.eip_added(a, T0);
    s.round(T0 + 300, &[(a, counters(100, 1))]).unwrap();
    let mut reader = Store::open_reader(&db).unwrap();
    s.eip_added(b, T0 + 300);
    s.round(T0 + 600, &[(a, counters(200, 2)), (b, counters(50, 5))])
        .unwrap();
    let last = reader.rounds_after(0, 10).unwrap().pop().unwrap();
    assert!(
        reader.round_samples(&last).is_err(),
        "b is unknown until reloaded"
    );
    reader.load_addresses().unwrap();
    let eips: Vec<IpAddr> = reader
        .round_samples(&last)
        .unwrap()
        .iter()
        .map(|(e, _)| *e)
        .collect();
    assert_eq!(eips, [a, b]);
}

/// 40 EIPs in one round: their registration is one file and their checkpoints one range.
fn many(n: u8) -> Vec<IpAddr> {
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                IpAddr::from([203, 0, 113, i])
            } else {
                format!("2001:db8::{i:x}").parse().unwrap()
            }
        })
        .collect()
}

#[test]
fn many_new_eips_are_registered_and_checkpointed_in_files_and_survive_removal_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let eips = many(40);
    let readings = |k: u64| -> Vec<(IpAddr, TrafficCounters)> {
        eips.iter()
            .enumerate()
            .map(|(i, e)| (*e, counters(k * (i as u64 + 1), k)))
            .collect()
    };
    let gone = eips[17];
    {
        let mut s = sampler(&db);
        for e in &eips {
            s.eip_added(*e, T0 + 10);
        }
        s.round(T0 + 300, &readings(100)).unwrap();
        let store = s.store();
        let (rows, ranges): (i64, i64) = store
            .conn
            .query_row(
                "SELECT (SELECT COUNT(*) FROM checkpoint_refs) + (SELECT COUNT(*) FROM eips)
                      + (SELECT COUNT(*) FROM presence),
                        (SELECT COUNT(*) FROM checkpoint_ranges)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((rows, ranges), (0, 1), "no row per EIP, one range");
        let mut opened = store.presence_changes(0, 1).unwrap();
        opened.sort_by_key(|p| p.eip);
        let mut expected: Vec<PresenceRange> = eips
            .iter()
            .map(|e| PresenceRange {
                eip: *e,
                from: T0,
                to: None,
            })
            .collect();
        expected.sort_by_key(|p| p.eip);
        assert_eq!(opened, expected);
        s.eips_removed(&[(gone, counters(100 * 18 + 7, 101))], T0 + 400)
            .unwrap();
        // The removal closes the range its registration file opened, as a row.
        assert_eq!(
            s.store().presence_changes(1, 2).unwrap(),
            [PresenceRange {
                eip: gone,
                from: T0,
                to: Some(T0 + 600),
            }]
        );
        // And it stands so when read from the start.
        let all = s.store().presence_changes(0, 2).unwrap();
        assert_eq!(all.len(), 40);
        assert_eq!(
            all.iter().find(|p| p.eip == gone).unwrap().to,
            Some(T0 + 600)
        );
    }
    let mut s = sampler(&db);
    // Everyone but the removed EIP is restored, from the range's checkpoints.
    let mut restored: Vec<IpAddr> = s.eips().map(|v| v.eip).collect();
    restored.sort();
    let mut expected: Vec<IpAddr> = eips.iter().copied().filter(|e| *e != gone).collect();
    expected.sort();
    assert_eq!(restored, expected);
    assert!(s.eips().all(|v| v.series.last_start() == Some(T0)));
    // The shutdown checkpoint moves every checkpoint to its own range: the first file goes.
    s.checkpoint_all().unwrap();
    assert_eq!(checkpoint_files(dir.path()), ["000000000003.checkpoints"]);
    let ranges: Vec<(i64, u32, u32)> = {
        let mut stmt = s
            .store()
            .conn
            .prepare("SELECT seq, first_id, last_id FROM checkpoint_ranges ORDER BY first_id")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(
        ranges,
        [(3, 1, 17), (3, 19, 40)],
        "the removed id 18 splits it"
    );
    drop(s);
    let s = sampler(&db);
    assert_eq!(s.eips().count(), 39);
    assert_eq!(
        s.store().sample_totals(gone).unwrap(),
        (2, 100 * 18 + 7, 101),
        "its last sample is kept"
    );
}

#[test]
fn closed_figures_of_many_eips_are_read_back_from_their_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let eips = many(20);
    let mut s = sampler(&db);
    for e in &eips {
        s.eip_added(*e, T0);
    }
    let at = |k: u64| -> Vec<(IpAddr, TrafficCounters)> {
        eips.iter()
            .enumerate()
            .map(|(i, e)| (*e, counters(k * 1000 * (i as u64 + 1), k)))
            .collect()
    };
    s.round(T0 + 300, &at(1)).unwrap();
    s.round(T0 + 600, &at(2)).unwrap();
    // The next day's first round (nothing more sent) closes November 1 for all 20.
    s.round(T0 + 86_400 + 300, &at(2)).unwrap();
    let days = s.store().closed_days("2026-11-01").unwrap();
    assert_eq!(days.len(), 20);
    for (i, e) in eips.iter().enumerate() {
        let day = days
            .iter()
            .find(|f| f.subject == Subject::Eip(*e))
            .expect("every EIP's day");
        assert_eq!(day.period, "2026-11-01");
        assert_eq!(day.figures.inbound_bytes, 2000 * (i as u64 + 1));
    }
    assert!(s.store().closed_days("2026-11-02").unwrap().is_empty());
    assert!(s.store().closed_months("").unwrap().is_empty());
}
