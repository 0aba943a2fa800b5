//! Containers for user code: every app instance and every staging task runs in one.
//!
//! Flow: the executor (instances) and the cloud controller (staging) describe what to run as a
//! container spec → this crate writes an OCI bundle (a read-only "stack" root filesystem that
//! shows nothing of the platform, the app's own writable directories), creates the container's
//! cgroup with its limits, attaches a network namespace to the host bridge with egress rules,
//! and runs it with `runc` → the caller reads stdout/stderr as before and asks this crate for
//! the container's usage (from the cgroup) and its end (exit status, out of memory, peak).
//!
//! Invariants:
//! - User code never runs as root, never holds a capability, and never sees the data dir, the
//!   signing key, another container's files or processes, or the host's `/proc`.
//! - Limits are the kernel's: memory, pids and CPU through the cgroup, not by polling.
//! - Nothing a container starts outlives it: destroying a container kills its pid namespace,
//!   removes its cgroup, network namespace, veth and bundle; leftovers from a killed platform
//!   are found by their prefix and removed at the next start.
//!
//! # Layout
//! - `error`: [`Error`].
//! - `net`: the host bridge, one network namespace and veth per container, and the nftables
//!   egress rules.

mod error;
pub mod net;

pub use error::Error;
