//! The role runtime: what every deployable role shares, so a role crate holds only its own
//! mechanism. It sits between the contracts (envelope, emitter/telemetry, bus, api types) and
//! the roles; it never depends on a role, and roles never depend on each other.
//!
//! A role is a library with one entry point, [`Role::run`]. Everything around it — reading and
//! validating the TOML config, binding the listeners it declares, naming the config field when
//! an address is taken, serving its `/healthz` and `/metrics`, the shutdown signal, the registry
//! its `/metrics` renders — happens here, once, for `hydrant run ROLE` and for the micro cloud
//! (`hydrant up`) alike. Nothing in a role knows which of the two started it.
//!
//! Invariant: a role's sockets are bound in exactly one place ([`bind`] / [`bind_on`]), from the
//! listeners the role declares as data ([`Role::LISTENERS`]); a bind error names the config
//! field and the address, so the operator knows which line of which file to change. A role is
//! started in exactly one place ([`run_with_registry`]), which validates its config and serves
//! its admin listener.
//!
//! # Adding a role
//! 1. In the role's crate, write its `Config` (serde, `#[serde(deny_unknown_fields, default)]`,
//!    documented defaults) and implement [`Validate`] on it, with errors that name the field
//!    (use [`invalid`]).
//! 2. Implement [`Role`] on a unit struct: its `NAME` (what `hydrant run NAME` takes), its
//!    `LISTENERS` (name, config field, default address, how to read the address from the
//!    config; [`admin_listener`] for the admin listener every role has), `registry` when its
//!    `source_id`/`instance_id` are not `NAME`/`0`, and `run`, which takes its own sockets out of
//!    [`Listeners`] by name (or through a [`listeners!`] struct), mounts any status routes with
//!    [`Listeners::mount_admin`], and serves until the shutdown token fires.
//! 3. Add one row to the table in the `hydrant` binary (`roles.rs`) so `hydrant run NAME` starts
//!    it, and, if the micro cloud should run it, one row to the micro cloud's table with its
//!    micro-cloud config. Tests start it with [`run`] on listeners from [`bind_on`].
//!
//! # Layout
//! - `listeners`: [`ListenerSpec`], [`Listeners`], [`bind`] and [`bind_on`], [`admin_listener`].
//! - `admin`: the admin server every role gets, `/healthz`, `/metrics` and [`AdminRoutes`].
//! - `config`: [`load`] (TOML file → config), [`Validate`], [`invalid`] and [`ConfigError`], the
//!   [`ApiConsumer`] block (`api_url` + `token`/`token_file`).
//! - `consumer`: [`ApiSettings`], the API-consumer keys a role's config flattens in.
//! - `declare`: [`role!`], the `Role` impl of a role that listens only on its admin port.
//! - `gate`: [`TokenGate`], the counted bearer-token check in front of a role's status pages.
//! - `run`: [`run`] and [`run_with_registry`] (a role on bound listeners), [`run_from_file`],
//!   the whole of `hydrant run ROLE --config FILE`, and [`shutdown_on_signal`].
//! - `api`: [`ApiClient`] (the API consumer at run time: client and token) and
//!   [`MtlsTransport`] (HTTP/1.1 over mutual TLS to the controller's internal listener).
//! - `failover`: [`Failover`], several cloud controllers behind one client (`api_urls`, the
//!   edge's `token_keys_urls`): tried in turn, the one that answered kept, failovers counted.
//! - `backoff`: [`Backoff`], the one capped exponential backoff with jitter.
//! - `serve`: [`Gate`] and [`Limits`], the abuse limits of a public HTTP listener (connection
//!   caps, header read and idle timeouts, counted refusals) and the server that applies them.
//! - `sync`: [`lock`], the poison-tolerant mutex lock.

mod admin;
mod api;
mod backoff;
mod config;
mod consumer;
#[doc(hidden)]
pub mod declare;
mod error;
mod failover;
mod gate;
mod listeners;
mod run;
mod serve;
mod sync;

use std::future::Future;

pub use admin::{AdminRoutes, router as admin_router};
pub use api::{ApiClient, CONNECT_TIMEOUT, MtlsTransport};
pub use backoff::Backoff;
pub use config::{ApiConsumer, ConfigError, MAX_TOKEN_FILE_BYTES, Validate, invalid, load};
pub use consumer::ApiSettings;
pub use error::Error;
pub use failover::{ATTEMPT_TIMEOUT, Failover};
pub use gate::{TokenGate, refusal};
pub use hydrant_emitter::Registry;
pub use listeners::{ADMIN, ListenerSpec, Listeners, admin_listener, bind, bind_on, listener};
pub use run::{RunError, run, run_from_file, run_with_registry, shutdown_on_signal};
pub use serve::{ADMIN_LIMITS, Admission, Gate, Guarded, Limits};
pub use sync::lock;
use tokio_util::sync::CancellationToken;

/// A deployable role: its config, the sockets it serves, and its entry point.
///
/// Implemented once per role crate on a unit struct (`hydrant_agent::Agent`, ...); the binary's
/// tables name these types and nothing else of the role.
pub trait Role: 'static {
    /// The role's name as `hydrant run` takes it and as its metrics' `source_id` defaults to
    /// (`agent`, `doppler`, `nozzle-syslog`, ...).
    const NAME: &'static str;
    /// The role's config, read from TOML with unknown fields refused, checking itself.
    type Config: serde::de::DeserializeOwned + Validate<Error = Self::Error> + Send + 'static;
    /// Why the role could not start or stopped with an error. Converts from the runtime's
    /// [`Error`] so a missing listener or a bind error passes through unchanged.
    type Error: std::error::Error + From<Error> + Send + Sync + 'static;
    /// The listeners the role serves, in the order they are bound.
    const LISTENERS: &'static [ListenerSpec<Self::Config>];

    /// Checks every field; errors name the field and say what to write instead. By default the
    /// config's own [`Validate`].
    ///
    /// # Errors
    /// The first field that cannot work.
    fn validate(config: &Self::Config) -> Result<(), Self::Error> {
        config.validate()
    }

    /// The registry behind the role's `/metrics` and self-telemetry: `source_id` is the role,
    /// `instance_id` which copy of it. By default [`Role::NAME`] and `0`, for a role that runs
    /// as one copy.
    fn registry(config: &Self::Config) -> Registry {
        let _ = config;
        Registry::new(Self::NAME, "0")
    }

    /// What an operator wants to read at start-up beyond where the role listens (e.g. how many
    /// drains a nozzle serves); `None` for nothing more.
    fn describe(config: &Self::Config) -> Option<String> {
        let _ = config;
        None
    }

    /// Runs the role on `listeners` until `shutdown` fires, counting into `registry`, then stops
    /// cleanly and returns. Called by the runtime ([`run_with_registry`]) with a validated config
    /// and without the admin listener, which the runtime serves.
    ///
    /// # Errors
    /// A listener that failed, or whatever the role cannot recover from.
    fn run(
        config: Self::Config,
        listeners: Listeners,
        registry: Registry,
        shutdown: CancellationToken,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}
