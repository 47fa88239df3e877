//! IP address management for ferrovia. Populated by the IPAM/CNI issue.
