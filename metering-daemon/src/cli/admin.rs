//! The admin API from the command line: where a change goes (`eip|group set|remove`), and
//! `eip show|list|apply|sync`, plus `history` from the local store.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Instant,
};

use anyhow::Context as _;
use hyper::Method;
use serde_json::{Value, json};

use super::{inventory::LiveArgs, load_config};
use crate::{
    config::{AnyInterface, Config},
    edit::{Change, EipChanges, GroupChanges},
    inventory::client::{self, Answer},
    store::Store,
};

/// The running daemon's admin API, and whether the subject asked about exists there.
pub(super) struct Api {
    socket: PathBuf,
    runtime: tokio::runtime::Runtime,
    exists: bool,
}

impl Api {
    fn open(socket: PathBuf) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start an async runtime")?;
        Ok(Self {
            socket,
            runtime,
            exists: false,
        })
    }

    fn call(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Answer> {
        Ok(self
            .runtime
            .block_on(client::call(&self.socket, method, path, body))?)
    }
}

/// The admin API of the daemon `config` names, if it is up.
fn running_api(config: &Config) -> anyhow::Result<Option<Api>> {
    if !config.api.enabled || !client::reachable(&config.api.socket) {
        return Ok(None);
    }
    Api::open(config.api.socket.clone()).map(Some)
}

fn api_of(config_path: &Path) -> anyhow::Result<Api> {
    let config = load_config(config_path, &AnyInterface)?;
    running_api(&config)?.with_context(|| {
        format!(
            "no daemon answers on its admin API socket {} (is it running, with [api] enabled?)",
            config.api.socket.display()
        )
    })
}

/// The admin API when it should take a change of `subject` (`eips` or `groups`): the daemon
/// runs and the subject is not the config file's. `None`: change the file.
pub(super) fn owner_api(live: &LiveArgs, kind: &str, subject: &str) -> anyhow::Result<Option<Api>> {
    if live.in_file || live.no_reload {
        return Ok(None);
    }
    let config = load_config(&live.config, &AnyInterface)?;
    let Some(mut api) = running_api(&config)? else {
        return Ok(None);
    };
    let found = if kind == "eips" {
        match api.call(Method::GET, &format!("/v1/eips/{subject}"), None)? {
            Answer::Ok(v) => Some(v),
            Answer::Refused(..) => None,
        }
    } else {
        match api.call(Method::GET, "/v1/groups", None)? {
            Answer::Ok(v) => v["groups"]
                .as_array()
                .and_then(|gs| gs.iter().find(|g| g["name"] == subject).cloned()),
            Answer::Refused(s, e) => anyhow::bail!("admin API: {s}: {}", e.message),
        }
    };
    match found {
        Some(v) if v["source"] == "file" => Ok(None),
        Some(_) => {
            api.exists = true;
            Ok(Some(api))
        }
        None => Ok(Some(api)),
    }
}

fn put_change<T: serde::Serialize>(body: &mut Value, key: &str, change: &Change<T>) {
    match change {
        Change::Keep => {}
        Change::Set(v) => body[key] = json!(v),
        Change::Clear => body[key] = Value::Null,
    }
}

/// A plan as the API's fields.
fn plan_fields(body: &mut Value, plan: Option<crate::billing::plans::Plan>) {
    use crate::billing::plans::Plan;
    let Some(plan) = plan else { return };
    body["plan"] = json!(plan.name());
    if let Plan::Monthly { start, months } = plan {
        body["plan_start"] = json!(start);
        body["plan_months"] = json!(months);
    }
}

