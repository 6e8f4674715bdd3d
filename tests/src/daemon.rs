//! [`Daemon`]: the `eip-meter` binary running in a network namespace, with its config, log,
//! pins and state removed when it is dropped.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::{CounterSnapshot, METRICS_ADDR, Netns, SampleRow, http, parse_samples, unique_tag};

/// The `eip-meter` binary running in a namespace, with its config and log in a temp dir.
pub struct Daemon {
    binary: PathBuf,
    child: Option<Child>,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    /// The daemon's pin directory, removed on drop whatever `on_exit` said.
    pub pin_dir: PathBuf,
    /// The daemon's sample store directory, removed on drop.
    pub state_dir: PathBuf,
    dir: PathBuf,
    /// `ready` events in the log when the current process was spawned.
    ready_events_at_spawn: usize,
    /// Extra environment of the process (set before a [`Daemon::spawn`]).
    pub env: Vec<(String, String)>,
}

impl Daemon {
    /// Writes `config` and starts `binary run` inside `ns`; returns once every EIP in `expect`
    /// shows in its counters (the programs are attached by then).
    pub fn start(binary: &Path, ns: &Netns, config: &str, expect: &[IpAddr]) -> Result<Self> {
        Self::start_with_env(binary, ns, config, expect, &[])
    }

    /// [`Daemon::start`] with extra environment variables.
    pub fn start_with_env(
        binary: &Path,
        ns: &Netns,
        config: &str,
        expect: &[IpAddr],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let mut daemon = Self::prepare(binary, config, env)?;
        daemon.spawn(ns)?;
        daemon.wait_ready(Duration::from_secs(30))?;
        daemon.wait_for_eips(expect, Duration::from_secs(5))?;
        Ok(daemon)
    }

    /// Writes the config into a directory of its own; nothing runs yet.
    fn prepare(binary: &Path, config: &str, env: &[(&str, &str)]) -> Result<Self> {
        let dir = std::env::temp_dir().join(unique_tag("d"));
        std::fs::create_dir_all(&dir)?;
        let config_path = dir.join("eip-meter.toml");
        let log_path = dir.join("daemon.log");
        std::fs::write(&config_path, config)?;
        let parsed =
            metering_daemon::config::Config::parse(config, &metering_daemon::config::AnyInterface)
                .map_err(|p| anyhow::anyhow!("test config invalid: {p:?}"))?;
        Ok(Self {
            binary: binary.to_owned(),
            child: None,
            config_path,
            log_path,
            pin_dir: parsed.dataplane.pin_dir(),
            state_dir: parsed.sampler.state_dir.clone(),
            dir,
            ready_events_at_spawn: 0,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        })
    }

    /// [`Daemon::start`] for large inventories: returns once the daemon is ready (at most
    /// `timeout`), without reading every EIP's counters.
    pub fn start_ready(binary: &Path, ns: &Netns, config: &str, timeout: Duration) -> Result<Self> {
        let mut daemon = Self::prepare(binary, config, &[])?;
        daemon.spawn(ns)?;
        daemon.wait_ready(timeout)?;
        Ok(daemon)
    }

