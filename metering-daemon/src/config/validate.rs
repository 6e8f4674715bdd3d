//! From the file to a validated [`Config`]: every problem found, each with its line and column.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    ops::Range,
    path::{Path, PathBuf},
};

use toml::Spanned;

use super::permissions::{self, Exposure};
use super::{
    ApiConfig, ApiSection, ApiTcpConfig, BillingStoreConfig, DEFAULT_LOCAL_RETENTION_DAYS,
    STORE_PASSWORD_ENV,
};
use super::{
    AttachMode, Config, ConfigFile, CurrentNetns, DEFAULT_BPFFS_ROOT, DEFAULT_CAPACITY,
    DEFAULT_GROUP_CAPACITY, DEFAULT_INSTANCE, DataplaneConfig, EipConfig, GroupConfig, HostCheck,
    MAX_CAPACITY, MetricsConfig, OnExit, PolicingConfig, SamplerConfig,
};
use crate::{addr::normalize, billing::calendar::Calendar};

/// One problem found in a configuration file, with its place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line and column, when the problem has a place in the file.
    pub location: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some((line, col)) => write!(f, "line {line}, column {col}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}:\n{}", .problems.iter().map(|p| format!("  {}: {p}", .path.display())).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

impl Config {
    /// Reads, parses and validates `path` against the current host.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with(path, &CurrentNetns)
    }

    /// [`Config::load`] against `host`. A config file every local user may write is refused;
    /// one its group may write is logged as a warning.
    pub fn load_with(path: &Path, host: &dyn HostCheck) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        };
        match permissions::mode_of(path).map(|mode| permissions::settings_file(path, mode)) {
            Some(Exposure::Refuse(message)) => {
                return Err(invalid(vec![Problem {
                    location: None,
                    message,
                }]));
            }
            Some(Exposure::Warn(message)) => tracing::warn!(path = %path.display(), "{message}"),
            _ => {}
        }
        Self::parse(&text, host).map_err(invalid)
    }

    /// Parses and validates config text; every problem found is returned, not just the first.
    pub fn parse(text: &str, host: &dyn HostCheck) -> Result<Config, Vec<Problem>> {
        let locate = |span: Range<usize>| Some(line_col(text, span.start));
        let file: ConfigFile = toml::from_str(text).map_err(|e| {
            vec![Problem {
                location: e.span().and_then(&locate),
                message: e.message().trim().to_owned(),
            }]
        })?;

        let mut problems = Vec::new();
        let mut problem = |span: Range<usize>, message: String| {
            problems.push(Problem {
                location: locate(span),
                message,
            })
        };

        let d = file.dataplane;
        if d.interfaces.is_empty() {
            problems_push_global(
                &mut problem,
                "dataplane.interfaces must name at least one uplink",
            );
        }
        let mut seen_if = HashMap::new();
        for iface in &d.interfaces {
            let name = iface.get_ref();
            if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ']) {
                problem(
                    iface.span(),
                    format!("`{name}` is not a valid interface name"),
                );
            } else if let Some(first) = seen_if.insert(name.clone(), iface.span()) {
                let (l, _) = line_col(text, first.start);
                problem(
                    iface.span(),
                    format!("interface `{name}` is listed twice (first on line {l})"),
                );
            } else if !host.interface_exists(name) {
                problem(
                    iface.span(),
                    format!("interface `{name}` does not exist in this network namespace"),
                );
            }
        }

        let capacity = d
            .capacity
            .as_ref()
            .map_or(DEFAULT_CAPACITY, |c| *c.get_ref());
        if let Some(c) = &d.capacity
            && !(1..=MAX_CAPACITY).contains(c.get_ref())
        {
            problem(
                c.span(),
                format!("capacity must be between 1 and {MAX_CAPACITY}"),
            );
        }
        let instance = d
            .instance
            .as_ref()
            .map_or(DEFAULT_INSTANCE.to_owned(), |i| i.get_ref().clone());
        if let Some(i) = &d.instance
            && !valid_instance(i.get_ref())
        {
            problem(
                i.span(),
                "instance must match [A-Za-z0-9_-]{1,64}".to_owned(),
            );
        }
        let bpffs_root = d
            .bpffs_root
            .as_ref()
            .map_or(PathBuf::from(DEFAULT_BPFFS_ROOT), |p| p.get_ref().clone());
        if let Some(p) = &d.bpffs_root
            && !p.get_ref().is_absolute()
        {
            problem(p.span(), "bpffs_root must be an absolute path".to_owned());
        }
        let on_exit = d
            .on_exit
            .as_ref()
            .map_or(OnExit::default(), |o| *o.get_ref());
        let attach_mode = d
            .attach_mode
            .as_ref()
            .map_or(AttachMode::default(), |a| *a.get_ref());
        if let (Some(o), AttachMode::Netlink) = (&d.on_exit, attach_mode)
            && *o.get_ref() == OnExit::Keep
        {
            problem(
                o.span(),
                "on_exit = \"keep\" needs pinnable TCX links; attach_mode = \"netlink\" cannot keep them".to_owned(),
            );
        }

        let mut sampler = SamplerConfig::default();
        if let Some(section) = &file.sampler {
            let span = section.span();
            let section = section.get_ref();
            sampler.interval_seconds = section.interval_seconds.unwrap_or(sampler.interval_seconds);
            sampler.timezone = section.timezone.clone().unwrap_or(sampler.timezone);
            sampler.state_dir = section.state_dir.clone().unwrap_or(sampler.state_dir);
            sampler.host = section.host.clone().unwrap_or(sampler.host);
            sampler.sample_rule = section.sample_rule.unwrap_or_default();
            sampler.gb_unit = section.gb_unit.unwrap_or_default();
            if let Err(e) = Calendar::new(&sampler.timezone, sampler.interval_seconds) {
                problem(span.clone(), format!("[sampler]: {e}"));
            }
            if !sampler.state_dir.is_absolute() {
                problem(
                    span.clone(),
                    "[sampler]: state_dir must be an absolute path".to_owned(),
                );
            }
            if sampler.host.is_empty() || sampler.host.contains([',', '\n', '"']) {
                problem(
                    span,
                    "[sampler]: host must be non-empty, without commas or quotes".to_owned(),
                );
            }
        }

        let mut metrics = MetricsConfig::default();
        if let Some(m) = &file.metrics {
            metrics.enabled = m.enabled.unwrap_or(metrics.enabled);
            metrics.per_eip = m.per_eip.unwrap_or(metrics.per_eip);
            if let Some(listen) = &m.listen {
                match listen.get_ref().parse::<SocketAddr>() {
                    Ok(addr) => metrics.listen = addr,
                    Err(_) => problem(
                        listen.span(),
                        format!(
                            "`{}` is not an address:port (e.g. 127.0.0.1:10317 or [::1]:10317)",
                            listen.get_ref()
                        ),
                    ),
                }
            }
        }
        if metrics.enabled
            && let Err(e) = host.can_listen(metrics.listen, &sampler.state_dir)
        {
            match file.metrics.as_ref().and_then(|m| m.listen.as_ref()) {
                Some(listen) => problem(listen.span(), format!("metrics.listen: {e}")),
                None => problems_push_global(
                    &mut problem,
                    &format!("metrics.listen (default {}): {e}", metrics.listen),
                ),
            }
        }

        let mut billing_store = None;
        if let Some(section) = &file.billing_store {
            let span = section.span();
            let b = section.get_ref();
            let url = b.url.get_ref();
            let mut url_ok = false;
            match url.parse::<tokio_postgres::Config>() {
                Err(e) => problem(b.url.span(), format!("billing_store.url: {e}")),
                Ok(c) if c.get_password().is_some() => problem(
                    b.url.span(),
                    format!(
                        "billing_store.url must not hold the password (it would be logged): use password_file or ${STORE_PASSWORD_ENV}"
                    ),
                ),
                Ok(c) if c.get_user().is_none() => problem(
                    b.url.span(),
                    "billing_store.url must name the user (the router's role)".to_owned(),
                ),
                Ok(_) => url_ok = true,
            }
            let retention = b
                .local_retention_days
                .unwrap_or(DEFAULT_LOCAL_RETENTION_DAYS);
            if retention < 2 {
                problem(
                    span.clone(),
                    "[billing_store]: local_retention_days must be at least 2 (a restart replays up to a day)".to_owned(),
                );
            }
            for (key, path) in [("password_file", &b.password_file), ("ca_file", &b.ca_file)] {
                if let Some(p) = path
                    && !p.is_absolute()
                {
                    problem(
                        span.clone(),
                        format!("[billing_store]: {key} must be an absolute path"),
                    );
                }
                if let (Some(p), "password_file") = (path, key)
                    && let Some(Exposure::Refuse(m)) = host
                        .file_mode(p)
                        .map(|mode| permissions::secret_file(p, mode))
                {
                    problem(span.clone(), format!("[billing_store]: {m}"));
                }
            }
            let store = BillingStoreConfig {
                url: url.clone(),
                password_file: b.password_file.clone(),
                ca_file: b.ca_file.clone(),
                local_retention_days: retention,
            };
            if url_ok && let Err(e) = host.reaches_billing_store(&store) {
                problem(b.url.span(), format!("[billing_store]: {e}"));
            }
            billing_store = Some(store);
        }

        let api = validate_api(file.api.as_ref(), &instance, host, &mut problem);
        let lifecycle = validate_lifecycle(file.lifecycle.as_ref(), &mut problem);
        let mut plans = Vec::with_capacity(file.eips.len());
        for eip in &file.eips {
            plans.push(validate_plan(
                (&eip.plan, &eip.plan_start, &eip.plan_months),
                &mut problem,
            ));
        }
        let mut group_plans = Vec::with_capacity(file.groups.len());
        for g in &file.groups {
            let plan = validate_plan((&g.plan, &g.plan_start, &g.plan_months), &mut problem);
            if plan == Some(super::Plan::Enhanced95)
                && *g.bandwidth_mbps.get_ref() < 300
                && let Some(p) = &g.plan
            {
                problem(
                    p.span(),
                    "the enhanced 95th applies to shared bandwidths of 300 Mbit/s and more"
                        .to_owned(),
                );
            }
            group_plans.push(plan);
        }

        let group_capacity = d
            .group_capacity
            .as_ref()
            .map_or(DEFAULT_GROUP_CAPACITY, |g| *g.get_ref());
        if let Some(g) = &d.group_capacity
            && (*g.get_ref() == 0 || *g.get_ref() > MAX_CAPACITY)
        {
            problem(
                g.span(),
                format!("group_capacity must be between 1 and {MAX_CAPACITY}"),
            );
        }

        let mut policing = PolicingConfig::default();
        if let Some(section) = &file.policing {
            let span = section.span();
            let p = section.get_ref();
            policing.share = p.share.unwrap_or(policing.share);
            policing.burst_ms = p.burst_ms.unwrap_or(policing.burst_ms);
            policing.ecn_mark_ms = p
                .ecn_mark_ms
                .unwrap_or(policing.ecn_mark_ms.min(policing.burst_ms));
            policing.ecn = p.ecn.unwrap_or(policing.ecn);
            if !(policing.share > 0.0 && policing.share <= 1.0) {
                problem(
                    span.clone(),
                    "[policing]: share must be in (0, 1] (0.75 for a dual-active pair, 1.0 alone)"
                        .to_owned(),
                );
            }
            if !(policing.burst_ms > 0.0 && policing.burst_ms <= 10_000.0) {
                problem(
                    span.clone(),
                    "[policing]: burst_ms must be in (0, 10000]".to_owned(),
                );
            }
            if !(policing.ecn_mark_ms >= 0.0 && policing.ecn_mark_ms <= policing.burst_ms) {
                problem(
                    span,
                    "[policing]: ecn_mark_ms must be between 0 and burst_ms".to_owned(),
                );
            }
        }

        let mut seen_group: HashMap<String, Range<usize>> = HashMap::new();
        for g in &file.groups {
            let name = g.name.get_ref();
            if !valid_group_name(name) {
                problem(
                    g.name.span(),
                    "group name must match [A-Za-z0-9_.-]{1,64}".to_owned(),
                );
            } else if let Some(first) = seen_group.get(name) {
                let (l, _) = line_col(text, first.start);
                problem(
                    g.name.span(),
                    format!("group `{name}` is defined twice (first on line {l})"),
                );
            } else {
                seen_group.insert(name.clone(), g.name.span());
            }
            for bw in [
                Some(&g.bandwidth_mbps),
                g.inbound_mbps.as_ref(),
                g.outbound_mbps.as_ref(),
            ]
            .into_iter()
            .flatten()
            {
                if *bw.get_ref() == 0 {
                    problem(
                        bw.span(),
                        "a bandwidth must be at least 1 Mbit/s".to_owned(),
                    );
                }
            }
        }
        if file.groups.len() > group_capacity as usize {
            problems_push_global(
                &mut problem,
                &format!(
                    "{} groups do not fit in dataplane.group_capacity {group_capacity}",
                    file.groups.len()
                ),
            );
        }

        let mut seen_eip: HashMap<IpAddr, Range<usize>> = HashMap::new();
        for eip in &file.eips {
            let addr = normalize(*eip.address.get_ref());
            if let Some(first) = seen_eip.get(&addr) {
                let (l, _) = line_col(text, first.start);
                problem(
                    eip.address.span(),
                    format!("EIP {addr} is listed twice (first on line {l})"),
                );
            } else if !is_assignable(addr) {
                problem(
                    eip.address.span(),
                    format!(
                        "{addr} cannot be an EIP (unspecified, loopback, multicast or broadcast)"
                    ),
                );
            } else {
                seen_eip.insert(addr, eip.address.span());
            }
            for bw in [&eip.bandwidth_mbps, &eip.inbound_mbps, &eip.outbound_mbps]
                .into_iter()
                .flatten()
            {
                if *bw.get_ref() == 0 {
                    problem(
                        bw.span(),
                        "a bandwidth must be at least 1 Mbit/s".to_owned(),
                    );
                }
            }
            if let Some(group) = &eip.group {
                if !seen_group.contains_key(group.get_ref()) {
                    problem(
                        group.span(),
                        format!("group `{}` is not defined by a [[group]]", group.get_ref()),
                    );
                }
                if let Some(bw) = [&eip.bandwidth_mbps, &eip.inbound_mbps, &eip.outbound_mbps]
                    .into_iter()
                    .flatten()
                    .next()
                {
                    problem(
                        bw.span(),
                        "an EIP in a group is capped by the group's bandwidth; remove its own"
                            .to_owned(),
                    );
                }
            }
        }
        if (1..=MAX_CAPACITY).contains(&capacity) && file.eips.len() > capacity as usize {
            problems_push_global(
                &mut problem,
                &format!("{} EIPs do not fit in capacity {capacity}", file.eips.len()),
            );
        }

        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Config {
            dataplane: DataplaneConfig {
                interfaces: d.interfaces.into_iter().map(|i| i.into_inner()).collect(),
                capacity,
                bpffs_root,
                instance,
                on_exit,
                attach_mode,
                group_capacity,
            },
            sampler,
            policing,
            metrics,
            billing_store,
            api,
            lifecycle,
            groups: file
                .groups
                .into_iter()
                .zip(group_plans)
                .map(|(g, plan)| GroupConfig {
                    plan,
                    name: g.name.into_inner(),
                    bandwidth_mbps: g.bandwidth_mbps.into_inner(),
                    inbound_mbps: g.inbound_mbps.map(Spanned::into_inner),
                    outbound_mbps: g.outbound_mbps.map(Spanned::into_inner),
                })
                .collect(),
            eips: file
                .eips
                .into_iter()
                .zip(plans)
                .map(|(e, plan)| EipConfig {
                    address: normalize(e.address.into_inner()),
                    bandwidth_mbps: e.bandwidth_mbps.map(Spanned::into_inner),
                    inbound_mbps: e.inbound_mbps.map(Spanned::into_inner),
                    outbound_mbps: e.outbound_mbps.map(Spanned::into_inner),
                    group: e.group.map(Spanned::into_inner),
                    state: e.state.unwrap_or_default(),
                    plan,
                })
                .collect(),
        })
    }
}

