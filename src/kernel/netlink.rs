//! The rtnetlink socket: one `netlink-proto` connection, batched route requests, dumps and
//! single look-ups. Knows the wire, not the policy (that is `mod.rs`).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::time::Duration;

use futures::channel::mpsc::UnboundedReceiver;
use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, Parseable, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::proto::{ConnectionHandle, ReplyExpectation};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, AsyncSocket, SocketAddr};

pub(super) type Msg = NetlinkMessage<RouteNetlinkMessage>;

/// Asked of the kernel for our socket's receive buffer. The kernel caps it at
/// `net.core.rmem_max` (doubled: 416 KiB by default); batches are sized to what we got.
pub(super) const RCVBUF: usize = 4 << 20;
/// How long one request may wait for its answers before the connection is declared broken.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// A dump interrupted by concurrent changes (`NLM_F_DUMP_INTR`) is repeated this often.
const DUMP_TRIES: usize = 5;

const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLM_F_ACK_TLVS: u16 = 0x200;

pub(super) const EPERM: i32 = 1;
pub(super) const ENOENT: i32 = 2;
pub(super) const ESRCH: i32 = 3;
pub(super) const EACCES: i32 = 13;
pub(super) const EEXIST: i32 = 17;

/// What went wrong at the socket level (not a single route's rejection).
#[derive(Debug)]
pub(super) enum NlError {
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
pub(super) struct Rejection {
    /// RTM_NEWROUTE or RTM_DELROUTE.
    pub is_delete: bool,
    /// The prefix of the rejected message (None if the echo could not be parsed).
    pub prefix: Option<ipnet::IpNet>,
    /// Positive errno.
    pub errno: i32,
    /// The kernel's extended-ack text, e.g. "Nexthop has invalid gateway".
    pub text: Option<String>,
}

pub(super) struct Netlink {
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
        batches: Vec<Vec<Msg>>,
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
        let mut rm = RouteMessage::default();
        rm.header.address_family = family_of(dst);
        rm.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        rm.header.flags = RouteFlags::FibMatch;
        rm.attributes.push(RouteAttribute::Destination(dst.into()));
        if let Some(oif) = oif {
            rm.attributes.push(RouteAttribute::Oif(oif));
        }
        let mut msg = NetlinkMessage::from(RouteNetlinkMessage::GetRoute(rm));
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
        let mut lm = LinkMessage::default();
        lm.attributes.push(LinkAttribute::IfName(name.to_string()));
        let mut msg = NetlinkMessage::from(RouteNetlinkMessage::GetLink(lm));
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

    /// Interface index → name, for display.
    pub async fn link_names(&self) -> Result<HashMap<u32, String>, NlError> {
        let mut msg = NetlinkMessage::from(RouteNetlinkMessage::GetLink(LinkMessage::default()));
        msg.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let answers = self.request(msg).await?;
        let mut out = HashMap::new();
        for m in answers {
            if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) = m.payload {
                for a in &l.attributes {
                    if let LinkAttribute::IfName(n) = a {
                        out.insert(l.header.index, n.clone());
                    }
                }
            }
        }
        Ok(out)
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

/// `rtm_table` for a table id: the id itself below 256, else RT_TABLE_COMPAT (the real id
/// goes in RTA_TABLE, which we always send too).
pub(super) fn header_table(table: u32) -> u8 {
    u8::try_from(table).unwrap_or(252)
}

pub(super) fn family_of(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// The table of a route message: RTA_TABLE if present, else the header's.
pub(super) fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

/// The destination prefix of a route message.
pub(super) fn route_prefix(r: &RouteMessage) -> Option<ipnet::IpNet> {
    let len = r.header.destination_prefix_length;
    let dst = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    });
    let dst = match (r.header.address_family, dst) {
        (_, Some(d)) => d,
        (AddressFamily::Inet, None) if len == 0 => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        (AddressFamily::Inet6, None) if len == 0 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    ipnet::IpNet::new(dst, len).ok()
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

fn echo_len(echo: &[u8]) -> Option<usize> {
    let len = u32::from_ne_bytes(echo.get(0..4)?.try_into().ok()?) as usize;
    Some(len.min(echo.len()))
}

/// The message type and route prefix of the request an error echoes.
fn parse_echo(echo: &[u8]) -> (Option<u16>, Option<ipnet::IpNet>) {
    let Some(len) = echo_len(echo) else {
        return (None, None);
    };
    let msg_type = echo
        .get(4..6)
        .and_then(|b| b.try_into().ok())
        .map(u16::from_ne_bytes);
    let prefix = echo
        .get(16..len)
        .and_then(|body| RouteMessage::parse(body).ok())
        .and_then(|r| route_prefix(&r));
    (msg_type, prefix)
}

/// The NLMSGERR_ATTR_MSG text of an extended ack, if the kernel sent one.
pub(crate) fn ext_ack_text(echo: &[u8], flags: u16) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    // With NLM_F_CAPPED only the echoed header (16 bytes) precedes the TLVs.
    let start = if flags & 0x100 != 0 {
        16
    } else {
        (echo_len(echo)? + 3) & !3
    };
    let mut rest = echo.get(start..)?;
    while rest.len() >= 4 {
        let nla_len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let nla_type = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if nla_len < 4 || nla_len > rest.len() {
            return None;
        }
        if nla_type == NLMSGERR_ATTR_MSG {
            let text = &rest[4..nla_len];
            let text = text.split(|b| *b == 0).next().unwrap_or(text);
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        let aligned = (nla_len + 3) & !3;
        rest = rest.get(aligned..)?;
    }
    None
}

/// The header of a route message about `prefix` in `table` with `protocol`.
pub(super) fn route_header(prefix: &ipnet::IpNet, table: u32, protocol: u8) -> RouteHeader {
    RouteHeader {
        address_family: family_of(prefix.addr()),
        destination_prefix_length: prefix.prefix_len(),
        table: header_table(table),
        protocol: RouteProtocol::from(protocol),
        ..Default::default()
    }
}