/// Prints what the daemon answered; the exit code says whether it applied.
fn report(what: &str, answer: Answer, started: Instant) -> anyhow::Result<ExitCode> {
    match answer {
        Answer::Ok(v) => {
            println!(
                "{what}: applied by the daemon through its admin API in {} ms (added {}, changed {}, removed {}, unchanged {})",
                started.elapsed().as_millis(),
                v["added"],
                v["changed"],
                v["removed"],
                v["unchanged"]
            );
            Ok(ExitCode::SUCCESS)
        }
        Answer::Refused(status, e) => {
            eprintln!("{what}: refused ({status}): {}", e.message);
            for item in e.items.iter().take(50) {
                eprintln!(
                    "  item {} {}: {} ({})",
                    item.index, item.subject, item.message, item.code
                );
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

pub(super) fn set_eip(
    api: &Api,
    address: IpAddr,
    changes: &EipChanges,
) -> anyhow::Result<ExitCode> {
    let mut body = json!({});
    put_change(&mut body, "bandwidth_mbps", &changes.bandwidth_mbps);
    put_change(&mut body, "inbound_mbps", &changes.inbound_mbps);
    put_change(&mut body, "outbound_mbps", &changes.outbound_mbps);
    put_change(&mut body, "group", &changes.group);
    if let Some(s) = changes.state {
        body["state"] = json!(s.as_str());
    }
    plan_fields(&mut body, changes.plan);
    if let Some(n) = changes.renew_months {
        body["renew_months"] = json!(n);
    }
    let method = if api.exists {
        Method::PATCH
    } else {
        Method::PUT
    };
    let started = Instant::now();
    let answer = api.call(method, &format!("/v1/eips/{address}"), Some(&body))?;
    report(&format!("EIP {address}"), answer, started)
}

pub(super) fn set_group(api: &Api, name: &str, changes: &GroupChanges) -> anyhow::Result<ExitCode> {
    let mut body = json!({});
    if let Some(b) = changes.bandwidth_mbps {
        body["bandwidth_mbps"] = json!(b);
    }
    put_change(&mut body, "inbound_mbps", &changes.inbound_mbps);
    put_change(&mut body, "outbound_mbps", &changes.outbound_mbps);
    plan_fields(&mut body, changes.plan);
    let method = if api.exists {
        Method::PATCH
    } else {
        Method::PUT
    };
    let started = Instant::now();
    let answer = api.call(method, &format!("/v1/groups/{name}"), Some(&body))?;
    report(&format!("group {name}"), answer, started)
}

pub(super) fn remove(api: &Api, kind: &str, subject: &str) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let answer = api.call(Method::DELETE, &format!("/v1/{kind}/{subject}"), None)?;
    report(subject, answer, started)
}

pub(super) fn show(config: &Path, address: IpAddr) -> anyhow::Result<ExitCode> {
    let api = api_of(config)?;
    match api.call(Method::GET, &format!("/v1/eips/{address}"), None)? {
        Answer::Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        Answer::Refused(s, e) => {
            eprintln!("{address}: {s}: {}", e.message);
            Ok(ExitCode::FAILURE)
        }
    }
}

pub(super) fn list(config: &Path, limit: usize) -> anyhow::Result<ExitCode> {
    let api = api_of(config)?;
    let mut after: Option<String> = None;
    let mut n = 0usize;
    loop {
        let path = match &after {
            Some(a) => format!("/v1/eips?limit={limit}&after={a}"),
            None => format!("/v1/eips?limit={limit}"),
        };
        let v = match api.call(Method::GET, &path, None)? {
            Answer::Ok(v) => v,
            Answer::Refused(s, e) => anyhow::bail!("admin API: {s}: {}", e.message),
        };
        for e in v["eips"].as_array().into_iter().flatten() {
            n += 1;
            let opt = |k: &str| match &e[k] {
                Value::Null => "-".to_owned(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!(
                "{}\tbandwidth={}\tinbound={}\toutbound={}\tgroup={}\tstate={}\tsource={}",
                opt("address"),
                opt("bandwidth_mbps"),
                opt("inbound_mbps"),
                opt("outbound_mbps"),
                opt("group"),
                opt("state"),
                opt("source")
            );
        }
        match v["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    eprintln!("{n} EIPs");
    Ok(ExitCode::SUCCESS)
}

pub(super) fn apply(config: &Path, file: &Path) -> anyhow::Result<ExitCode> {
    let api = api_of(config)?;
    let text = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let body: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    let started = Instant::now();
    let answer = api.call(Method::POST, "/v1/changes", Some(&body))?;
    report(&file.display().to_string(), answer, started)
}

pub(super) fn sync(config: &Path, file: &Path) -> anyhow::Result<ExitCode> {
    let api = api_of(config)?;
    let started = Instant::now();
    let answer = api.runtime.block_on(client::stream_file(
        &api.socket,
        Method::PUT,
        "/v1/inventory",
        file,
    ))?;
    report(&format!("sync of {}", file.display()), answer, started)
}

#[derive(Debug, clap::Args)]
pub(super) struct HistoryArgs {
    #[command(flatten)]
    config: super::ConfigArg,
    /// Only this EIP's changes.
    #[arg(long)]
    eip: Option<IpAddr>,
    /// Only this group's changes.
    #[arg(long, conflicts_with = "eip")]
    group: Option<String>,
    /// Only changes applied at or after this time (RFC 3339 with an offset).
    #[arg(long)]
    since: Option<String>,
    /// At most this many (the newest).
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

fn time_text(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0)
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| seconds.to_string())
}

pub(super) fn history(args: &HistoryArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args.config.config, &AnyInterface)?;
    let since_ms = match &args.since {
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .with_context(|| format!("--since `{t}` is not an RFC 3339 time with an offset"))?
            .timestamp_millis(),
        None => i64::MIN,
    };
    let path = config.sampler.store_path();
    anyhow::ensure!(
        path.exists(),
        "no sample store at {} (has the daemon run with this config?)",
        path.display()
    );
    let store = Store::open_reader(&path)?;
    let subject = args
        .eip
        .map(|a| crate::addr::normalize(a).to_string())
        .or_else(|| args.group.clone());
    let rows = store.audit_trail(subject.as_deref(), since_ms, args.limit)?;
    if !args.json {
        println!("applied_at\teffective_from\tsource\tuid\tkind\tsubject\tbefore\tafter");
    }
    for r in &rows {
        let at = chrono::DateTime::from_timestamp_millis(r.at_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default();
        if args.json {
            let parse = |s: &Option<String>| {
                s.as_deref()
                    .and_then(|s| serde_json::from_str::<Value>(s).ok())
                    .unwrap_or(Value::Null)
            };
            println!(
                "{}",
                json!({
                    "applied_at": at,
                    "effective_from": time_text(r.effective_from),
                    "source": r.source,
                    "uid": r.uid,
                    "kind": r.kind,
                    "subject": r.subject,
                    "before": parse(&r.before),
                    "after": parse(&r.after),
                })
            );
        } else {
            println!(
                "{at}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                time_text(r.effective_from),
                r.source,
                r.uid.map_or("-".to_owned(), |u| u.to_string()),
                r.kind,
                r.subject,
                r.before.as_deref().unwrap_or("-"),
                r.after.as_deref().unwrap_or("-"),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