/// An `[[eip]]`'s or `[[group]]`'s plan, `plan_start` and `plan_months`: the last two with a
/// monthly package, and only then.
type PlanFields<'a> = (
    &'a Option<Spanned<String>>,
    &'a Option<Spanned<String>>,
    &'a Option<Spanned<u32>>,
);

fn validate_plan(
    (plan, plan_start, plan_months): PlanFields<'_>,
    problem: &mut impl FnMut(Range<usize>, String),
) -> Option<super::Plan> {
    use crate::billing::plans::PlanError;
    let plan = plan.as_ref()?;
    // An unreadable start is its own problem (then not also a missing one).
    let start = plan_start.as_ref().map(|s| {
        chrono::DateTime::parse_from_rfc3339(s.get_ref()).map_or_else(
            |_| {
                problem(
                    s.span(),
                    format!(
                        "plan_start `{}` is not an RFC 3339 time with an offset",
                        s.get_ref()
                    ),
                );
                None
            },
            |t| Some(t.timestamp()),
        )
    });
    let months = plan_months.as_ref().map(|m| *m.get_ref());
    match super::Plan::from_parts(plan.get_ref(), start.map(|s| s.unwrap_or(0)), months) {
        Ok(p) if start != Some(None) => return Some(p),
        Ok(_) => return None,
        Err(problems) => {
            for p in problems {
                let at = match &p {
                    PlanError::Months(_) | PlanError::NotMonthly("plan_months") => {
                        plan_months.as_ref().map(|m| m.span())
                    }
                    PlanError::NotMonthly(_) => plan_start.as_ref().map(|s| s.span()),
                    _ => None,
                };
                problem(at.unwrap_or_else(|| plan.span()), p.to_string());
            }
        }
    }
    None
}

