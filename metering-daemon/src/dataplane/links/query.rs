//! What the kernel says about interfaces and the programs on them. Read-only.

use std::{ffi::CStr, io};

use aya::programs::TcAttachType;
use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::config::AttachMode;

/// The index of the interface called `name` in this network namespace, if there is one.
pub(super) fn ifindex_of(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

/// The current name of interface `ifindex`, if it still exists.
pub(super) fn name_of(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname may write, NUL included.
    let ret = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if ret.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// Whether the program with id `program_id` is attached at `direction` of interface
/// `ifindex`, the way `mode` attaches.
pub(super) fn is_attached(
    mode: AttachMode,
    ifindex: u32,
    direction: TcAttachType,
    program_id: u32,
) -> io::Result<bool> {
    match mode {
        AttachMode::Netlink => {
            Ok(bpf_filter_program_ids(ifindex, direction)?.contains(&program_id))
        }
        _ => Ok(tcx_program_ids(ifindex, direction)?.contains(&program_id)),
    }
}

/// Ids of the programs TCX runs at `direction` of `ifindex` (`BPF_PROG_QUERY`). aya's
/// `query_tcx` also opens every program by its id, which takes CAP_SYS_ADMIN; the ids alone
/// take CAP_NET_ADMIN, so the daemon does without CAP_SYS_ADMIN.
fn tcx_program_ids(ifindex: u32, direction: TcAttachType) -> io::Result<Vec<u32>> {
    /// The `BPF_PROG_QUERY` part of `union bpf_attr`.
    #[repr(C)]
    #[derive(Default)]
    struct QueryAttr {
        target_ifindex: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: u32,
        prog_attach_flags: u64,
        link_ids: u64,
        link_attach_flags: u64,
        revision: u64,
    }
    const BPF_PROG_QUERY: libc::c_long = 16;
    const BPF_TCX_INGRESS: u32 = 46;
    const BPF_TCX_EGRESS: u32 = 47;
    let mut ids = vec![0u32; 16];
    loop {
        let mut attr = QueryAttr {
            target_ifindex: ifindex,
            attach_type: match direction {
                TcAttachType::Egress => BPF_TCX_EGRESS,
                _ => BPF_TCX_INGRESS,
            },
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: ids.len() as u32,
            ..Default::default()
        };
        // SAFETY: `attr` is a valid BPF_PROG_QUERY attribute whose `prog_ids` points at
        // `prog_cnt` writable u32s; the kernel writes at most that many.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_QUERY,
                &mut attr as *mut QueryAttr,
                std::mem::size_of::<QueryAttr>() as u32,
            )
        };
        if ret == 0 {
            ids.truncate(attr.prog_cnt as usize);
            return Ok(ids);
        }
        let e = io::Error::last_os_error();
        // More programs than room: the kernel says how many there are.
        if e.raw_os_error() == Some(libc::ENOSPC) && attr.prog_cnt as usize > ids.len() {
            ids.resize(attr.prog_cnt as usize, 0);
            continue;
        }
        return Err(e);
    }
}

/// Program ids of the `bpf` filters on the clsact hook `direction` of `ifindex`, from an
/// `RTM_GETTFILTER` dump (what `tc filter show dev X ingress` prints). aya has no query for
/// netlink-attached filters; netlink-packet-route parses the reply.
fn bpf_filter_program_ids(ifindex: u32, direction: TcAttachType) -> io::Result<Vec<u32>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;

    let mut message = TcMessage::default();
    message.header.index = ifindex as i32;
    message.header.parent = TcHandle {
        major: 0xffff,
        minor: match direction {
            TcAttachType::Egress => TcHandle::MIN_EGRESS,
            _ => TcHandle::MIN_INGRESS,
        },
    };
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetTrafficFilter(message));
    request.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    request.header.sequence_number = 1;
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut ids = Vec::new();
    // A dump ends with NLMSG_DONE; bounded so a misbehaving socket cannot spin forever.
    for _ in 0..10_000 {
        let (data, _) = socket.recv_from_full()?;
        let mut offset = 0;
        while offset < data.len() {
            let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::Done(_) => return Ok(ids),
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewTrafficFilter(filter)) => {
                    ids.extend(filter.attributes.iter().flat_map(|attr| {
                        match attr {
                            TcAttribute::Options(options) => options
                                .iter()
                                .filter_map(|o| match o {
                                    TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => Some(*id),
                                    _ => None,
                                })
                                .collect(),
                            _ => Vec::new(),
                        }
                    }));
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
    Err(io::Error::other("tc filter dump did not end"))
}
