//! A private PostgreSQL 15 cluster for one test: `initdb` in a temporary directory as an
//! unprivileged user (`nobody`), Unix socket only (no TCP port), SCRAM passwords for every
//! role, stopped and removed on drop. The billing schema is applied with `eip-meter store
//! migrate` and login roles with `deploy/postgres/login-role.sql`, as an operator would.
//!
//! [`Postgres::start_tls`] also listens on `localhost` inside a network namespace of the test,
//! with TLS only, under a certificate of a CA made for the test (`openssl`).

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};

/// Debian's PostgreSQL 15 server binaries.
pub const BIN: &str = "/usr/lib/postgresql/15/bin";
/// The cluster's superuser and its password.
pub const SUPERUSER: &str = "postgres";
pub const SUPERUSER_PASSWORD: &str = "harness-superuser";
/// The billing database.
pub const DATABASE: &str = "billing";
/// `nobody`: initdb refuses root.
const UID: u32 = 65534;
const GID: u32 = 65534;

pub struct Postgres {
    dir: PathBuf,
    data: PathBuf,
    /// Where the server's socket lives (the `host` of a libpq URL).
    pub socket_dir: PathBuf,
    /// With TLS: the namespace the server listens in (on `localhost`), and the CA's PEM file.
    tls: Option<(PathBuf, PathBuf)>,
}

impl Postgres {
    /// A new cluster with the `billing` database at the current schema, started.
    pub fn start(eip_meter: &Path) -> Result<Self> {
        Self::create(eip_meter, None)
    }

    /// [`Postgres::start`], also listening on `localhost:5432` inside `ns` (whose loopback is
    /// up) with TLS required on TCP (`hostssl` only), its certificate signed by a CA made here.
    pub fn start_tls(eip_meter: &Path, ns: &crate::Netns) -> Result<Self> {
        Self::create(eip_meter, Some(ns.path()))
    }

    /// The CA that signed the server's certificate (TLS clusters).
    pub fn ca_file(&self) -> Option<&Path> {
        self.tls.as_ref().map(|(_, ca)| ca.as_path())
    }

