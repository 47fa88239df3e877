//! The Generalized TTL Security Mechanism (RFC 5082) through Linux socket options.
//!
//! A GTSM peer sends every packet with TTL (IPv4) or hop limit (IPv6) 255, and the receiver
//! refuses packets that arrive with less than 256 − HOPS, where HOPS is how many routers away
//! the peer may be (1 for a directly connected peer: only TTL 255 passes). A spoofed packet
//! from further away cannot arrive with a TTL that high. The kernel enforces the minimum
//! (`IP_MINTTL`, `IPV6_MINHOPCOUNT`): segments below it are dropped before TCP sees them.
//! socket2 wraps neither option, hence libc here (as [`crate::md5`] does for `TCP_MD5SIG`).

use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;

/// Most hops a GTSM peer may be away: 255 would accept TTL 1, which is no protection.
pub const MAX_HOPS: u8 = 254;

/// The TTL / hop limit a GTSM peer's packets must at least arrive with.
pub fn min_ttl(hops: u8) -> io::Result<u8> {
    if hops == 0 || hops > MAX_HOPS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("GTSM hops must be 1 to {MAX_HOPS}, not {hops}"),
        ));
    }
    Ok(255 - (hops - 1))
}

fn set_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: fd is a socket owned by the caller; the option value is a plain int.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sends with TTL / hop limit 255 on socket `fd` for traffic of `peer`'s family, without a
/// minimum. For a listening socket: its SYN-ACKs (which the kernel sends before any accept)
/// must reach a GTSM peer that connects to us with TTL 255, or the peer drops them.
/// `socket_is_v6`: the socket is AF_INET6 (IPv4 peers then arrive v4-mapped; Linux applies the
/// IPv4-level options to them, and accepts them on an AF_INET6 socket).
pub fn send_255(fd: RawFd, socket_is_v6: bool, peer: IpAddr) -> io::Result<()> {
    match peer {
        IpAddr::V4(_) => set_int(fd, libc::IPPROTO_IP, libc::IP_TTL, 255),
        IpAddr::V6(_) if socket_is_v6 => {
            set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, 255)
        }
        IpAddr::V6(_) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an IPv6 peer on an IPv4 socket",
        )),
    }
}

/// Protects the connected (or about to connect) socket `fd` with `peer`: sends with TTL / hop
/// limit 255 and refuses segments that arrive below 256 − `hops`.
pub fn protect(fd: RawFd, socket_is_v6: bool, peer: IpAddr, hops: u8) -> io::Result<()> {
    let min = libc::c_int::from(min_ttl(hops)?);
    send_255(fd, socket_is_v6, peer)?;
    match peer {
        IpAddr::V4(_) => set_int(fd, libc::IPPROTO_IP, libc::IP_MINTTL, min),
        IpAddr::V6(_) => set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT, min),
    }
}

/// Makes the listening socket `fd` keep a copy of each connection's SYN headers
/// (`TCP_SAVE_SYN`), so that [`syn_ttl`] can check the SYN of an accepted connection: the
/// listener is shared by every peer and cannot carry one peer's minimum TTL itself.
pub fn save_syns(fd: RawFd) -> io::Result<()> {
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_SAVE_SYN, 1)
}

/// The TTL (IPv4) or hop limit (IPv6) the SYN of accepted connection `fd` arrived with, from
/// the copy its listener kept (see [`save_syns`]); reading it frees the copy. None when the
/// kernel kept none.
pub fn syn_ttl(fd: RawFd) -> io::Result<Option<u8>> {
    let mut buf = [0u8; 512];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: fd is a live socket; buf and len are valid for the kernel to write.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_SAVED_SYN,
            buf.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(header_ttl(&buf[..(len as usize).min(buf.len())]))
}

/// TTL / hop limit of an IPv4 or IPv6 header at the start of `h`.
fn header_ttl(h: &[u8]) -> Option<u8> {
    match h.first()? >> 4 {
        4 => h.get(8).copied(),
        6 => h.get(7).copied(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn get_int(fd: RawFd, level: libc::c_int, name: libc::c_int) -> libc::c_int {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: fd is a live socket; v and len are valid for the kernel to write.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                level,
                name,
                &mut v as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        assert_eq!(rc, 0, "getsockopt: {}", io::Error::last_os_error());
        v
    }

    #[test]
    fn the_ttl_is_read_from_ipv4_and_ipv6_headers() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[8] = 254;
        assert_eq!(header_ttl(&v4), Some(254));
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[7] = 255;
        assert_eq!(header_ttl(&v6), Some(255));
        assert_eq!(header_ttl(&[]), None);
        assert_eq!(header_ttl(&[0x45, 0, 0]), None);
        assert_eq!(header_ttl(&[0x20; 40]), None);
    }

    #[test]
    fn an_accepted_connection_tells_its_syn_ttl() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        save_syns(l.as_raw_fd()).expect("TCP_SAVE_SYN");
        let c = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        c.set_ttl(200).expect("ttl");
        c.connect(&l.local_addr().expect("addr").into())
            .expect("connect");
        let (a, _) = l.accept().expect("accept");
        assert_eq!(syn_ttl(a.as_raw_fd()).expect("saved SYN"), Some(200));
        // Read once: the copy is gone.
        assert_eq!(syn_ttl(a.as_raw_fd()).expect("no saved SYN"), None);
    }

    #[test]
    fn hops_map_to_the_minimum_ttl_of_rfc_5082() {
        assert_eq!(min_ttl(1).expect("1 hop"), 255);
        assert_eq!(min_ttl(2).expect("2 hops"), 254);
        assert_eq!(min_ttl(254).expect("254 hops"), 2);
        assert!(min_ttl(0).is_err());
        assert!(min_ttl(255).is_err());
    }

    #[test]
    fn the_kernel_holds_ttl_255_and_the_minimum_on_v4_and_v6_sockets() {
        let v4 = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("v4 socket");
        protect(
            v4.as_raw_fd(),
            false,
            "198.18.0.254".parse().expect("ip"),
            2,
        )
        .expect("v4");
        assert_eq!(get_int(v4.as_raw_fd(), libc::IPPROTO_IP, libc::IP_TTL), 255);
        assert_eq!(
            get_int(v4.as_raw_fd(), libc::IPPROTO_IP, libc::IP_MINTTL),
            254
        );
        assert!(protect(v4.as_raw_fd(), false, "fd00::1".parse().expect("ip"), 1).is_err());

        let v6 = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)
            .expect("v6 socket");
        protect(v6.as_raw_fd(), true, "fd00::1".parse().expect("ip"), 1).expect("v6");
        assert_eq!(
            get_int(v6.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS),
            255
        );
        assert_eq!(
            get_int(v6.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT),
            255
        );
        // A v4-mapped peer of a dual-stack socket gets the IPv4-level options.
        protect(v6.as_raw_fd(), true, "198.18.0.254".parse().expect("ip"), 1).expect("mapped");
        assert_eq!(
            get_int(v6.as_raw_fd(), libc::IPPROTO_IP, libc::IP_MINTTL),
            255
        );
    }
}
