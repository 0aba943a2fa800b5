//! The cloud controller's REST contract: the JSON request and response types of every
//! endpoint, and a typed async [`Client`] over them.
//!
//! Flow: the CLI (`hydrant push`, `hydrant apps`, ...) and the control loops (health manager,
//! autoscaler) → [`Client`] → HTTP/JSON → the cloud controller, which serialises the very same
//! types. Nothing else in the workspace talks to the cloud controller, so this crate is the one
//! place the API is written down.
//!
//! The API follows Cloud Foundry's v3 in shape: resources under `/v3`, actions under
//! `/v3/apps/{guid}/actions/...`, lists as `{"pagination": ..., "resources": [...]}`, errors as
//! `{"errors": [{"code", "title", "detail"}]}`. Timestamps are UNIX seconds.
//!
//! # Layout
//! - [`types`]: every request and response body, grouped by resource.
//! - [`Client`]: one method per endpoint, plus [`Client::push_dir`] (resource matching, upload
//!   of what is missing, package creation).
//! - [`push`]: fingerprinting an app directory for resource matching, with the path rules the
//!   server enforces.
//! - [`tenancy`]: orgs, org roles, quotas, domains, space-owned routes and app environment
//!   variables (Cloud Foundry's tenancy model).
//! - [`services`]: service brokers, the marketplace, service instances, bindings, service keys
//!   and the jobs that carry their broker work.
//! - [`mask_url`]: credential masking for URLs the API carries (drain URLs), used by the
//!   cloud controller and every nozzle that names a destination.
//! - [`Error`]: what a call can fail with; [`Error::Api`] keeps the server's status and message.
//!
//! Invariant: every error a caller sees names what failed and, for server errors, carries the
//! HTTP status and the server's own detail text, so a CLI can print it and pick an exit code.

mod client;
pub mod drain;
mod error;
mod mask;
pub mod policy;
pub mod push;
pub mod services;
pub mod slo;
pub mod tenancy;
mod token_cache;
pub mod types;

pub use client::{Client, Transport, TransportFuture};
pub use drain::{CreateDrain, Drain, DrainState, DrainStatus, DrainTarget};
pub use error::Error;
pub use mask::mask_url;
pub use tenancy::{
    AssignOrgRole, CreateDomain, CreateOrg, CreateQuota, CreateRoute, Domain, EnvVars, Org,
    OrgRole, OrgRoleAssignment, Quota, QuotaScope, SetQuota, SpaceRoute,
};
pub use token_cache::{RENEW_AHEAD, TokenCache};
pub use types::*;

/// The API version the cloud controller reports in `GET /v3/info`.
pub const API_VERSION: &str = "3.0.0-hydrant";
