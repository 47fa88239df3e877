//! The asynchronous rtnetlink connection of the route table: one `netlink-proto`
//! connection, batched route requests in a bounded window, dumps and single look-ups.
//! Knows the wire, not the policy (that is `kernel/mod.rs`).

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use futures::channel::mpsc::UnboundedReceiver;
use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use rtnetlink::packet_route::route::{
    RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::proto::{ConnectionHandle, ReplyExpectation};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, AsyncSocket, SocketAddr};

use super::{
    ext_ack_text, header_table, parse_echo, route_table, ENOENT, RTM_DELROUTE, RTM_NEWROUTE,
};

pub(crate) type Msg = NetlinkMessage<RouteNetlinkMessage>;

/// Asked of the kernel for our socket's receive buffer. The kernel caps it at
/// `net.core.rmem_max` (doubled: 416 KiB by default); batches are sized to what we got.
pub(crate) const RCVBUF: usize = 4 << 20;
/// How long one request may wait for its answers before the connection is declared broken.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// A dump interrupted by concurrent changes (`NLM_F_DUMP_INTR`) is repeated this often.
const DUMP_TRIES: usize = 5;

/// What went wrong at the socket level (not a single route's rejection).
#[derive(Debug)]
pub(crate) enum NlError {
    /// The connection task ended (socket error); a new connection is needed.
    Closed,
    /// No answer within [`ANSWER_TIMEOUT`]: answers were lost, or the kernel is stuck.
    Timeout,
    /// The kernel refused the request as a whole.
    Kernel(i32, Option<String>),
    /// The kernel kept interrupting a dump.
    DumpInterrupted,
    /// The receive buffer overflowed: answers were lost.
    Overrun,
}

/// A rejection of one message of a batch, as echoed by the kernel.
#[derive(Debug, Clone)]
pub(crate) struct Rejection {
    /// RTM_NEWROUTE or RTM_DELROUTE.
    pub is_delete: bool,
    /// The prefix of the rejected message (None if the echo could not be parsed).
    pub prefix: Option<ipnet::IpNet>,
    /// Positive errno.
    pub errno: i32,
    /// The kernel's extended-ack text, e.g. "Nexthop has invalid gateway".
    pub text: Option<String>,
}

pub(crate) struct Netlink {
    handle: ConnectionHandle<RouteNetlinkMessage>,
    /// Messages the connection could not match to a pending request: the kernel's errors for
    /// messages sent without NLM_F_ACK, and overrun notices.
    unsolicited: UnboundedReceiver<(Msg, SocketAddr)>,
    task: tokio::task::JoinHandle<()>,
    /// The receive buffer we got (the kernel's accounting, so about twice what it holds).
    rcvbuf: usize,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Netlink {
    /// Opens an rtnetlink socket in the calling thread's network namespace and spawns its
    /// connection task on the current tokio runtime.
    pub fn open(rcvbuf: usize) -> io::Result<Netlink> {
        let (mut conn, handle, unsolicited) =
            rtnetlink::proto::new_connection::<RouteNetlinkMessage>(NETLINK_ROUTE)?;
        let socket = conn.socket_mut().socket_mut();
        // Best effort: without them batches are smaller, dumps are filtered here instead of in
        // the kernel, and rejections carry no text.
        let _ = socket.set_rx_buf_sz(i32::try_from(rcvbuf).unwrap_or(i32::MAX));
        let _ = socket.set_netlink_get_strict_chk(true);
        let _ = socket.set_ext_ack(true);
        let rcvbuf = socket.get_rx_buf_sz().unwrap_or(212_992);
        let task = tokio::spawn(conn);
        Ok(Netlink {
            handle,
            unsolicited,
            task,
            rcvbuf,
        })
    }

    /// The socket's receive buffer as the kernel accounts it.
    pub fn rcvbuf(&self) -> usize {
        self.rcvbuf
    }

    /// Whether the connection task has ended (the socket failed).
    pub fn is_closed(&self) -> bool {
        self.task.is_finished()
    }

    /// Sends `batches` (each one datagram), at most `window` at once, and returns every
    /// rejection. Only the last message of a datagram asks for an acknowledgement: the kernel
    /// handles a datagram's messages in order, so that ack means every earlier one was
    /// handled; the earlier ones' rejections arrive unsolicited, and so does the notice that
    /// the receive buffer overflowed (answers lost), which ends the wait at once.
    pub async fn send_all(
        &mut self,
        batches: impl Iterator<Item = Vec<Msg>> + Send,
        window: usize,
    ) -> Result<Vec<Rejection>, NlError> {
        let Netlink {
            handle,
            unsolicited,
            ..
        } = self;
        let handle = &*handle;
        let mut late = Vec::new();
        let all = futures::stream::iter(batches)
            .map(|b| send_batch(handle, b))
            .buffer_unordered(window)
            .try_collect::<Vec<Vec<Rejection>>>();
        let watch = async {
            while let Some((msg, _)) = unsolicited.next().await {
                match &msg.payload {
                    NetlinkPayload::Error(e) => {
                        late.extend(rejection(e.raw_code(), &e.header, msg.header.flags))
                    }
                    NetlinkPayload::Overrun(_) => return NlError::Overrun,
                    _ => {}
                }
            }
            NlError::Closed
        };
        futures::pin_mut!(all, watch);
        let acked = match futures::future::select(all, watch).await {
            futures::future::Either::Left((acked, _)) => acked?,
            futures::future::Either::Right((e, _)) => return Err(e),
        };
        // Rejections that arrived with the last acks and were not yet taken.
        while let Ok((msg, _)) = unsolicited.try_recv() {
            match &msg.payload {
                NetlinkPayload::Error(e) => {
                    late.extend(rejection(e.raw_code(), &e.header, msg.header.flags))
                }
                NetlinkPayload::Overrun(_) => return Err(NlError::Overrun),
                _ => {}
            }
        }
        late.extend(acked.into_iter().flatten());
        Ok(late)
    }

    /// Sends one request and collects its answers (inner messages); an error answer fails it.
    async fn request(&self, msg: Msg) -> Result<Vec<Msg>, NlError> {
        let mut answers = self
            .handle
            .request(msg, SocketAddr::new(0, 0))
            .map_err(|_| NlError::Closed)?;
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout(ANSWER_TIMEOUT, answers.next()).await {
                Err(_) => return Err(NlError::Timeout),
                Ok(None) => break,
                Ok(Some(msg)) => match &msg.payload {
                    NetlinkPayload::Error(e) if e.code.is_some() => {
                        let text = ext_ack_text(&e.header, msg.header.flags);
                        return Err(NlError::Kernel(e.raw_code().abs(), text));
                    }
                    NetlinkPayload::InnerMessage(_) => out.push(msg),
                    _ => {}
                },
            }
        }
        if out.is_empty() && self.task.is_finished() {
            return Err(NlError::Closed);
        }
        Ok(out)
    }

