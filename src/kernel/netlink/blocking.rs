//! A blocking NETLINK_ROUTE socket for threads that change network namespace (pod wiring):
//! batches of requests in one datagram, each acknowledged, answers matched by sequence
//! number; dumps; the kernel's extended-ack text in refusals. rtnetlink handles a request
//! within `sendmsg`, so its answers are queued by the time `recv` runs: blocking costs
//! nothing here.

use std::io;
use std::os::unix::io::AsRawFd;
use std::time::Duration;

use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use tracing::debug;

use super::{describe, ext_ack_text, NLMSG_HDRLEN};

/// A blocked socket gives up after this long (the kernel answers within sendmsg, so this
/// only fires if something is badly wrong).
pub(crate) const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// Receive buffer per recv: dumps come in datagrams of at most 32 KiB.
const RECV_BUF: usize = 64 * 1024;

/// One request of a batch and what it does (for error messages).
pub(crate) struct Req {
    msg: RouteNetlinkMessage,
    flags: u16,
    action: String,
}

impl Req {
    pub(crate) fn new(msg: RouteNetlinkMessage, flags: u16, action: String) -> Req {
        Req { msg, flags, action }
    }
}

/// The kernel's refusal of one request.
#[derive(Debug, Clone)]
pub(crate) struct Nack {
    /// Positive errno.
    pub(crate) errno: i32,
    /// The extended ack's message, e.g. "Nexthop device is not up".
    pub(crate) text: Option<String>,
}

impl Nack {
    /// The errno's text and the kernel's, e.g. "No such device (os error 19): Nexthop
    /// device is not up".
    pub(crate) fn describe(&self) -> String {
        describe(self.errno, self.text.as_deref())
    }
}

/// What the kernel answered one request: its messages, or its refusal.
pub(crate) type Answer = Result<Vec<RouteNetlinkMessage>, Nack>;

/// The first refused request of a [`Rtnl::batch_checked`].
#[derive(Debug)]
pub(crate) struct Refused {
    /// Its index in the batch.
    pub(crate) index: usize,
    /// What it did, as given to [`Req::new`].
    pub(crate) action: String,
    pub(crate) nack: Nack,
}

/// A blocking NETLINK_ROUTE socket, in the namespace of the thread that opened it.
pub(crate) struct Rtnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

const NLMSG_NOOP: u16 = libc::NLMSG_NOOP as u16;
const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;
const NLMSG_DONE: u16 = libc::NLMSG_DONE as u16;
const NLMSG_OVERRUN: u16 = libc::NLMSG_OVERRUN as u16;

