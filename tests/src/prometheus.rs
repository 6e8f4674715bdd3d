//! A real Prometheus (the Debian package) for tests: started in a namespace, scraping a daemon
//! there every second with the project's rule files loaded, its data in a temporary directory
//! removed on drop.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::{Netns, http, unique_tag};

/// Where Prometheus listens inside its namespace.
pub const PROMETHEUS_ADDR: &str = "127.0.0.1:19090";

pub struct Prometheus<'a> {
    ns: &'a Netns,
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl<'a> Prometheus<'a> {
    /// Starts Prometheus in `ns`, scraping `target` (host:port) as job `eip-meter` every second
    /// and evaluating `rule_files` every second; returns once it is ready.
    pub fn start(ns: &'a Netns, target: &str, rule_files: &[&Path]) -> Result<Self> {
        let dir = std::env::temp_dir().join(unique_tag("prom"));
        std::fs::create_dir_all(&dir)?;
        let rules = rule_files
            .iter()
            .map(|p| format!("  - {}\n", p.display()))
            .collect::<String>();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\nrule_files:\n{rules}scrape_configs:\n  - job_name: eip-meter\n    static_configs:\n      - targets: ['{target}']\n"
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = ns
            .command("prometheus")?
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS_ADDR}"))
            .arg("--storage.tsdb.retention.time=1h")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context(
                "start prometheus (Debian package `prometheus`, installed by cargo xtask setup)",
            )?;
        let mut p = Self {
            ns,
            child,
            dir,
            addr: PROMETHEUS_ADDR.parse()?,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = p.child.try_wait()? {
                bail!("prometheus exited with {status}:\n{}", p.log());
            }
            if http::get(p.ns, p.addr, "/-/ready").is_ok_and(|r| r.status == 200) {
                return Ok(p);
            }
            ensure!(
                Instant::now() < deadline,
                "prometheus not ready in 30 s:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/...`; fails unless Prometheus says `success`.
    pub fn api(&self, path_and_query: &str) -> Result<serde_json::Value> {
        let r = http::get(self.ns, self.addr, &format!("/api/v1/{path_and_query}"))?;
        let v: serde_json::Value =
            serde_json::from_str(&r.body).with_context(|| format!("not JSON: {}", r.body))?;
        ensure!(
            v["status"] == "success",
            "{path_and_query}: {} {}",
            r.status,
            r.body
        );
        Ok(v["data"].clone())
    }

    /// An instant query; returns the result vector.
    pub fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>> {
        let data = self.api(&format!("query?query={}", http::encode(expr)))?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The value of a query that must return exactly one sample.
    pub fn value(&self, expr: &str) -> Result<f64> {
        let result = self.query(expr)?;
        ensure!(
            result.len() == 1,
            "{expr}: {} samples: {result:?}",
            result.len()
        );
        result[0]["value"][1]
            .as_str()
            .context("value")?
            .parse()
            .context("a number")
    }
}

impl Drop for Prometheus<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