    /// All routes of `family` in `table` with `protocol` (filtered in the kernel where it
    /// supports strict checking, and here in any case).
    pub async fn dump_routes(
        &self,
        family: AddressFamily,
        table: u32,
        protocol: u8,
    ) -> Result<Vec<RouteMessage>, NlError> {
        'attempt: for _ in 0..DUMP_TRIES {
            let mut rm = RouteMessage::default();
            rm.header.address_family = family;
            rm.header.table = header_table(table);
            rm.header.protocol = RouteProtocol::from(protocol);
            rm.header.scope = RouteScope::Universe;
            rm.header.kind = RouteType::Unspec;
            rm.attributes.push(RouteAttribute::Table(table));
            let mut msg = NetlinkMessage::from(RouteNetlinkMessage::GetRoute(rm));
            msg.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
            let answers = match self.request(msg).await {
                Ok(a) => a,
                // The table does not exist yet: nothing of ours in it.
                Err(NlError::Kernel(ENOENT, _)) => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            let mut out = Vec::with_capacity(answers.len());
            for m in answers {
                if m.header.flags & NLM_F_DUMP_INTR != 0 {
                    continue 'attempt;
                }
                if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) = m.payload {
                    if u8::from(r.header.protocol) == protocol && route_table(&r) == table {
                        out.push(r);
                    }
                }
            }
            return Ok(out);
        }
        Err(NlError::DumpInterrupted)
    }

    /// The FIB entry a packet to `dst` (out of `oif`, if given) would match, as
    /// `ip route get fibmatch` shows it. `Ok(None)`: no route (or an error route).
    pub async fn fib_match(
        &self,
        dst: IpAddr,
        oif: Option<u32>,
    ) -> Result<Option<RouteMessage>, NlError> {
        let mut msg = NetlinkMessage::from(super::get_fib_match(dst, oif));
        msg.header.flags = NLM_F_REQUEST;
        match self.request(msg).await {
            Ok(answers) => Ok(answers.into_iter().find_map(|m| match m.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) => Some(r),
                _ => None,
            })),
            // ENETUNREACH, EHOSTUNREACH, EINVAL...: the next hop is not reachable.
            Err(NlError::Kernel(_, _)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The index of interface `name`; `Ok(None)` if there is none.
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>, NlError> {
        let mut msg = NetlinkMessage::from(super::get_link_named(name));
        msg.header.flags = NLM_F_REQUEST;
        match self.request(msg).await {
            Ok(answers) => Ok(answers.into_iter().find_map(|m| match m.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                    Some(l.header.index)
                }
                _ => None,
            })),
            Err(NlError::Kernel(_, _)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Sends `msgs` as one datagram, the last one acknowledged; returns its rejection, if any.
async fn send_batch(
    handle: &ConnectionHandle<RouteNetlinkMessage>,
    mut msgs: Vec<Msg>,
) -> Result<Vec<Rejection>, NlError> {
    let n = msgs.len();
    let mut expect = Vec::with_capacity(n);
    for (i, m) in msgs.iter_mut().enumerate() {
        if i + 1 == n {
            m.header.flags |= NLM_F_ACK;
            expect.push(ReplyExpectation::Expected);
        } else {
            m.header.flags &= !NLM_F_ACK;
            expect.push(ReplyExpectation::NotExpected);
        }
    }
    let mut answers = handle
        .request_batch_with_expectation(msgs.into_iter().zip(expect), SocketAddr::new(0, 0))
        .map_err(|_| NlError::Closed)?;
    let mut rejections = Vec::new();
    loop {
        match tokio::time::timeout(ANSWER_TIMEOUT, answers.next()).await {
            Err(_) => return Err(NlError::Timeout),
            Ok(None) => return Ok(rejections),
            Ok(Some(msg)) => {
                if let NetlinkPayload::Error(e) = &msg.payload {
                    rejections.extend(rejection(e.raw_code(), &e.header, msg.header.flags));
                }
            }
        }
    }
}

/// Turns an NLMSG_ERROR into a rejection (None for a plain ack).
fn rejection(code: i32, echo: &[u8], flags: u16) -> Option<Rejection> {
    if code == 0 {
        return None;
    }
    let (msg_type, prefix) = parse_echo(echo);
    Some(Rejection {
        is_delete: msg_type == Some(RTM_DELROUTE),
        prefix: if matches!(msg_type, Some(RTM_NEWROUTE | RTM_DELROUTE)) {
            prefix
        } else {
            None
        },
        errno: code.abs(),
        text: ext_ack_text(echo, flags),
    })
}
