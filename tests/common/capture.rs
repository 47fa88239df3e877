//! tcpdump in a network namespace, started before the traffic it is to see. `start` returns
//! once tcpdump says it is listening, and `finish_when_seen` stops it only after the lines
//! a test looks for were captured (or a generous deadline passed): nothing depends on how
//! fast tcpdump starts or how fast packets reach it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long tcpdump may take to start listening, and captured lines to show up.
pub const CAPTURE_WAIT: Duration = Duration::from_secs(30);

pub struct Capture {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
    what: String,
}

impl Capture {
    /// `tcpdump -n -l -i IFACE FILTER` in namespace `ns`; returns once it listens.
    pub fn start(ns: &str, iface: &str, filter: &str) -> Capture {
        let what = format!("tcpdump in {ns} on {iface} ({filter})");
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "tcpdump", "-n", "-l", "-i", iface])
            .args(filter.split_whitespace())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: {e} (is tcpdump installed?)"));
        let stderr = child.stderr.take().expect("tcpdump stderr pipe");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut line = String::new();
            let mut said = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                if line.contains("listening on") {
                    let _ = tx.send(Ok(()));
                } else {
                    said.push_str(&line);
                }
                line.clear();
            }
            let _ = tx.send(Err(said));
        });
        let stdout = child.stdout.take().expect("tcpdump stdout pipe");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                if let Ok(mut v) = sink.lock() {
                    v.push(l);
                }
            }
        });
        let mut cap = Capture {
            child,
            lines,
            reader: Some(reader),
            what,
        };
        match rx.recv_timeout(CAPTURE_WAIT) {
            Ok(Ok(())) => cap,
            Ok(Err(said)) => {
                cap.kill();
                panic!("{} exited before listening: {said}", cap.what)
            }
            Err(_) => {
                cap.kill();
                panic!(
                    "{} did not say it was listening within {CAPTURE_WAIT:?}",
                    cap.what
                )
            }
        }
    }

    /// The lines captured so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Waits until every one of `needles` is in some captured line (at most
    /// [`CAPTURE_WAIT`]), then stops the capture and returns every line. The caller asserts
    /// on what it returns, so a needle never seen fails there with the whole capture.
    pub fn finish_when_seen(mut self, needles: &[&str]) -> Vec<String> {
        let start = Instant::now();
        while start.elapsed() < CAPTURE_WAIT {
            let lines = self.lines();
            if needles.iter().all(|n| lines.iter().any(|l| l.contains(n))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop()
    }

    /// Stops tcpdump (SIGINT flushes; SIGKILL if it does not exit) and returns every line.
    pub fn stop(&mut self) -> Vec<String> {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let start = Instant::now();
        while start.elapsed() < CAPTURE_WAIT {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let lines = self.lines();
        eprintln!("{}:\n{}", self.what, lines.join("\n"));
        lines
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.kill();
    }
}