impl Rtnl {
    pub(crate) fn open() -> io::Result<Rtnl> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // Best effort: without them errors carry no text and dumps are filtered here only.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_netlink_get_strict_chk(true);
        let tv = libc::timeval {
            tv_sec: SOCKET_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: setsockopt with a pointer to a timeval that outlives the call.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Rtnl {
            sock,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Sends `reqs` in one datagram, each asking for an acknowledgement, and returns each
    /// one's answers (in order). The kernel handles them in order, whatever their answers.
    pub(crate) fn batch(&mut self, reqs: Vec<Req>) -> io::Result<Vec<Answer>> {
        let n = reqs.len();
        let first = self.seq.wrapping_add(1);
        let mut out = Vec::with_capacity(512);
        for (i, r) in reqs.into_iter().enumerate() {
            self.seq = self.seq.wrapping_add(1);
            let flags = NLM_F_REQUEST | NLM_F_ACK | r.flags;
            serialize_into(&mut out, r.msg, flags, first.wrapping_add(i as u32));
        }
        self.sock.send(&out, 0)?;
        self.collect(first, n)
    }

    /// Sends one dump request and returns everything it produced.
    pub(crate) fn dump(&mut self, msg: RouteNetlinkMessage) -> io::Result<Answer> {
        for _ in 0..3 {
            self.seq = self.seq.wrapping_add(1);
            let seq = self.seq;
            let mut out = Vec::with_capacity(64);
            serialize_into(&mut out, msg.clone(), NLM_F_REQUEST | NLM_F_DUMP, seq);
            self.sock.send(&out, 0)?;
            let (answer, interrupted) = self.collect_dump(seq)?;
            if !interrupted {
                return Ok(answer);
            }
        }
        Err(io::Error::other(
            "the kernel kept interrupting the dump (things changing too fast)",
        ))
    }

    /// Like [`Rtnl::batch`], for callers that stop at the first refusal: all answers, or the
    /// first refusal with its request's index and action.
    pub(crate) fn batch_checked(
        &mut self,
        reqs: Vec<Req>,
    ) -> io::Result<Result<Vec<Vec<RouteNetlinkMessage>>, Refused>> {
        let actions: Vec<String> = reqs.iter().map(|r| r.action.clone()).collect();
        let answers = self.batch(reqs)?;
        let mut out = Vec::with_capacity(answers.len());
        for (i, a) in answers.into_iter().enumerate() {
            match a {
                Ok(m) => out.push(m),
                Err(nack) => {
                    return Ok(Err(Refused {
                        index: i,
                        action: actions.get(i).cloned().unwrap_or_default(),
                        nack,
                    }))
                }
            }
        }
        Ok(Ok(out))
    }

    /// Sends one request and returns its answers; a refusal is the inner error.
    pub(crate) fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<Answer> {
        let mut answers = self.batch(vec![Req::new(msg, flags, String::new())])?;
        answers
            .pop()
            .ok_or_else(|| io::Error::other("the kernel did not answer a request"))
    }

    /// Reads until requests `first .. first + n` are all acknowledged (or refused).
    fn collect(&mut self, first: u32, n: usize) -> io::Result<Vec<Answer>> {
        let mut msgs: Vec<Vec<RouteNetlinkMessage>> = vec![Vec::new(); n];
        let mut done: Vec<Option<Result<(), Nack>>> = vec![None; n];
        let mut left = n;
        while left > 0 {
            self.recv()?;
            for raw in split(&self.buf) {
                let Some(i) = index_of(raw.seq, first, n) else {
                    continue;
                };
                match raw.kind {
                    NLMSG_ERROR | NLMSG_DONE => {
                        if done[i].is_none() {
                            left -= 1;
                        }
                        done[i] = Some(status(&raw));
                    }
                    NLMSG_NOOP => {}
                    NLMSG_OVERRUN => return Err(overrun()),
                    _ => {
                        if let Some(m) = decode(raw.bytes) {
                            msgs[i].push(m);
                        }
                    }
                }
            }
        }
        Ok(msgs
            .into_iter()
            .zip(done)
            .map(|(m, d)| match d {
                Some(Err(nack)) => Err(nack),
                _ => Ok(m),
            })
            .collect())
    }

    /// Reads a dump's answers; also says whether the kernel flagged it interrupted.
    fn collect_dump(&mut self, seq: u32) -> io::Result<(Answer, bool)> {
        let mut msgs = Vec::new();
        let mut interrupted = false;
        loop {
            self.recv()?;
            for raw in split(&self.buf) {
                if raw.seq != seq {
                    continue;
                }
                if raw.flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match raw.kind {
                    NLMSG_ERROR | NLMSG_DONE => {
                        return Ok((status(&raw).map(|()| msgs), interrupted));
                    }
                    NLMSG_NOOP => {}
                    NLMSG_OVERRUN => return Err(overrun()),
                    _ => {
                        if let Some(m) = decode(raw.bytes) {
                            msgs.push(m);
                        }
                    }
                }
            }
        }
    }

    fn recv(&mut self) -> io::Result<()> {
        self.buf.clear();
        if self.buf.capacity() < RECV_BUF {
            self.buf.reserve(RECV_BUF);
        }
        let cap = self.buf.capacity();
        let n = loop {
            match self.sock.recv(&mut self.buf, libc::MSG_TRUNC) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer from the kernel within {SOCKET_TIMEOUT:?}"),
                    ))
                }
                Err(e) => return Err(e),
            }
        };
        if n > cap {
            return Err(io::Error::other(format!(
                "a {n}-byte netlink answer did not fit the {cap}-byte buffer"
            )));
        }
        Ok(())
    }
}

fn overrun() -> io::Error {
    io::Error::other("the netlink receive buffer overflowed: answers were lost")
}

fn serialize_into(out: &mut Vec<u8>, msg: RouteNetlinkMessage, flags: u16, seq: u32) {
    let mut nl = NetlinkMessage::from(msg);
    nl.header.flags = flags;
    nl.header.sequence_number = seq;
    nl.finalize();
    let len = nl.buffer_len();
    let start = out.len();
    out.resize(start + ((len + 3) & !3), 0);
    nl.serialize(&mut out[start..start + len]);
}

fn index_of(seq: u32, first: u32, n: usize) -> Option<usize> {
    let i = seq.wrapping_sub(first) as usize;
    (i < n).then_some(i)
}

/// One netlink message of a received datagram, undecoded.
struct Raw<'a> {
    kind: u16,
    flags: u16,
    seq: u32,
    /// The whole message, header included.
    bytes: &'a [u8],
}

/// The messages of a datagram (stops at the first malformed one).
fn split(buf: &[u8]) -> Vec<Raw<'_>> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            break;
        }
        out.push(Raw {
            kind: u16::from_ne_bytes([rest[4], rest[5]]),
            flags: u16::from_ne_bytes([rest[6], rest[7]]),
            seq: u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]),
            bytes: &rest[..len],
        });
        let next = (len + 3) & !3;
        rest = rest.get(next..).unwrap_or_default();
    }
    out
}

/// The outcome in an NLMSG_ERROR or NLMSG_DONE message.
fn status(raw: &Raw<'_>) -> Result<(), Nack> {
    let body = &raw.bytes[NLMSG_HDRLEN..];
    let code = match body.get(0..4) {
        Some(b) => i32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    };
    if code == 0 {
        return Ok(());
    }
    let text = if raw.kind == NLMSG_ERROR {
        ext_ack_text(&body[4..], raw.flags)
    } else {
        None
    };
    Err(Nack {
        errno: code.saturating_abs(),
        text,
    })
}

fn decode(bytes: &[u8]) -> Option<RouteNetlinkMessage> {
    match NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) {
        Ok(m) => match m.payload {
            NetlinkPayload::InnerMessage(inner) => Some(inner),
            _ => None,
        },
        Err(e) => {
            debug!(error = %e, "undecodable rtnetlink message ignored");
            None
        }
    }
}
