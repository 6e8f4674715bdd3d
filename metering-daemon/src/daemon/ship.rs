//! Shipping committed rounds to the billing store, on a task of its own: oldest first, in
//! batches, each acknowledged only by a committed PostgreSQL transaction that also moves this
//! host's watermark. The local store is the durable spool: while the billing store is down,
//! unreachable or refusing, the daemon meters, samples and commits as ever, the backlog grows,
//! and nothing unshipped is ever removed; when it is back, the backlog ships oldest first.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::Notify;
use tracing::{debug, error, info, warn};

use super::now_seconds;
use crate::{
    config::BillingStoreConfig,
    store::{
        Store, StoreError,
        postgres::{
            self, Db, PgError,
            batch::{self, BATCH_ROUNDS, BATCH_ROWS},
            ship::{self, HostIdentity},
        },
    },
};

/// Longest wait between attempts while the billing store cannot be reached.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a persisting failure is logged again, with the backlog.
const REMIND_EVERY: Duration = Duration::from_secs(600);
/// How often shipped rounds past the local retention are removed.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Where the daemon keeps its [`ShipStatus`] for `eip-meter report`.
pub fn shipping_file(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("shipping.json")
}

pub use crate::exposition::state::{SharedShipping as SharedStatus, Shipping as ShipStatus};

