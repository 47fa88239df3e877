//! The sans-IO boundary, checked: the protocol core (every module of this crate except the
//! driver, the MD5 and GTSM socket options and BFD's sockets) reads no clock and touches no socket
//! or runtime. Time and bytes come in as arguments; only `driver.rs`, `md5.rs`, `gtsm.rs` and
//! `bfd_socket.rs` do I/O.
//!
//! A module boundary checked here rather than a separate crate: the repository keeps its
//! layout (one `bgp/` crate), and this test fails the build of any change that lets I/O
//! into the core, which is what a crate boundary would enforce.

use std::path::{Path, PathBuf};

/// Modules allowed to do I/O, relative to `src/`.
const IO_MODULES: &[&str] = &["driver.rs", "md5.rs", "gtsm.rs", "bfd_socket.rs"];

/// What the core must not name.
const FORBIDDEN: &[&str] = &[
    "tokio",
    "std::net::TcpStream",
    "TcpStream",
    "TcpListener",
    "UdpSocket",
    "SystemTime::now",
    "Instant::now",
    "std::thread::sleep",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {dir:?}: {e}"));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_core_reads_no_clock_and_touches_no_socket() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let core: Vec<&PathBuf> = files
        .iter()
        .filter(|p| {
            let rel = p.strip_prefix(&src).expect("under src");
            !IO_MODULES.iter().any(|m| rel == Path::new(m))
        })
        .collect();
    // The check must look at something: the core modules are all there.
    for expected in ["fsm.rs", "speaker.rs", "rib.rs", "policy.rs", "wire/mod.rs"] {
        assert!(
            core.iter().any(|p| p.ends_with(expected)),
            "{expected} not found under {src:?}"
        );
    }
    let mut found = Vec::new();
    for path in core {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for word in FORBIDDEN {
                if line.contains(word) {
                    found.push(format!("{}:{}: {word}", path.display(), n + 1));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "I/O or clock reads in the sans-IO core (move them to the driver and pass the \
         value in):\n{}",
        found.join("\n")
    );
}
