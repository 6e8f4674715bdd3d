//! The billing store's schema, versioned: `migrations/NNNN_*.sql`, each applied once in its own
//! transaction and recorded in `eip_meter_schema`. A store at a newer version than this
//! binary knows is refused, never written.

use tokio_postgres::{Client, GenericClient};

use super::{PgError, pg};

/// Every migration, in order.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("migrations/0001_initial.sql")),
    (2, include_str!("migrations/0002_inventory_audit.sql")),
    (3, include_str!("migrations/0003_plans_and_charges.sql")),
];

/// The schema version this binary writes and reads.
pub const SCHEMA_VERSION: i32 = 3;

/// The version the store is at (0: empty).
pub async fn version(client: &impl GenericClient) -> Result<i32, PgError> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('public.eip_meter_schema') IS NOT NULL",
            &[],
        )
        .await
        .map_err(pg("read schema version"))?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let v: Option<i32> = client
        .query_one("SELECT max(version) FROM eip_meter_schema", &[])
        .await
        .map_err(pg("read schema version"))?
        .get(0);
    Ok(v.unwrap_or(0))
}

/// Brings the store to [`SCHEMA_VERSION`]; returns the version it was at.
pub async fn migrate(client: &mut Client) -> Result<i32, PgError> {
    let from = version(client).await?;
    if from > SCHEMA_VERSION {
        return Err(PgError::Schema(format!(
            "the store is at schema version {from}, newer than this eip-meter knows ({SCHEMA_VERSION}): upgrade eip-meter"
        )));
    }
    for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > from) {
        let tx = client.transaction().await.map_err(pg("begin migration"))?;
        // One migrator at a time (two routers starting together); another may have applied
        // this one meanwhile.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('eip_meter_migrate'))",
            &[],
        )
        .await
        .map_err(pg("lock for migration"))?;
        if version(&tx).await? >= *v {
            continue;
        }
        tx.batch_execute(sql).await.map_err(pg("apply migration"))?;
        tx.execute("INSERT INTO eip_meter_schema (version) VALUES ($1)", &[v])
            .await
            .map_err(pg("record migration"))?;
        tx.commit().await.map_err(pg("commit migration"))?;
    }
    Ok(from)
}

/// Fails unless the store is at exactly [`SCHEMA_VERSION`].
pub async fn check(client: &Client) -> Result<(), PgError> {
    match version(client).await? {
        SCHEMA_VERSION => Ok(()),
        0 => Err(PgError::Schema(
            "the store has no eip-meter schema yet: run `eip-meter store migrate` as its owner"
                .into(),
        )),
        v if v < SCHEMA_VERSION => Err(PgError::Schema(format!(
            "the store is at schema version {v}, this eip-meter needs {SCHEMA_VERSION}: run `eip-meter store migrate` as its owner"
        ))),
        v => Err(PgError::Schema(format!(
            "the store is at schema version {v}, newer than this eip-meter knows ({SCHEMA_VERSION}): upgrade eip-meter"
        ))),
    }
}