/// `[lifecycle]`: periods of at least a second, a valid time of day.
fn validate_lifecycle(
    section: Option<&Spanned<super::LifecycleSection>>,
    problem: &mut impl FnMut(Range<usize>, String),
) -> super::LifecycleConfig {
    let mut l = super::LifecycleConfig::default();
    let Some(section) = section else { return l };
    let span = section.span();
    let s = section.get_ref();
    for (key, value, field) in [
        (
            "retention_seconds",
            s.retention_seconds,
            &mut l.retention_seconds,
        ),
        ("grace_seconds", s.grace_seconds, &mut l.grace_seconds),
        ("frozen_seconds", s.frozen_seconds, &mut l.frozen_seconds),
    ] {
        if let Some(v) = value {
            if v < 1 {
                problem(
                    span.clone(),
                    format!("[lifecycle]: {key} must be at least 1"),
                );
            }
            *field = v;
        }
    }
    if let Some(t) = &s.package_expiry_time {
        match chrono::NaiveTime::parse_from_str(t, "%H:%M:%S") {
            Ok(t) => l.package_expiry_time = t,
            Err(_) => problem(
                span.clone(),
                format!("[lifecycle]: package_expiry_time `{t}` is not HH:MM:SS"),
            ),
        }
    }
    l
}

