//! CNI: the `ferrovia-cni` plugin (the `ferrovia` binary run under that name) and the
//! agent's handling of what it asks.
//!
//! * [`spec`]: the CNI specification (versions, environment, configuration, results,
//!   errors), pure and unit-tested.
//! * [`plugin`]: the plugin's `main`: a thin, blocking client of the agent.
//! * [`protocol`]: the messages between the plugin and the agent on the control socket.
//! * [`agent`]: the agent's side: IPAM, wiring, GC, STATUS.
//! * [`wiring`]: the pod's veth pair, addresses and routes (netlink).

pub mod agent;
pub mod plugin;
pub mod protocol;
pub mod spec;
pub mod wiring;
