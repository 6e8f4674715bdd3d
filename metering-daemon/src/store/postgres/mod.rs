//! The shared PostgreSQL billing store: every router ships its committed rounds here, and
//! `eip-meter bill` computes the fleet's figures from it.
//!
//! | file         | job                                                                        |
//! |--------------|----------------------------------------------------------------------------|
//! | `mod.rs`     | connecting (password from a file or the environment, TLS with rustls)      |
//! | `migrate.rs` | the versioned schema (`migrations/*.sql`), applied or checked               |
//! | `batch.rs`   | what a batch of local rounds becomes: sparse samples, rounds, presence, history |
//! | `ship.rs`    | shipping a batch in one transaction with the host's watermark               |
//! | `bill.rs`    | fleet figures: per subject, hosts summed per interval, revisions           |
//!
//! Crate: `tokio-postgres` (binary `COPY` for the batches, no ORM between the SQL and the
//! reader), with `tokio-postgres-rustls` for TLS.

pub mod batch;
pub mod bill;
pub mod charges;
pub mod migrate;
pub mod ship;

use std::{sync::Arc, time::Duration};

use tokio_postgres::{
    Client, NoTls,
    config::{Host, SslMode},
};
use tracing::debug;

use crate::config::{BillingStoreConfig, STORE_PASSWORD_ENV};

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("billing store URL: {0}")]
    Url(String),
    #[error(
        "billing store password: {0} (set billing_store.password_file, or ${STORE_PASSWORD_ENV})"
    )]
    Password(String),
    #[error("billing store TLS: {0}")]
    Tls(String),
    #[error("cannot connect to the billing store {target}: {}", describe(.source))]
    Connect {
        target: String,
        source: tokio_postgres::Error,
    },
    #[error("billing store: {op}: {}", describe(.source))]
    Query {
        op: &'static str,
        source: tokio_postgres::Error,
    },
    #[error("billing store schema: {0}")]
    Schema(String),
    #[error(
        "host name {host} is already registered by another machine (instance {registered}, this one is {ours}); refusing to merge two routers' samples: give this router its own sampler.host"
    )]
    HostTaken {
        host: String,
        registered: String,
        ours: String,
    },
    #[error("billing store holds host {host} with {what} {stored}, this router has {ours}")]
    HostMismatch {
        host: String,
        what: &'static str,
        stored: String,
        ours: String,
    },
    #[error(
        "billing store: the watermark of {host} moved under this daemon (expected commit {expected}, found {found}): is another process shipping as this host?"
    )]
    WatermarkMoved {
        host: String,
        expected: i64,
        found: i64,
    },
    #[error(transparent)]
    Local(#[from] super::StoreError),
}

/// What PostgreSQL said (its message, detail and hint), or the I/O or protocol cause: the
/// driver's own `Display` is only "db error".
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{}: {}", db.severity(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; hint: {hint}"));
        }
        return text;
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

pub(crate) fn pg(op: &'static str) -> impl FnOnce(tokio_postgres::Error) -> PgError {
    move |source| PgError::Query { op, source }
}

/// A live connection (its I/O runs on a task of its own, ended when this is dropped).
pub struct Db {
    pub client: Client,
    connection: tokio::task::JoinHandle<()>,
    /// `user@host/dbname`, for logs (never the password).
    pub target: String,
}

impl Drop for Db {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// Where a config points, for logs and errors: `user@host:port/dbname`.
fn target_of(c: &tokio_postgres::Config) -> String {
    let host = c
        .get_hosts()
        .first()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".to_owned());
    let port = c.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{host}:{port}/{}",
        c.get_user().unwrap_or("?"),
        c.get_dbname()
            .unwrap_or_else(|| c.get_user().unwrap_or("?"))
    )
}

fn password(store: &BillingStoreConfig) -> Result<Option<String>, PgError> {
    if let Some(path) = &store.password_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PgError::Password(format!("{}: {e}", path.display())))?;
        return Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()));
    }
    Ok(std::env::var(STORE_PASSWORD_ENV).ok())
}

fn tls(store: &BillingStoreConfig) -> Result<tokio_postgres_rustls::MakeRustlsConnect, PgError> {
    let mut roots = rustls::RootCertStore::empty();
    match &store.ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| PgError::Tls(format!("{}: {e}", path.display())))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| PgError::Tls(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| PgError::Tls(format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// Connects to the billing store: the password from `password_file` or the environment, TLS
/// (rustls, the server's certificate and name verified; required, never a fallback to plain
/// text) unless `sslmode=disable` or a Unix socket.
pub async fn connect(store: &BillingStoreConfig) -> Result<Db, PgError> {
    let mut config: tokio_postgres::Config = store
        .url
        .parse()
        .map_err(|e: tokio_postgres::Error| PgError::Url(e.to_string()))?;
    if let Some(p) = password(store)? {
        config.password(p);
    }
    config
        .application_name("eip-meter")
        .connect_timeout(Duration::from_secs(10));
    let target = target_of(&config);
    let unix = config
        .get_hosts()
        .iter()
        .all(|h| matches!(h, Host::Unix(_)));
    // Over the network, TLS unless the URL says `sslmode=disable`: libpq's default `prefer`
    // would fall back to plain text when the server (or someone in between) declines.
    if !unix && config.get_ssl_mode() == SslMode::Prefer {
        config.ssl_mode(SslMode::Require);
    }
    let connect_err = |source| PgError::Connect {
        target: target.clone(),
        source,
    };
    let (client, connection) = if unix || config.get_ssl_mode() == SslMode::Disable {
        let (client, connection) = config.connect(NoTls).await.map_err(connect_err)?;
        (client, tokio::spawn(drive(connection)))
    } else {
        let (client, connection) = config.connect(tls(store)?).await.map_err(connect_err)?;
        (client, tokio::spawn(drive(connection)))
    };
    debug!(target, "connected to the billing store");
    Ok(Db {
        client,
        connection,
        target,
    })
}

async fn drive<F>(connection: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>>,
{
    if let Err(e) = connection.await {
        debug!(error = %e, "billing store connection ended");
    }
}