/// `[api]`: a unix socket by default; TCP only with TLS and a token.
fn validate_api(
    section: Option<&Spanned<ApiSection>>,
    instance: &str,
    host: &dyn HostCheck,
    problem: &mut impl FnMut(Range<usize>, String),
) -> ApiConfig {
    let mut api = ApiConfig::for_instance(instance);
    let Some(section) = section else {
        return api;
    };
    let span = section.span();
    let a = section.get_ref();
    api.enabled = a.enabled.unwrap_or(true);
    if let Some(socket) = &a.socket {
        if !socket.is_absolute() {
            problem(
                span.clone(),
                "[api]: socket must be an absolute path".to_owned(),
            );
        }
        api.socket = socket.clone();
    }
    if let Some(group) = &a.group {
        match nix::unistd::Group::from_name(group) {
            Ok(Some(_)) => {}
            _ => problem(
                span.clone(),
                format!("[api]: group `{group}` does not exist on this host"),
            ),
        }
        api.group = Some(group.clone());
    }
    let tls = (&a.tls_cert, &a.tls_key, &a.token_file);
    match (&a.tcp_listen, tls) {
        (None, (None, None, None)) => {}
        (None, _) => problem(
            span.clone(),
            "[api]: tls_cert, tls_key and token_file only go with tcp_listen".to_owned(),
        ),
        (Some(listen), (Some(cert), Some(key), Some(token))) => {
            match listen.parse::<SocketAddr>() {
                Ok(listen) => {
                    api.tcp = Some(ApiTcpConfig {
                        listen,
                        tls_cert: cert.clone(),
                        tls_key: key.clone(),
                        token_file: token.clone(),
                    })
                }
                Err(_) => problem(
                    span.clone(),
                    format!("[api]: tcp_listen `{listen}` is not an address:port"),
                ),
            }
            for (key, path) in [("tls_cert", cert), ("tls_key", key), ("token_file", token)] {
                if !path.is_absolute() {
                    problem(span.clone(), format!("[api]: {key} must be an absolute path"));
                }
                if key != "tls_cert"
                    && let Some(Exposure::Refuse(m)) =
                        host.file_mode(path).map(|mode| permissions::secret_file(path, mode))
                {
                    problem(span.clone(), format!("[api]: {m}"));
                }
            }
        }
        (Some(_), _) => problem(
            span.clone(),
            "[api]: tcp_listen needs tls_cert, tls_key and token_file (the API is never served over TCP without TLS and a token)".to_owned(),
        ),
    }
    api
}

fn problems_push_global(problem: &mut impl FnMut(Range<usize>, String), message: &str) {
    // Problems about the file as a whole point at its start.
    problem(0..0, message.to_owned());
}

/// Whether an address can be an EIP (not unspecified, loopback, multicast or broadcast).
pub(crate) fn is_assignable(addr: IpAddr) -> bool {
    !(addr.is_unspecified()
        || addr.is_loopback()
        || addr.is_multicast()
        || matches!(addr, IpAddr::V4(v4) if v4.is_broadcast()))
}

/// `[A-Za-z0-9_.-]{1,64}`.
pub(crate) fn valid_group_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

fn valid_instance(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}
