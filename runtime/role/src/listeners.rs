//! Listeners as data, and the one place a role's sockets are bound.
//!
//! A role declares what it listens on ([`ListenerSpec`]: a name its `run` asks for, the config
//! field holding the address, the documented default); [`bind`] binds them all at the config's
//! addresses (`hydrant run`), [`bind_on`] at addresses the caller picks (the micro cloud's
//! well-known or ephemeral ports, tests' `127.0.0.1:0`).
//!
//! Every role declares its admin listener ([`admin_listener`]); the runtime serves it
//! (`/healthz`, `/metrics`, the routes the role mounts with [`Listeners::mount_admin`]), so the
//! role's `run` never sees it, and a role whose only socket is its admin listener takes nothing.
//!
//! Invariant: every bind error names the config field and the address. The trust issue wraps
//! the bound sockets in mTLS here, so no role binds a socket of its own.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::admin::AdminRoutes;
use crate::{Error, Role};

/// One socket a role serves.
#[derive(Debug)]
pub struct ListenerSpec<C> {
    /// What the role's `run` takes it out of [`Listeners`] by (`ingress`, `admin`, ...).
    pub name: &'static str,
    /// The config field holding its address (`listen`, `admin_listen`).
    pub field: &'static str,
    /// The documented default address.
    pub default: &'static str,
    /// Reads the address out of a config.
    pub address: fn(&C) -> &str,
}

/// A role's admin listener: named `admin`, read from the config field `admin_listen`, defaulting
/// to `default`. The runtime serves it; the role's `run` does not get it.
pub const fn admin_listener<C>(default: &'static str, address: fn(&C) -> &str) -> ListenerSpec<C> {
    ListenerSpec {
        name: ADMIN,
        field: "admin_listen",
        default,
        address,
    }
}

/// The name [`admin_listener`] gives the admin listener.
pub const ADMIN: &str = "admin";

/// Declares the sockets a role's `run` serves itself: a struct with one public `TcpListener`
/// field per listener (named as in [`crate::Role::LISTENERS`], the admin listener left out: the
/// runtime serves it) and `take(bound)`, which takes them out of what the runtime bound.
///
/// ```ignore
/// hydrant_runtime::listeners! {
///     /// The sockets the agent serves.
///     pub struct Listeners for Agent {
///         /// The gRPC v2 Ingress (`listen`).
///         ingress,
///     }
/// }
/// ```
#[macro_export]
macro_rules! listeners {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident for $role:ty {
            $( $(#[$field_meta:meta])* $field:ident ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug)]
        $vis struct $name {
            $( $(#[$field_meta])* pub $field: ::tokio::net::TcpListener, )+
        }

        impl $name {
            /// Takes the listeners out of what the runtime bound for the role.
            ///
            /// # Errors
            /// [`hydrant_runtime::Error::NoListener`] when the role did not declare one.
            pub fn take(
                mut bound: $crate::Listeners,
            ) -> ::std::result::Result<Self, $crate::Error> {
                Ok(Self {
                    $( $field: bound.take(stringify!($field))?, )+
                })
            }
        }
    };
}

/// A listener of a role (see [`ListenerSpec`]), in one line of its `LISTENERS`.
pub const fn listener<C>(
    name: &'static str,
    field: &'static str,
    default: &'static str,
    address: fn(&C) -> &str,
) -> ListenerSpec<C> {
    ListenerSpec {
        name,
        field,
        default,
        address,
    }
}

/// The sockets bound for one role, by the names its [`Role::LISTENERS`] gave them, and where
/// the role mounts its admin routes.
#[derive(Debug, Default)]
pub struct Listeners {
    bound: Vec<(&'static str, TcpListener)>,
    admin_routes: AdminRoutes,
}

impl Listeners {
    /// Listeners bound elsewhere, by name (tests that already hold sockets).
    #[must_use]
    pub fn from_bound(bound: Vec<(&'static str, TcpListener)>) -> Self {
        Self {
            bound,
            admin_routes: AdminRoutes::default(),
        }
    }

    /// Serves `routes` on the role's admin listener beside `/healthz` and `/metrics`, from now
    /// on (a role mounts its status routes once it has built the state they read).
    pub fn mount_admin(&self, routes: axum::Router) {
        self.admin_routes.mount(routes);
    }

    /// The mount point [`Listeners::mount_admin`] serves, for the runtime's admin server.
    pub(crate) fn admin_routes(&self) -> AdminRoutes {
        self.admin_routes.clone()
    }

    /// Takes the listener called `name` out.
    ///
    /// # Errors
    /// [`Error::NoListener`] when the role did not declare it (or took it twice).
    pub fn take(&mut self, name: &'static str) -> Result<TcpListener, Error> {
        let at = self
            .bound
            .iter()
            .position(|(n, _)| *n == name)
            .ok_or(Error::NoListener(name))?;
        Ok(self.bound.swap_remove(at).1)
    }

    /// Takes the listener called `name` out if it was bound: one a role can run without, left
    /// unbound when its address is empty (see [`bind_on`]).
    pub fn take_optional(&mut self, name: &'static str) -> Option<TcpListener> {
        self.take(name).ok()
    }

    /// Where the listener called `name` is bound, if it is.
    #[must_use]
    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.bound
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, l)| l.local_addr().ok())
    }

    /// Every listener's name and bound address, in declaration order.
    #[must_use]
    pub fn addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        self.bound
            .iter()
            .filter_map(|(n, l)| Some((*n, l.local_addr().ok()?)))
            .collect()
    }
}

/// Binds every listener `R` declares at the address its config gives.
///
/// # Errors
/// [`Error::Bind`] naming the field and the address.
pub async fn bind<R: Role>(config: &R::Config) -> Result<Listeners, Error> {
    bind_on::<R>(|spec| (spec.address)(config).to_owned()).await
}

/// Binds every listener `R` declares at `address(spec)`: the caller picks (`127.0.0.1:0` for
/// a kernel-chosen port). An empty address leaves that listener unbound: an optional one (the
/// cloud controller's internal API without `tls`), which the role takes with
/// [`Listeners::take_optional`].
///
/// # Errors
/// [`Error::Bind`] naming the field and the address.
pub async fn bind_on<R: Role>(
    address: impl Fn(&ListenerSpec<R::Config>) -> String,
) -> Result<Listeners, Error> {
    let mut bound = Vec::with_capacity(R::LISTENERS.len());
    for spec in R::LISTENERS {
        let addr = address(spec);
        if addr.trim().is_empty() {
            continue;
        }
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| Error::Bind {
                field: spec.field,
                addr,
                source,
            })?;
        bound.push((spec.name, listener));
    }
    Ok(Listeners::from_bound(bound))
}
