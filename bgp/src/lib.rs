//! ferrovia's BGP speaker.
//!
//! - [`message`]: our model of BGP messages; [`wire`]: bytes ⇄ messages (netgauze-bgp-pkt
//!   underneath, hidden here so the codec can be swapped).
//! - [`fsm`]: the RFC 4271 session state machine, sans-IO.
//! - [`rib`]: Adj-RIB-In, Loc-RIB with best path and multipath; [`adj_rib_out`]: the
//!   peers' Adj-RIBs-Out.
//! - [`policy`]: import and export rules.
//! - [`speaker`]: sessions, RIBs and policy together, sans-IO.
//! - [`bfd`]: BFD (RFC 5880/5881) sessions, sans-IO; [`bfd_socket`]: their UDP sockets.
//! - [`driver`]: the tokio task that owns sockets and clocks; [`md5`]: TCP MD5 signatures;
//!   [`gtsm`]: TTL security (RFC 5082).
//!
//! Only `driver`, `md5`, `gtsm` and `bfd_socket` do I/O. Everything else is the sans-IO core: it reads no clock
//! (time, monotonic and wall, comes in as arguments) and names no socket or runtime;
//! `tests/core_boundary.rs` fails when that stops being true.

pub mod adj_rib_out;
pub mod bfd;
pub mod bfd_socket;
pub mod driver;
pub mod fsm;
pub mod gtsm;
pub mod journal;
pub mod md5;
pub mod message;
pub mod policy;
pub mod rib;
pub mod speaker;
pub mod wire;
