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
//! - `config`: [`Config`], the owner's container settings.
//! - `runtime`: [`Containers`] (one per owner) and [`Container`] (one per running container):
//!   spawn, usage, signal, destroy, and cleanup of leftovers.
//! - `spec`: [`ContainerSpec`] and the OCI runtime spec made from it.
//! - `stack`: the read-only root filesystem and the `vcap` user.
//! - `cgroup`: each container's parent cgroup, its limits and counters (v1 and v2).
//! - `seccomp`: the system calls refused to containers.
//! - `rootless`: why a non-root platform gets no containers (user namespaces, cgroup
//!   delegation), in words that say what to change.
//! - `error`: [`Error`].
//! - `net`: the host bridge, one network namespace and veth per container, and the nftables
//!   egress rules.

mod cgroup;
mod config;
mod error;
pub mod net;
mod rootless;
mod runtime;
mod seccomp;
mod spec;
mod stack;

pub use cgroup::{Usage, cpu_shares_for};
pub use config::{Config, DEFAULT_PIDS, DEFAULT_TMP_MB};
pub use error::Error;
pub use nix::sys::signal::Signal;
pub use runtime::{Container, Containers, End, Leftovers};
pub use spec::{Bind, ContainerSpec, Limits, NOFILE, Network, SpawnOptions};
pub use stack::{APP_DIR, TMP_DIR, VCAP_GID, VCAP_UID, chown_to_vcap};
