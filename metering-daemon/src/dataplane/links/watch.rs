//! The kernel's link notifications (rtnetlink `RTNLGRP_LINK`, and `RTNLGRP_TC` for filters
//! removed by `tc` in netlink attach mode), so the daemon checks an uplink the moment it is
//! deleted, created, renamed or loses a filter, instead of at the next round.
//!
//! A notification is only a hint to check: the check reads the kernel's current state, so a
//! burst of notices, one lost to a full socket buffer, or one about an unrelated change costs
//! nothing but a check. The socket belongs to the network namespace the daemon runs in.

use std::io;

use futures::StreamExt as _;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::{RouteNetlinkMessage, link::LinkAttribute};
use rtnetlink::MulticastGroup;

/// Something happened to interface `ifindex`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkNotice {
    pub ifindex: u32,
    /// The interface's name after the change (link notices carry it; filter notices do not).
    pub name: Option<String>,
}

type Messages = futures::channel::mpsc::UnboundedReceiver<(
    netlink_packet_core::NetlinkMessage<RouteNetlinkMessage>,
    netlink_sys::SocketAddr,
)>;

/// A subscription to link notifications. Needs a tokio runtime (the socket is polled by a
/// task of its own, aborted on drop).
pub struct LinkWatcher {
    messages: Messages,
    connection: tokio::task::JoinHandle<()>,
}

impl LinkWatcher {
    pub fn subscribe() -> io::Result<Self> {
        let (connection, _handle, messages) =
            rtnetlink::new_multicast_connection(&[MulticastGroup::Link, MulticastGroup::Tc])?;
        Ok(Self {
            messages,
            connection: tokio::spawn(connection),
        })
    }

    /// The next notice about a link or a filter; `None` if the socket closed (the daemon then
    /// relies on its periodic checks).
    pub async fn next(&mut self) -> Option<LinkNotice> {
        while let Some((message, _)) = self.messages.next().await {
            let notice = match message.payload {
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewLink(link) | RouteNetlinkMessage::DelLink(link),
                ) => LinkNotice {
                    ifindex: link.header.index,
                    name: link.attributes.into_iter().find_map(|a| match a {
                        LinkAttribute::IfName(name) => Some(name),
                        _ => None,
                    }),
                },
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::DelTrafficFilter(tc)
                    | RouteNetlinkMessage::DelQueueDiscipline(tc),
                ) => LinkNotice {
                    ifindex: tc.header.index as u32,
                    name: None,
                },
                _ => continue,
            };
            return Some(notice);
        }
        None
    }
}

impl Drop for LinkWatcher {
    fn drop(&mut self) {
        self.connection.abort();
    }
}
