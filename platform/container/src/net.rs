//! Container networking: a host bridge, one network namespace and veth pair per container with
//! its own IP, and nftables egress rules in the spirit of Cloud Foundry's application security
//! groups.
//!
//! (skeleton: the API below is the contract the rest of the crate codes against)
