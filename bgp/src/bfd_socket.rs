//! BFD's UDP sockets (RFC 5881, single hop): one listener per address family on port 3784
//! that reports each datagram's TTL / hop limit, and one sending socket per peer with a
//! source port in 49152–65535 and TTL 255.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Single-hop BFD Control packets go to this port (RFC 5881 §4).
pub const PORT: u16 = 3784;
/// Source ports of single-hop BFD Control packets (RFC 5881 §4).
pub const SOURCE_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

fn set_int(fd: i32, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` lives across the call and its size is passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The listener of one family on port 3784 (IPv6 only on the IPv6 one), asking the kernel
/// for the TTL / hop limit of each datagram.
pub fn listen(v6: bool) -> io::Result<UdpSocket> {
    let (domain, addr) = if v6 {
        (
            socket2::Domain::IPV6,
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), PORT),
        )
    } else {
        (
            socket2::Domain::IPV4,
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT),
        )
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if v6 {
        s.set_only_v6(true)?;
        set_int(
            s.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_RECVHOPLIMIT,
            1,
        )?;
    } else {
        set_int(s.as_raw_fd(), libc::IPPROTO_IP, libc::IP_RECVTTL, 1)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// A socket for sending to `peer`'s port 3784 ([`send`]) with TTL (hop limit) 255, bound
/// to a source port in 49152–65535. `seed` picks the first port tried. It is not connected:
/// a peer without a route yet (the agent starts before the node's link is addressed) is no
/// error here — each packet finds its route and source address when it is sent.
pub fn sender(peer: IpAddr, seed: u32) -> io::Result<UdpSocket> {
    let v6 = peer.is_ipv6();
    let domain = if v6 {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if v6 {
        s.set_unicast_hops_v6(255)?;
    } else {
        s.set_ttl(255)?;
    }
    s.set_nonblocking(true)?;
    let span = u32::from(SOURCE_PORTS.end() - SOURCE_PORTS.start()) + 1;
    let unspecified = if v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    let mut last = io::Error::new(io::ErrorKind::AddrInUse, "no free source port");
    for i in 0..span {
        let port = SOURCE_PORTS.start() + ((seed.wrapping_add(i)) % span) as u16;
        match s.bind(&SocketAddr::new(unspecified, port).into()) {
            Ok(()) => return UdpSocket::from_std(s.into()),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Sends one BFD Control packet to `peer`'s port 3784 on its [`sender`] socket, without
/// waiting (a full socket buffer is an error, and the session sends again at its interval).
pub fn send(sock: &UdpSocket, peer: IpAddr, packet: &[u8]) -> io::Result<usize> {
    sock.try_send_to(packet, SocketAddr::new(peer, PORT))
}

/// Receives one datagram: its payload, sender and TTL / hop limit (None when the kernel
/// gave none).
pub async fn recv(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<u8>)> {
    loop {
        sock.readable().await?;
        match sock.try_io(Interest::READABLE, || recvmsg(sock.as_raw_fd(), buf)) {
            Ok(r) => return Ok(r),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

fn recvmsg(fd: i32, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<u8>)> {
    let mut from = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    // Room for one IP_TTL or IPV6_HOPLIMIT control message (an int) and some spare.
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: a zeroed msghdr is valid; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = from.as_mut_ptr().cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` points at live buffers of the sizes given.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut ttl = None;
    // SAFETY: the CMSG macros walk the control buffer the kernel filled, within
    // msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let h = &*c;
            let is_ttl = (h.cmsg_level == libc::IPPROTO_IP && h.cmsg_type == libc::IP_TTL)
                || (h.cmsg_level == libc::IPPROTO_IPV6 && h.cmsg_type == libc::IPV6_HOPLIMIT);
            if is_ttl {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>());
                ttl = u8::try_from(v).ok();
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    // SAFETY: the kernel wrote a socket address of its family into `from` (zeroed first).
    let from = unsafe { from.assume_init() };
    let addr = match i32::from(from.ss_family) {
        libc::AF_INET => {
            // SAFETY: an AF_INET address is a sockaddr_in, which fits in sockaddr_storage.
            let a: libc::sockaddr_in = unsafe {
                std::ptr::read_unaligned((&from as *const libc::sockaddr_storage).cast())
            };
            SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))),
                u16::from_be(a.sin_port),
            )
        }
        libc::AF_INET6 => {
            // SAFETY: an AF_INET6 address is a sockaddr_in6, which fits in sockaddr_storage.
            let a: libc::sockaddr_in6 = unsafe {
                std::ptr::read_unaligned((&from as *const libc::sockaddr_storage).cast())
            };
            SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)),
                u16::from_be(a.sin6_port),
            )
        }
        f => {
            return Err(io::Error::other(format!(
                "a datagram from address family {f}"
            )))
        }
    };
    Ok((n as usize, addr, ttl))
}