    fn create(eip_meter: &Path, tls_ns: Option<PathBuf>) -> Result<Self> {
        ensure!(
            Path::new(BIN).join("initdb").exists(),
            "PostgreSQL 15 is not installed ({BIN}/initdb missing): run `cargo xtask setup`"
        );
        let dir = std::env::temp_dir().join(crate::unique_tag("pg"));
        std::fs::create_dir_all(&dir)?;
        let mut pg = Self {
            data: dir.join("data"),
            socket_dir: dir.join("socket"),
            tls: None,
            dir,
        };
        std::fs::create_dir_all(&pg.socket_dir)?;
        let pwfile = pg.dir.join("pwfile");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD)?;
        for p in [&pg.dir, &pg.socket_dir, &pwfile] {
            std::os::unix::fs::chown(p, Some(UID), Some(GID))?;
        }
        pg.as_postgres(&format!("{BIN}/initdb"))
            .args([
                "--no-locale",
                "-E",
                "UTF8",
                "--auth=scram-sha-256",
                "-U",
                SUPERUSER,
            ])
            .arg("--pwfile")
            .arg(&pwfile)
            .arg("-D")
            .arg(&pg.data)
            .output()
            .context("initdb")
            .and_then(check("initdb"))?;
        if let Some(ns) = tls_ns {
            let ca = pg.make_certificates()?;
            // TCP only with TLS; the socket as before.
            std::fs::write(
                pg.data.join("pg_hba.conf"),
                "local all all scram-sha-256\nhostssl all all localhost scram-sha-256\n",
            )?;
            pg.tls = Some((ns, ca));
        }
        pg.start_server()?;
        pg.psql_super("postgres", &format!("CREATE DATABASE {DATABASE}"))?;
        let out = Command::new(eip_meter)
            .args(["store", "migrate", "--store", &pg.url(SUPERUSER)])
            .env("EIP_METER_STORE_PASSWORD", SUPERUSER_PASSWORD)
            .output()?;
        check("eip-meter store migrate")(out)?;
        Ok(pg)
    }

    fn as_postgres(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.uid(UID)
            .gid(GID)
            .current_dir(&self.dir)
            .env_remove("PGDATA");
        cmd
    }

    /// A CA and a server certificate for `localhost`, the key readable by the cluster's owner
    /// only. Returns the CA's PEM file.
    fn make_certificates(&self) -> Result<PathBuf> {
        let d = &self.dir;
        let ca = crate::tls::make_certificates(d)?;
        // The server reads its key as the cluster's owner, and only then.
        for f in ["server.key", "server.pem"] {
            std::os::unix::fs::chown(d.join(f), Some(UID), Some(GID))?;
        }
        std::fs::set_permissions(
            d.join("server.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        Ok(ca)
    }

    /// `pg_ctl` as the cluster's owner, inside the TLS namespace when there is one.
    fn pg_ctl(&self) -> Result<Command> {
        let pg_ctl = format!("{BIN}/pg_ctl");
        Ok(match &self.tls {
            // setns needs root: enter the namespace first, then drop to the owner.
            Some((ns, _)) => {
                let mut cmd = crate::command_in(ns, "setpriv")?;
                cmd.args([
                    &format!("--reuid={UID}"),
                    &format!("--regid={GID}"),
                    "--clear-groups",
                    &pg_ctl,
                ])
                .current_dir(&self.dir)
                .env_remove("PGDATA");
                cmd
            }
            None => self.as_postgres(&pg_ctl),
        })
    }

    /// Starts the server (again); waits until it accepts connections.
    pub fn start_server(&self) -> Result<()> {
        let mut options = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -c fsync=off -c max_connections=50 -c shared_buffers=64MB",
            self.socket_dir.display()
        );
        if self.tls.is_some() {
            options = format!(
                "{} -c listen_addresses=localhost -c ssl=on -c ssl_cert_file='{}' -c ssl_key_file='{}' -c log_connections=on",
                options.replace("-c listen_addresses=''", ""),
                self.dir.join("server.pem").display(),
                self.dir.join("server.key").display()
            );
        }
        self.pg_ctl()?
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-o", &options, "-w", "-t", "30", "start"])
            .output()
            .context("pg_ctl start")
            .and_then(check("pg_ctl start"))
            .with_context(|| self.server_log())?;
        Ok(())
    }

    /// Stops the server (fast: open connections are cut, as an outage would).
    pub fn stop_server(&self) -> Result<()> {
        self.pg_ctl()?
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "-t", "30", "stop"])
            .output()
            .context("pg_ctl stop")
            .and_then(check("pg_ctl stop"))?;
        Ok(())
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// A libpq key/value string for `user` on the billing database (no password).
    pub fn url(&self, user: &str) -> String {
        format!(
            "host={} dbname={DATABASE} user={user}",
            self.socket_dir.display()
        )
    }

    /// Runs `sql` as the superuser on `database`; returns psql's unaligned, tuples-only output.
    fn psql_super(&self, database: &str, sql: &str) -> Result<String> {
        let out = Command::new("psql")
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-A", "-t", "-q"])
            .args(["-h"])
            .arg(&self.socket_dir)
            .args(["-U", SUPERUSER, "-d", database, "-c", sql])
            .env("PGPASSWORD", SUPERUSER_PASSWORD)
            .output()
            .context("psql")?;
        Ok(check(&format!("psql {sql}"))(out)?.trim_end().to_owned())
    }

    /// `sql` as the superuser on the billing database.
    pub fn query(&self, sql: &str) -> Result<String> {
        self.psql_super(DATABASE, sql)
    }

    /// One value.
    pub fn value<T: std::str::FromStr>(&self, sql: &str) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        let text = self.query(sql)?;
        text.trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("`{sql}` gave `{text}`: {e}"))
    }

    /// `sql` as `user` with `password`: (success, stdout, stderr).
    pub fn query_as(
        &self,
        user: &str,
        password: &str,
        sql: &str,
    ) -> Result<(bool, String, String)> {
        let out = Command::new("psql")
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-A", "-t", "-q", "-h"])
            .arg(&self.socket_dir)
            .args(["-U", user, "-d", DATABASE, "-c", sql])
            .env("PGPASSWORD", password)
            .output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim_end().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Creates a login role in `group` (`eip_meter_daemon` or `eip_meter_billing`) with
    /// `deploy/postgres/login-role.sql`, as the deployment guide says.
    pub fn add_login_role(&self, role: &str, password: &str, group: &str) -> Result<()> {
        let out = Command::new("psql")
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-q", "-h"])
            .arg(&self.socket_dir)
            .args(["-U", SUPERUSER, "-d", DATABASE])
            .args(["-v", &format!("role={role}")])
            .args(["-v", &format!("password={password}")])
            .args(["-v", &format!("group={group}")])
            .arg("-f")
            .arg(crate::deploy_file("postgres/login-role.sql"))
            .env("PGPASSWORD", SUPERUSER_PASSWORD)
            .output()?;
        check("login-role.sql")(out)?;
        Ok(())
    }

    /// Writes `password` to a file the daemon (root) reads; returns its path.
    pub fn password_file(&self, name: &str, password: &str) -> Result<PathBuf> {
        let path = self.dir.join(format!("{name}.password"));
        std::fs::write(&path, format!("{password}\n"))?;
        Ok(path)
    }

    /// A `[billing_store]` section for `role` with its password in a file.
    pub fn billing_store_section(&self, role: &str, password: &str) -> Result<String> {
        let file = self.password_file(role, password)?;
        Ok(format!(
            "\n[billing_store]\nurl = \"{}\"\npassword_file = \"{}\"\n",
            self.url(role),
            file.display()
        ))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let Ok(mut pg_ctl) = self.pg_ctl() else {
            // The namespace is gone: stop the postmaster by its pid (SIGQUIT: immediate).
            if let Some(pid) = std::fs::read_to_string(self.data.join("postmaster.pid"))
                .ok()
                .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGQUIT,
                );
                std::thread::sleep(Duration::from_millis(500));
            }
            let _ = std::fs::remove_dir_all(&self.dir);
            return;
        };
        let _ = pg_ctl
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-t", "10", "stop"])
            .output();
        std::thread::sleep(Duration::from_millis(50));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn check(what: &str) -> impl FnOnce(Output) -> Result<String> + '_ {
    move |out| {
        if !out.status.success() {
            bail!(
                "{what} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