    /// Waits for the `ready` event of the latest start (logged once programs are attached).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let before = self.ready_events_at_spawn;
        loop {
            if self.log().matches(r#""message":"ready""#).count() > before {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("eip-meter exited with {status}; log:\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!(
                    "eip-meter not ready within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// (Re)starts the process with the current config file; see [`Daemon::wait_ready`].
    pub fn spawn(&mut self, ns: &Netns) -> Result<()> {
        self.ready_events_at_spawn = self.log().matches(r#""message":"ready""#).count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let child = ns
            .command(&self.binary)?
            .args(["--log-format", "json", "run", "--config"])
            .arg(&self.config_path)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn eip-meter")?;
        self.child = Some(child);
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The JSON log lines whose message is `message`.
    pub fn log_events(&self, message: &str) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["fields"]["message"] == message)
            .collect()
    }

    /// `GET /metrics` from this daemon (default metrics address, inside `ns`).
    pub fn scrape(&self, ns: &Netns) -> Result<http::Response> {
        http::get(ns, METRICS_ADDR.parse()?, "/metrics")
    }

    /// `eip-meter samples` of this daemon's store, parsed.
    pub fn samples(&self) -> Result<Vec<SampleRow>> {
        parse_samples(&self.subcommand(&["samples"])?)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `eip-meter counters --json` against this daemon's pins.
    pub fn counters(&self) -> Result<CounterSnapshot> {
        let out = Command::new(&self.binary)
            .args(["counters", "--json", "--config"])
            .arg(&self.config_path)
            .output()?;
        ensure!(
            out.status.success(),
            "counters failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        CounterSnapshot::parse(&String::from_utf8_lossy(&out.stdout))
    }

    /// Waits until the provisioned EIP set is exactly `expect`.
    pub fn wait_for_eips(&mut self, expect: &[IpAddr], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut want: Vec<_> = expect.to_vec();
        want.sort();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("eip-meter exited with {status}; log:\n{}", self.log());
            }
            if let Ok(snapshot) = self.counters() {
                let mut have: Vec<_> = snapshot.eips.keys().copied().collect();
                have.sort();
                if have == want {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "EIPs {want:?} not provisioned within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs another `eip-meter` subcommand against this daemon's config; returns its stdout.
    pub fn subcommand(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.binary)
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .output()?;
        ensure!(
            out.status.success(),
            "eip-meter {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The admin API's unix socket, as the config says.
    pub fn api_socket(&self) -> Result<PathBuf> {
        let text = std::fs::read_to_string(&self.config_path)?;
        let parsed =
            metering_daemon::config::Config::parse(&text, &metering_daemon::config::AnyInterface)
                .map_err(|p| anyhow::anyhow!("config invalid: {p:?}"))?;
        Ok(parsed.api.socket)
    }

    /// One admin API request with `curl --unix-socket` (as an operator would send it);
    /// returns the HTTP status and the JSON body.
    pub fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, serde_json::Value)> {
        let socket = self.api_socket()?;
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "30", "-X", method, "--unix-socket"])
            .arg(&socket)
            .args(["-w", "\n%{http_code}"]);
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        cmd.arg(format!("http://eip-meter{path}"));
        let out = cmd.output()?;
        ensure!(
            out.status.success(),
            "curl {method} {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let (json, status) = text.trim_end().rsplit_once('\n').context("curl output")?;
        Ok((status.parse()?, serde_json::from_str(json)?))
    }

    /// [`Daemon::api`], which must answer 200; its JSON body.
    pub fn api_ok(&self, method: &str, path: &str, body: Option<&str>) -> serde_json::Value {
        let (status, v) = self.api(method, path, body).expect("the admin API answers");
        assert_eq!(status, 200, "{method} {path}: {v}");
        v
    }

    /// Replaces the config file and sends SIGHUP.
    pub fn reload(&mut self, config: &str) -> Result<()> {
        std::fs::write(&self.config_path, config)?;
        self.signal(nix::sys::signal::Signal::SIGHUP)
    }

    /// [`Daemon::reload`], then waits (at most 5 s) for the daemon to log that it applied the
    /// config; returns the time from the signal to that log line being visible.
    pub fn reload_applied(&mut self, config: &str) -> Result<Duration> {
        const APPLIED: &str = r#""message":"config applied""#;
        let before = self.log().matches(APPLIED).count();
        let started = Instant::now();
        self.reload(config)?;
        while self.log().matches(APPLIED).count() == before {
            ensure!(
                started.elapsed() < Duration::from_secs(5),
                "config not applied within 5 s; log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(5));
        }
        Ok(started.elapsed())
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) -> Result<()> {
        let pid = self.pid().context("not running")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)?;
        Ok(())
    }

    /// SIGTERM and wait (at most 10 s) for a clean exit; returns its success.
    pub fn stop(&mut self) -> Result<bool> {
        let Some(mut child) = self.child.take() else {
            return Ok(true);
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.success());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("eip-meter ignored SIGTERM for 10 s; log:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash would.
    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.stop();
        // A daemon killed with SIGKILL leaves its API socket behind.
        if let Ok(socket) = self.api_socket() {
            let _ = std::fs::remove_file(socket);
        }
        // Removing a link's pin detaches it; removing a map's pin frees it.
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.state_dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
