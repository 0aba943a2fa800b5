//! Making the internal CA and the per-identity leaves, and rotating the CA.
//!
//! Filled in by `hydrant certs`'s work; see the crate docs for the directory layout.