/// Starts the shipper. `wake` is notified after every committed round.
pub fn spawn(
    config: BillingStoreConfig,
    store_path: PathBuf,
    status_path: PathBuf,
    me: HostIdentity,
    wake: Arc<Notify>,
    status: SharedStatus,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut shipper = Shipper {
            config,
            store_path,
            status_path,
            me,
            status,
            db: None,
            watermark: None,
            backoff: Duration::from_secs(1),
            last_logged_error: None,
            last_reminder: None,
            last_prune: None,
            reader: None,
        };
        loop {
            match shipper.step().await {
                // More to ship: go on at once.
                Ok(true) => continue,
                Ok(false) => {
                    shipper.prune().await;
                    tokio::select! {
                        () = wake.notified() => {}
                        () = tokio::time::sleep(Duration::from_secs(30)) => {}
                    }
                }
                Err(e) => {
                    shipper.failed(&e);
                    // Rounds committed while waiting still show in the backlog at once.
                    let retry = tokio::time::Instant::now() + shipper.backoff;
                    loop {
                        tokio::select! {
                            () = tokio::time::sleep_until(retry) => break,
                            () = wake.notified() => {
                                if let Err(e) = shipper.refresh_backlog().await {
                                    debug!(error = %e, "billing store: backlog not counted");
                                }
                            }
                        }
                    }
                    shipper.backoff = (shipper.backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    })
}

struct Shipper {
    config: BillingStoreConfig,
    store_path: PathBuf,
    status_path: PathBuf,
    me: HostIdentity,
    status: SharedStatus,
    db: Option<Db>,
    /// The commit the billing store holds this host's rounds up to.
    watermark: Option<i64>,
    backoff: Duration,
    last_logged_error: Option<String>,
    last_reminder: Option<Instant>,
    last_prune: Option<Instant>,
    /// The shipper's connection to the local store.
    reader: Option<Store>,
}

impl Shipper {
    /// Ships one batch; `Ok(true)` if there may be more.
    async fn step(&mut self) -> Result<bool, PgError> {
        if self.db.is_none() {
            // The backlog first, so it shows while the billing store cannot be reached.
            self.refresh_backlog().await?;
            let mut db = postgres::connect(&self.config).await?;
            bring_schema_up(&mut db).await?;
            let watermark = ship::register(&mut db, &self.me).await?;
            info!(target = db.target, watermark, "billing store connected");
            self.db = Some(db);
            self.watermark = Some(watermark);
            self.set(|s| s.connected = true);
        }
        let after = self.watermark.unwrap_or(0);
        let step = i64::from(self.me.interval_seconds);
        let (batch, (unshipped, oldest)) = self
            .with_store(move |store| {
                store.load_addresses()?;
                let batch = batch::build(store, after, step, BATCH_ROUNDS, BATCH_ROWS)?;
                Ok((batch, store.unshipped(after)?))
            })
            .await?;
        self.set(|s| {
            s.unshipped_rounds = unshipped;
            s.oldest_unshipped = oldest;
        });
        let Some(batch) = batch else {
            return Ok(false);
        };
        let started = Instant::now();
        let db = self.db.as_mut().expect("connected");
        let result = ship::ship(db, &self.me, &batch).await;
        let shipped = match result {
            Ok(s) => s,
            Err(e) => {
                // Reconnect and re-read the watermark before trying again.
                self.db = None;
                self.watermark = None;
                self.set(|s| s.connected = false);
                return Err(e);
            }
        };
        for c in shipped.conflicts.iter().take(20) {
            error!(
                host = self.me.host,
                eip = %c.eip,
                interval_start = c.interval_start,
                stored_bytes_in = c.stored.0,
                stored_bytes_out = c.stored.1,
                stored_state = c.stored.2,
                offered_bytes_in = c.offered.0,
                offered_bytes_out = c.offered.1,
                offered_state = c.offered.2,
                "sample conflict: the billing store holds this sample with other values; kept the stored one, recorded in sample_conflicts"
            );
        }
        if shipped.conflicts.len() > 20 {
            error!(
                more = shipped.conflicts.len() - 20,
                "more sample conflicts in this batch (see sample_conflicts)"
            );
        }
        let seconds = started.elapsed().as_secs_f64();
        let (last_seq, at) = (batch.last_seq, now_seconds() as i64);
        self.with_store(move |store| store.set_shipped(last_seq, at))
            .await?;
        self.watermark = Some(batch.last_seq);
        self.backoff = Duration::from_secs(1);
        if self.last_logged_error.take().is_some() {
            info!("billing store shipping resumed");
        }
        let remaining = unshipped.saturating_sub(batch.rounds as u64);
        if batch.rounds > 1 || shipped.already {
            info!(
                rounds = batch.rounds,
                rows = batch.samples.len(),
                samples = batch.samples_total,
                seconds = format!("{seconds:.3}"),
                already_held = shipped.already,
                remaining,
                "shipped a backlog batch"
            );
        } else {
            debug!(rows = batch.samples.len(), seconds, "shipped a round");
        }
        self.set(|s| {
            s.shipped_seq = batch.last_seq;
            s.shipped_boundary = batch.last_boundary;
            s.unshipped_rounds = remaining;
            s.rounds_total += batch.rounds as u64;
            s.rows_total += shipped.inserted;
            s.conflicts_total += shipped.conflicts.len() as u64;
            s.last_error = None;
            s.last_batch_seconds = seconds;
            s.last_shipped_at = Some(now_seconds() as i64);
        });
        Ok(remaining > 0)
    }

    /// Runs `f` on the shipper's own connection to the local store (opened on first use and
    /// kept: opening reads every EIP's id) on the blocking pool.
    async fn with_store<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let kept = self.reader.take();
        let path = self.store_path.clone();
        let (store, result) = tokio::task::spawn_blocking(move || {
            let mut store = match kept {
                Some(store) => store,
                None => match Store::open_reader(&path) {
                    Ok(store) => store,
                    Err(e) => return (None, Err(e)),
                },
            };
            let result = f(&mut store);
            (Some(store), result)
        })
        .await
        .expect("local store task panicked");
        self.reader = store;
        result
    }

    /// Counts the rounds the billing store does not hold: after its watermark when known,
    /// else after the last acknowledgement the local store recorded.
    async fn refresh_backlog(&mut self) -> Result<(), PgError> {
        let known = self.watermark;
        let (unshipped, oldest) = self
            .with_store(move |store| {
                let after = match known {
                    Some(w) => w,
                    None => store.shipped()?.map_or(0, |(seq, _)| seq),
                };
                store.unshipped(after)
            })
            .await?;
        self.set(|s| {
            s.unshipped_rounds = unshipped;
            s.oldest_unshipped = oldest;
        });
        Ok(())
    }

    fn failed(&mut self, e: &PgError) {
        let message = e.to_string();
        let (unshipped, oldest) = {
            let s = self.status.lock().expect("ship status lock");
            (s.unshipped_rounds, s.oldest_unshipped)
        };
        // Loud once per distinct failure, then a reminder of the backlog every 10 minutes.
        if self.last_logged_error.as_deref() != Some(message.as_str()) {
            error!(error = %message, unshipped_rounds = unshipped, oldest_unshipped_round_end = oldest, "billing store: shipping stopped; rounds are kept locally and shipped when it works again");
            self.last_logged_error = Some(message.clone());
            self.last_reminder = Some(Instant::now());
        } else if self
            .last_reminder
            .is_none_or(|t| t.elapsed() >= REMIND_EVERY)
        {
            warn!(error = %message, unshipped_rounds = unshipped, oldest_unshipped_round_end = oldest, "billing store still failing; rounds waiting locally");
            self.last_reminder = Some(Instant::now());
        } else {
            debug!(error = %message, "billing store still failing");
        }
        self.set(|s| {
            s.errors_total += 1;
            s.last_error = Some(message);
            s.connected = false;
        });
    }

    /// Removes shipped rounds past the local retention (at most once an hour).
    async fn prune(&mut self) {
        if self.last_prune.is_some_and(|t| t.elapsed() < PRUNE_EVERY) {
            return;
        }
        self.last_prune = Some(Instant::now());
        let Some(shipped) = self.watermark else {
            return;
        };
        let before = now_seconds() as i64 - i64::from(self.config.local_retention_days) * 86_400;
        let pruned = self
            .with_store(move |store| store.prune_shipped(shipped, before))
            .await;
        match pruned {
            Ok(0) => {}
            Ok(n) => info!(
                rounds = n,
                retention_days = self.config.local_retention_days,
                "removed shipped rounds past the local retention"
            ),
            Err(e) => warn!(error = %e, "shipped rounds not pruned"),
        }
    }

    fn set(&self, f: impl FnOnce(&mut ShipStatus)) {
        let mut status = self.status.lock().expect("ship status lock");
        let before = status.clone();
        f(&mut status);
        if *status != before {
            status.pid = std::process::id();
            status.updated_at = now_seconds() as i64;
            write_status(&self.status_path, &status);
        }
    }
}

/// Applies the schema if this role may (the store's owner), else says who must; a store at a
/// newer version is refused either way.
async fn bring_schema_up(db: &mut Db) -> Result<(), PgError> {
    use postgres::migrate::{self, SCHEMA_VERSION};
    let version = migrate::version(&db.client).await?;
    if version < SCHEMA_VERSION {
        let from = migrate::migrate(&mut db.client).await.map_err(|e| {
            PgError::Schema(format!(
                "the store is at schema version {version}, this eip-meter needs {SCHEMA_VERSION}, and its role cannot migrate it ({e}): run `eip-meter store migrate` as the schema's owner"
            ))
        })?;
        info!(from, to = SCHEMA_VERSION, "billing store schema migrated");
    }
    migrate::check(&db.client).await
}

/// Replaces the status file atomically; a failure only costs `report` its shipping line.
fn write_status(path: &std::path::Path, status: &ShipStatus) {
    let tmp = path.with_extension("json.tmp");
    let written = serde_json::to_vec(status)
        .map_err(std::io::Error::other)
        .and_then(|json| std::fs::write(&tmp, json))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        debug!(path = %path.display(), error = %e, "shipping status not written");
    }
}
