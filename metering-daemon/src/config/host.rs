//! What validation asks of the host, behind a trait so unit tests validate without a network
//! namespace.

use std::{
    io,
    net::{SocketAddr, TcpListener},
    path::Path,
};

/// Checks that the host can satisfy the config (interfaces exist). Behind a trait so unit tests
/// validate without a network namespace.
pub trait HostCheck {
    fn interface_exists(&self, name: &str) -> bool;

    /// The permission bits of a file the config names (secrets are checked with them).
    fn file_mode(&self, _path: &Path) -> Option<u32> {
        None
    }

    /// Whether `/metrics` can be served at `addr`. A daemon of the same state directory that
    /// is running holds the address itself, which is fine (`validate` before a reload).
    fn can_listen(&self, _addr: SocketAddr, _state_dir: &Path) -> Result<(), String> {
        Ok(())
    }

    /// Whether the billing store answers with these credentials and has the schema this
    /// version needs. Only `validate` asks: the daemon starts (and meters) whatever the answer.
    fn reaches_billing_store(&self, _store: &super::BillingStoreConfig) -> Result<(), String> {
        Ok(())
    }
}

/// The real host: the interface must exist in the caller's network namespace.
pub struct CurrentNetns;

impl HostCheck for CurrentNetns {
    fn interface_exists(&self, name: &str) -> bool {
        nix::net::if_::if_nametoindex(name).is_ok()
    }

    fn file_mode(&self, path: &Path) -> Option<u32> {
        super::permissions::mode_of(path)
    }

    fn can_listen(&self, addr: SocketAddr, state_dir: &Path) -> Result<(), String> {
        match TcpListener::bind(addr) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && daemon_running(state_dir) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(format!(
                "{addr} is already in use by another program; choose another metrics.listen"
            )),
            Err(e) => Err(format!("cannot listen on {addr}: {e}")),
        }
    }

    fn reaches_billing_store(&self, store: &super::BillingStoreConfig) -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let db = crate::store::postgres::connect(store)
                .await
                .map_err(|e| e.to_string())?;
            crate::store::postgres::migrate::check(&db.client)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// Whether the pid file of `state_dir` names a live process.
fn daemon_running(state_dir: &Path) -> bool {
    std::fs::read_to_string(state_dir.join("eip-meter.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .is_some_and(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok())
}

/// Accepts every interface name: for commands that only read pins, and for tools that parse a
/// config written for another network namespace.
pub struct AnyInterface;

impl HostCheck for AnyInterface {
    fn interface_exists(&self, _: &str) -> bool {
        true
    }
}
