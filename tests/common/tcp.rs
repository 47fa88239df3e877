//! TCP endpoints inside network namespaces, without helper programs: a socket belongs to
//! the namespace of the thread that created it, so each one is made on a short-lived thread
//! that joined the namespace (`setns`), then used from anywhere.
//!
//! [`SourceServer`] answers every line it receives with the source address it sees (the
//! test's view of NAT); [`Client`] keeps one connection open across events (an agent
//! restart) and asks again on it.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Runs `f` on a thread that joined the network namespace `ns` (a name under
/// /var/run/netns); what `f` creates stays in that namespace.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path)?;
        // SAFETY: setns on a descriptor we own, for this thread only.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| std::io::Error::other("the namespace thread panicked"))?
}

/// A TCP server in a namespace that answers each line with the client's source address
/// (`198.18.0.1\n`), each connection on its own thread. Stops listening when dropped.
pub struct SourceServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl SourceServer {
    pub fn start(ns: &str, addr: SocketAddr) -> SourceServer {
        let listener = in_netns(ns, move || {
            let l = TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .unwrap_or_else(|e| panic!("listen on {addr} in {ns}: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let accept = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        if conn.set_nonblocking(false).is_ok() {
                            std::thread::spawn(move || serve(conn));
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        SourceServer {
            addr,
            stop,
            accept: Some(accept),
        }
    }
}

impl Drop for SourceServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn serve(conn: TcpStream) {
    let Ok(peer) = conn.peer_addr() else { return };
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut lines = BufReader::new(conn);
    let mut line = String::new();
    while matches!(lines.read_line(&mut line), Ok(n) if n > 0) {
        if writeln!(out, "{}", peer.ip()).is_err() {
            return;
        }
        line.clear();
    }
}

/// One TCP connection made from inside a namespace.
pub struct Client {
    stream: BufReader<TcpStream>,
}

impl Client {
    /// Connects from namespace `ns` (each attempt bounded by `timeout`).
    pub fn connect(ns: &str, to: SocketAddr, timeout: Duration) -> Result<Client, String> {
        let stream = in_netns(ns, move || TcpStream::connect_timeout(&to, timeout))
            .map_err(|e| format!("connect to {to}: {e}"))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        Ok(Client {
            stream: BufReader::new(stream),
        })
    }

    /// Asks the server which source address it sees on this connection.
    pub fn seen_source(&mut self) -> Result<String, String> {
        self.stream
            .get_mut()
            .write_all(b"who\n")
            .map_err(|e| format!("send: {e}"))?;
        let mut line = String::new();
        match self.stream.read_line(&mut line) {
            Ok(0) => Err("the server closed the connection".into()),
            Ok(_) => Ok(line.trim().to_string()),
            Err(e) => Err(format!("no answer: {e}")),
        }
    }
}

/// A new connection from `ns` to `to` and the source address the server saw on it.
pub fn source_seen(ns: &str, to: SocketAddr) -> Result<String, String> {
    Client::connect(ns, to, Duration::from_secs(3))?.seen_source()
}
