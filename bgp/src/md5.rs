//! TCP MD5 signatures (RFC 2385) through Linux's `TCP_MD5SIG` socket option.
//!
//! A key is bound to one peer address on one socket: on the listening socket so that the
//! peer's incoming SYNs are verified, and on each outgoing socket before `connect`.

use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;

/// Longest key Linux accepts (`TCP_MD5SIG_MAXKEYLEN`).
pub const MAX_KEY_LEN: usize = 80;

/// `struct tcp_md5sig` from linux/tcp.h.
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: u32,
    key: [u8; MAX_KEY_LEN],
}

/// Installs (`Some(key)`) or removes (`None`) the MD5 key for `peer` on socket `fd`.
/// `socket_is_v6` tells whether the socket is AF_INET6: IPv4 peers of a dual-stack socket
/// are then given as v4-mapped IPv6 addresses, as the kernel expects.
pub fn set_key(fd: RawFd, socket_is_v6: bool, peer: IpAddr, key: Option<&[u8]>) -> io::Result<()> {
    set(fd, socket_is_v6, peer, None, key)
}

/// `TCP_MD5SIG_EXT` and its prefix flag (linux/tcp.h, since 4.13).
const TCP_MD5SIG_EXT: libc::c_int = 32;
const TCP_MD5SIG_FLAG_PREFIX: u8 = 1;

/// Installs (`Some(key)`) or removes (`None`) one MD5 key for every address of `range` on
/// socket `fd` (a listening socket: peers by address range).
pub fn set_range_key(
    fd: RawFd,
    socket_is_v6: bool,
    range: ipnet::IpNet,
    key: Option<&[u8]>,
) -> io::Result<()> {
    // A v4 range on a dual-stack socket is given v4-mapped, with its IPv4 prefix length
    // (the kernel refuses more than 32 for a v4-mapped address).
    set(
        fd,
        socket_is_v6,
        range.network(),
        Some(range.prefix_len()),
        key,
    )
}

fn set(
    fd: RawFd,
    socket_is_v6: bool,
    peer: IpAddr,
    prefix_len: Option<u8>,
    key: Option<&[u8]>,
) -> io::Result<()> {
    let key = key.unwrap_or(&[]);
    if key.len() > MAX_KEY_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "TCP MD5 password for {peer} is {} bytes; Linux accepts at most {MAX_KEY_LEN}",
                key.len()
            ),
        ));
    }
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    let storage = &mut sig.addr as *mut libc::sockaddr_storage;
    match (socket_is_v6, peer) {
        (false, IpAddr::V4(v4)) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write(storage as *mut libc::sockaddr_in, sin) };
        }
        (true, _) | (false, IpAddr::V6(_)) => {
            let v6 = match peer {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in6 and suitably aligned.
            unsafe { std::ptr::write(storage as *mut libc::sockaddr_in6, sin6) };
        }
    }
    sig.keylen = key.len() as u16;
    sig.key[..key.len()].copy_from_slice(key);
    let mut option = libc::TCP_MD5SIG;
    if let Some(len) = prefix_len {
        option = TCP_MD5SIG_EXT;
        sig.flags = TCP_MD5SIG_FLAG_PREFIX;
        sig.prefixlen = len;
    }
    // SAFETY: fd is a socket owned by the caller; the option value is a valid tcp_md5sig.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            option,
            &sig as *const TcpMd5Sig as *const libc::c_void,
            std::mem::size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        let err = io::Error::last_os_error();
        // Removing a key that was never set is not an error worth reporting.
        if key.is_empty() && err.raw_os_error() == Some(libc::ENOENT) {
            return Ok(());
        }
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn key_is_accepted_on_v4_and_dual_stack_sockets_and_too_long_is_refused() {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").expect("bind v4");
        set_key(
            v4.as_raw_fd(),
            false,
            "127.0.0.2".parse().expect("ip"),
            Some(b"secret"),
        )
        .expect("v4 key");
        set_key(
            v4.as_raw_fd(),
            false,
            "127.0.0.2".parse().expect("ip"),
            None,
        )
        .expect("remove");
        if let Ok(v6) = std::net::TcpListener::bind("[::1]:0") {
            set_key(
                v6.as_raw_fd(),
                true,
                "127.0.0.2".parse().expect("ip"),
                Some(b"s"),
            )
            .expect("mapped key");
        }
        set_range_key(
            v4.as_raw_fd(),
            false,
            "127.0.1.0/24".parse().expect("range"),
            Some(b"secret"),
        )
        .expect("range key");
        set_range_key(
            v4.as_raw_fd(),
            false,
            "127.0.1.0/24".parse().expect("range"),
            None,
        )
        .expect("range key removed");
        if let Ok(v6) = std::net::TcpListener::bind("[::1]:0") {
            for range in ["127.0.2.0/24", "fd00:198:18::/64"] {
                set_range_key(
                    v6.as_raw_fd(),
                    true,
                    range.parse().expect("range"),
                    Some(b"s"),
                )
                .unwrap_or_else(|e| panic!("{range} on a dual-stack socket: {e}"));
            }
        }
        let long = [b'x'; 81];
        assert!(set_key(
            v4.as_raw_fd(),
            false,
            "127.0.0.2".parse().expect("ip"),
            Some(&long)
        )
        .is_err());
    }
}
