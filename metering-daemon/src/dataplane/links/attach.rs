//! Attaching both programs to every uplink, taking over what a previous daemon pinned, and the
//! check that finds an uplink without our programs and attaches them again.

use std::{
    io,
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use aya::{
    programs::{
        LinkOrder, TcAttachType,
        links::{FdLink, LinkError, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions},
    },
    util::KernelVersion,
};
use metering_common::{PROG_EGRESS, PROG_INGRESS};
use tracing::{debug, warn};

use super::{LossCause, UplinkEvent, UplinkState, UplinkStatus, query, watch::LinkNotice};
use crate::{
    config::{AttachMode, DataplaneConfig, OnExit},
    dataplane::{Dataplane, DataplaneError, load::remove_pin},
};

/// Both programs, their hooks and the name of each direction in pins and logs.
const DIRECTIONS: [(&str, TcAttachType, &str); 2] = [
    (PROG_INGRESS, TcAttachType::Ingress, "ingress"),
    (PROG_EGRESS, TcAttachType::Egress, "egress"),
];

fn wall_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// One attached program.
enum AttachedLink {
    /// A TCX link: alive while this fd or its pin exists.
    Tcx { link: FdLink, pin: Option<PathBuf> },
    /// A netlink clsact filter: detached when this is dropped.
    Netlink(SchedClassifierLink),
}

impl AttachedLink {
    /// Takes the program off its interface, wherever that is now: the pin (if any) goes first,
    /// so closing the last fd detaches the link.
    fn release(self) {
        match self {
            AttachedLink::Tcx { link, pin } => {
                if let Some(pin) = pin {
                    remove_pin(&pin);
                }
                drop(link);
            }
            AttachedLink::Netlink(link) => drop(link),
        }
    }
}

/// Both programs on one interface.
struct Attachment {
    ifindex: u32,
    links: Vec<AttachedLink>,
}

impl Attachment {
    fn release(self) {
        self.links.into_iter().for_each(AttachedLink::release);
    }
}

/// One configured uplink and what we know about it.
struct Uplink {
    name: String,
    attachment: Option<Attachment>,
    state: UplinkState,
    /// UNIX seconds since which it is in `state`.
    since: f64,
    /// The last time the programs were seen on the interface with this name: a loss found
    /// later is dated from here.
    last_seen: f64,
    detachments: u64,
    /// Closed gaps only; the open one is added when reported.
    detached_seconds: f64,
}

impl Uplink {
    /// Records `attachment` as this uplink's from `now`. A taken-over link never stopped
    /// counting; otherwise the time since the uplink was last metered is a gap.
    fn attached(
        &mut self,
        attachment: Attachment,
        now: f64,
        mode: AttachMode,
        took_over: bool,
    ) -> UplinkEvent {
        let gap = (!took_over && self.since < now).then_some((self.since, now));
        if let Some((from, to)) = gap {
            self.detached_seconds += to - from;
        }
        let ifindex = attachment.ifindex;
        self.attachment = Some(attachment);
        self.state = UplinkState::Attached;
        self.since = now;
        self.last_seen = now;
        UplinkEvent::Attached {
            interface: self.name.clone(),
            ifindex,
            mode: mode_name(mode),
            took_over,
            gap,
        }
    }
}

/// Every configured uplink, in config order.
pub(in crate::dataplane) struct Uplinks {
    mode: AttachMode,
    keep: bool,
    list: Vec<Uplink>,
    /// Kernel ids of our two programs (ingress, egress), once loaded.
    program_ids: Option<[u32; 2]>,
}

impl Uplinks {
    pub(in crate::dataplane) fn new(config: &DataplaneConfig) -> Self {
        Self {
            mode: resolve_mode(config.attach_mode),
            keep: config.on_exit == OnExit::Keep,
            list: config
                .interfaces
                .iter()
                .map(|name| Uplink {
                    name: name.clone(),
                    attachment: None,
                    state: UplinkState::Detached,
                    since: 0.0,
                    last_seen: 0.0,
                    detachments: 0,
                    detached_seconds: 0.0,
                })
                .collect(),
            program_ids: None,
        }
    }
}

impl Dataplane {
    /// [`Dataplane::attach_since`] for a data plane that counted nothing before now.
    pub fn attach(&mut self) -> Result<Vec<UplinkEvent>, DataplaneError> {
        self.attach_since(f64::INFINITY)
    }

    /// Attaches both programs to every uplink. A link pinned by an earlier daemon is taken
    /// over and atomically switched to this daemon's program, so counting never stops; a pinned
    /// link that lost its interface, or sits on an interface that no longer has the name, is
    /// replaced by a fresh attachment. An uplink that does not exist yet is attached when it
    /// appears ([`Dataplane::check_uplinks`]).
    ///
    /// `unmetered_since` (UNIX seconds): since when traffic may have gone uncounted if the
    /// programs were not in place (the last committed round when the maps are reused); the gaps
    /// reported are dated from it. Only an interface that exists and refuses the programs is an
    /// error.
    pub fn attach_since(
        &mut self,
        unmetered_since: f64,
    ) -> Result<Vec<UplinkEvent>, DataplaneError> {
        let now = wall_now();
        let origin = unmetered_since.min(now);
        let mut events = Vec::new();
        let mut list = std::mem::take(&mut self.uplinks.list);
        let mut result = Ok(());
        for up in &mut list {
            up.since = origin;
            up.last_seen = origin;
            up.state = UplinkState::Detached;
            if let Err(e) = self.take_over(up, now, &mut events) {
                result = Err(e);
                break;
            }
            if up.state == UplinkState::Missing {
                continue; // a pinned link without its interface: reported by take_over
            }
            if up.attachment.is_none() && query::ifindex_of(&up.name).is_none() {
                up.state = UplinkState::Missing;
                up.detachments += 1;
                events.push(UplinkEvent::Lost {
                    interface: up.name.clone(),
                    ifindex: None,
                    cause: LossCause::MissingAtStart,
                    since: origin,
                });
                continue;
            }
            if let Err(e) = self.check_uplink(up, now, &mut events) {
                result = Err(e);
                break;
            }
        }
        self.uplinks.list = list;
        result.map(|()| events)
    }

    /// Checks that our programs are on the interface each uplink name has now, and attaches
    /// them where they are not (an uplink deleted and recreated, renamed away and replaced, or
    /// stripped of our program). Maps are not touched. Failures are reported as events and
    /// retried at the next check.
    pub fn check_uplinks(&mut self) -> Vec<UplinkEvent> {
        let now = wall_now();
        let mut events = Vec::new();
        let mut list = std::mem::take(&mut self.uplinks.list);
        for up in &mut list {
            // A failed attach is already an event; the next check tries again.
            let _ = self.check_uplink(up, now, &mut events);
        }
        self.uplinks.list = list;
        events
    }

    /// Whether a link notice concerns an uplink: its name, or the interface one is on.
    pub fn concerns_uplink(&self, notice: &LinkNotice) -> bool {
        self.uplinks.list.iter().any(|up| {
            notice.name.as_deref() == Some(up.name.as_str())
                || up
                    .attachment
                    .as_ref()
                    .is_some_and(|a| a.ifindex == notice.ifindex)
        })
    }

    /// Every uplink's attachment state.
    pub fn uplink_status(&self) -> Vec<UplinkStatus> {
        let now = wall_now();
        let mode = mode_name(self.uplinks.mode);
        self.uplinks
            .list
            .iter()
            .map(|up| UplinkStatus {
                interface: up.name.clone(),
                state: up.state,
                ifindex: up.attachment.as_ref().map(|a| a.ifindex),
                mode: mode.to_owned(),
                since: up.since.floor() as i64,
                detachments: up.detachments,
                detached_seconds: up.detached_seconds
                    + if up.state == UplinkState::Attached {
                        0.0
                    } else {
                        (now - up.since).max(0.0)
                    },
            })
            .collect()
    }

    /// Detaches every program this process attached (and unpins their links), keeping the maps
    /// and what they hold; [`Dataplane::attach`] puts the programs back. Packets in between are
    /// not counted, so the daemon never calls this while it runs: it is for benchmarks that
    /// need a "no program" baseline beside the same provisioned maps, and for shutdown.
    pub fn detach(&mut self) {
        let now = wall_now();
        for up in &mut self.uplinks.list {
            if let Some(attachment) = up.attachment.take() {
                attachment.release();
            }
            up.state = UplinkState::Detached;
            up.since = now;
        }
        tracing::info!("programs detached");
    }

    /// Takes over the links a previous daemon pinned for `up` (TCX, `on_exit = "keep"`), and
    /// keeps them only if they are on the interface that has the name now.
    fn take_over(
        &mut self,
        up: &mut Uplink,
        now: f64,
        events: &mut Vec<UplinkEvent>,
    ) -> Result<(), DataplaneError> {
        if self.uplinks.mode == AttachMode::Netlink {
            return Ok(());
        }
        let pins: Vec<PathBuf> = DIRECTIONS
            .iter()
            .map(|(_, _, direction)| self.link_pin(&up.name, direction))
            .collect();
        if !pins.iter().any(|p| p.exists()) {
            return Ok(());
        }
        let mut links = Vec::new();
        let mut severed = None;
        for ((program, _, direction), pin) in DIRECTIONS.iter().zip(&pins) {
            match self.take_over_one(program, pin) {
                Ok(link) => links.push(link),
                Err(e) => {
                    debug!(interface = up.name, direction, error = %e, "pinned link not taken over");
                    severed = Some(e);
                    break;
                }
            }
        }
        let current = query::ifindex_of(&up.name);
        let cause = match (&severed, current) {
            (Some(_), _) => Some(LossCause::PinnedLinkSevered),
            (None, None) => Some(LossCause::PinnedLinkElsewhere),
            (None, Some(ifindex)) => match self.programs_in_place(ifindex) {
                Ok(true) => None,
                Ok(false) | Err(_) => Some(LossCause::PinnedLinkElsewhere),
            },
        };
        match (cause, current) {
            (None, Some(ifindex)) => {
                tracing::info!(interface = up.name, ifindex, "taking over pinned link");
                let attachment = Attachment { ifindex, links };
                events.push(up.attached(attachment, now, self.uplinks.mode, true));
            }
            (cause, _) => {
                links.into_iter().for_each(AttachedLink::release);
                for pin in &pins {
                    remove_pin(pin);
                }
                up.detachments += 1;
                up.state = if current.is_some() {
                    UplinkState::Detached
                } else {
                    UplinkState::Missing
                };
                events.push(UplinkEvent::Lost {
                    interface: up.name.clone(),
                    ifindex: None,
                    cause: cause.unwrap_or(LossCause::PinnedLinkElsewhere),
                    since: up.since,
                });
            }
        }
        Ok(())
    }

    /// Opens a pinned TCX link and atomically swaps this daemon's program into it
    /// (`bpf_link_update`); fails with ENOLINK when the link lost its interface.
    fn take_over_one(
        &mut self,
        program: &'static str,
        pin: &std::path::Path,
    ) -> Result<AttachedLink, DataplaneError> {
        let link_err = |op: &'static str| {
            let path = pin.to_owned();
            move |e: Box<dyn std::error::Error + Send + Sync>| DataplaneError::Link {
                path,
                op,
                source: e,
            }
        };
        let pinned = match PinnedLink::from_pin(pin) {
            Ok(pinned) => pinned,
            Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => {
                return Err(link_err("open pinned link")(Box::new(e.io_error)));
            }
            Err(e) => return Err(link_err("open pinned link")(Box::new(e))),
        };
        let link = SchedClassifierLink::try_from(FdLink::from(pinned))
            .map_err(|e| link_err("adopt pinned link")(Box::new(e)))?;
        let prog = self.loaded_program(program)?;
        let id = prog
            .attach_to_link(link)
            .map_err(|e| link_err("replace the program in the pinned link")(Box::new(e)))?;
        let link = prog
            .take_link(id)
            .map_err(|e| link_err("take link")(Box::new(e)))?;
        let link = FdLink::try_from(link).map_err(|e| link_err("convert link")(Box::new(e)))?;
        // The pin file stays; the kernel link object was updated in place.
        Ok(AttachedLink::Tcx {
            link,
            pin: Some(pin.to_owned()),
        })
    }

    /// The check of one uplink; see [`Dataplane::check_uplinks`]. Errs only when the interface
    /// exists and attaching to it failed (also reported as an event).
    fn check_uplink(
        &mut self,
        up: &mut Uplink,
        now: f64,
        events: &mut Vec<UplinkEvent>,
    ) -> Result<(), DataplaneError> {
        let current = query::ifindex_of(&up.name);
        if let (Some(attachment), Some(ifindex)) = (&up.attachment, current)
            && attachment.ifindex == ifindex
        {
            match self.programs_in_place(ifindex) {
                Ok(true) => {
                    up.last_seen = now;
                    return Ok(());
                }
                Ok(false) => {}
                Err(e) if query::ifindex_of(&up.name) == Some(ifindex) => {
                    // Cannot tell; replacing a working attachment on a guess would cost a gap.
                    warn!(interface = up.name, error = %e, "cannot verify the programs on the uplink; checking again later");
                    return Ok(());
                }
                Err(_) => {}
            }
        }

        // The name may have moved while the programs were looked up (a rename under way): what
        // is lost, and why, is judged on the name as it is now.
        let current = query::ifindex_of(&up.name);
        // Not metered on the interface that has the name now.
        if up.state == UplinkState::Attached {
            let old = up.attachment.as_ref().map(|a| a.ifindex);
            let cause = match (old, current) {
                (Some(o), Some(c)) if o == c => LossCause::ProgramRemoved,
                (Some(o), Some(c)) => query::name_of(o)
                    .map_or(LossCause::Rebuilt { ifindex: c }, |to| LossCause::Renamed {
                        to,
                    }),
                (Some(o), None) => {
                    query::name_of(o).map_or(LossCause::Deleted, |to| LossCause::Renamed { to })
                }
                (None, _) => LossCause::ProgramRemoved,
            };
            up.state = UplinkState::Detached;
            up.since = up.last_seen;
            up.detachments += 1;
            events.push(UplinkEvent::Lost {
                interface: up.name.clone(),
                ifindex: old,
                cause,
                since: up.since,
            });
        }
        // Off wherever it is (a renamed interface is no longer an uplink) before attaching
        // again: a clsact filter could otherwise be replaced by its own successor.
        if let Some(attachment) = up.attachment.take() {
            attachment.release();
        }
        if current.is_none() {
            up.state = UplinkState::Missing;
            return Ok(());
        }
        match self.attach_fresh(&up.name) {
            Ok(attachment) => {
                events.push(up.attached(attachment, now, self.uplinks.mode, false));
                Ok(())
            }
            Err(e) => {
                up.state = UplinkState::Detached;
                events.push(UplinkEvent::AttachFailed {
                    interface: up.name.clone(),
                    error: e.to_string(),
                });
                Err(e)
            }
        }
    }

    /// Whether both our programs are on interface `ifindex`.
    fn programs_in_place(&mut self, ifindex: u32) -> io::Result<bool> {
        let ids = self.program_ids().map_err(io::Error::other)?;
        for ((_, attach_type, _), id) in DIRECTIONS.iter().zip(ids) {
            if !query::is_attached(self.uplinks.mode, ifindex, *attach_type, id)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn program_ids(&mut self) -> Result<[u32; 2], DataplaneError> {
        if let Some(ids) = self.uplinks.program_ids {
            return Ok(ids);
        }
        let mut ids = [0; 2];
        for ((program, _, _), id) in DIRECTIONS.iter().zip(&mut ids) {
            *id = self
                .loaded_program(program)?
                .info()
                .map_err(|source| DataplaneError::Program {
                    program,
                    op: "read info".to_owned(),
                    source,
                })?
                .id();
        }
        self.uplinks.program_ids = Some(ids);
        Ok(ids)
    }

    /// Attaches both programs to the interface called `name` now (and pins the links when
    /// they must outlive the daemon). Nothing is left attached if either fails.
    fn attach_fresh(&mut self, name: &str) -> Result<Attachment, DataplaneError> {
        let ifindex = query::ifindex_of(name).ok_or_else(|| DataplaneError::Netlink {
            interface: name.to_owned(),
            op: "look up interface",
            source: io::Error::from(io::ErrorKind::NotFound),
        })?;
        if self.uplinks.mode == AttachMode::Netlink {
            // EEXIST is fine: the qdisc may be there already.
            if let Err(e) = tc::qdisc_add_clsact(name) {
                debug!(interface = name, error = %e, "clsact qdisc not added");
            }
        }
        let mut links = Vec::new();
        for (program, attach_type, direction) in DIRECTIONS {
            match self.attach_program(program, name, attach_type, direction) {
                Ok(link) => links.push(link),
                Err(e) => {
                    links.into_iter().for_each(AttachedLink::release);
                    return Err(e);
                }
            }
        }
        Ok(Attachment { ifindex, links })
    }

    fn attach_program(
        &mut self,
        program: &'static str,
        name: &str,
        attach_type: TcAttachType,
        direction: &str,
    ) -> Result<AttachedLink, DataplaneError> {
        let mode = self.uplinks.mode;
        let pin = (self.uplinks.keep && mode != AttachMode::Netlink)
            .then(|| self.link_pin(name, direction));
        let prog_err = |op: String| {
            move |source| DataplaneError::Program {
                program,
                op,
                source,
            }
        };
        let prog = self.loaded_program(program)?;
        if mode == AttachMode::Netlink {
            let id = prog
                .attach_with_options(
                    name,
                    attach_type,
                    TcAttachOptions::Netlink(NlOptions::default()),
                )
                .map_err(prog_err(format!("attach to {name} via netlink")))?;
            let link = prog.take_link(id).map_err(prog_err("take link".into()))?;
            return Ok(AttachedLink::Netlink(link));
        }
        let id = prog
            .attach_with_options(
                name,
                attach_type,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(prog_err(format!("attach to {name} via TCX")))?;
        let link = prog.take_link(id).map_err(prog_err("take link".into()))?;
        let link_err = |path: PathBuf, op: &'static str| {
            move |e: Box<dyn std::error::Error + Send + Sync>| DataplaneError::Link {
                path,
                op,
                source: e,
            }
        };
        let link =
            FdLink::try_from(link).map_err(|e| link_err(PathBuf::new(), "convert")(Box::new(e)))?;
        let Some(pin) = pin else {
            return Ok(AttachedLink::Tcx { link, pin: None });
        };
        // A pin left by a link that was released elsewhere would make pinning fail.
        remove_pin(&pin);
        let pinned = link
            .pin(&pin)
            .map_err(|e| link_err(pin.clone(), "pin")(Box::new(e)))?;
        Ok(AttachedLink::Tcx {
            link: FdLink::from(pinned),
            pin: Some(pin),
        })
    }

    fn link_pin(&self, interface: &str, direction: &str) -> PathBuf {
        self.pin_dir.join(format!("link_{interface}_{direction}"))
    }
}

fn mode_name(mode: AttachMode) -> &'static str {
    match mode {
        AttachMode::Netlink => "netlink",
        _ => "tcx",
    }
}

fn resolve_mode(mode: AttachMode) -> AttachMode {
    mode_for_kernel(mode, KernelVersion::current().ok())
}

/// `auto`: TCX from 6.6 (where it appeared), netlink clsact filters before it or when the
/// kernel's version cannot be read.
fn mode_for_kernel(mode: AttachMode, kernel: Option<KernelVersion>) -> AttachMode {
    match mode {
        AttachMode::Auto if kernel.is_some_and(|v| v >= KernelVersion::new(6, 6, 0)) => {
            AttachMode::Tcx
        }
        AttachMode::Auto => AttachMode::Netlink,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_falls_back_to_netlink_on_a_kernel_without_tcx() {
        let at = |major, minor| Some(KernelVersion::new(major, minor, 0));
        assert_eq!(
            mode_for_kernel(AttachMode::Auto, at(5, 15)),
            AttachMode::Netlink
        );
        assert_eq!(
            mode_for_kernel(AttachMode::Auto, at(6, 5)),
            AttachMode::Netlink
        );
        assert_eq!(mode_for_kernel(AttachMode::Auto, None), AttachMode::Netlink);
        assert_eq!(mode_for_kernel(AttachMode::Auto, at(6, 6)), AttachMode::Tcx);
        assert_eq!(
            mode_for_kernel(AttachMode::Auto, at(6, 18)),
            AttachMode::Tcx
        );
        assert_eq!(mode_for_kernel(AttachMode::Tcx, at(5, 15)), AttachMode::Tcx);
        assert_eq!(
            mode_for_kernel(AttachMode::Netlink, at(6, 18)),
            AttachMode::Netlink
        );
    }
}
