//! Running a role: [`run`] on listeners already bound (the micro cloud, tests), serving the
//! role's admin listener beside it, and [`run_from_file`], the whole of
//! `hydrant run ROLE --config FILE` (read the file, validate, bind, say where the role listens,
//! run until SIGINT/SIGTERM).
//!
//! Invariant: a role is only ever started through [`run_with_registry`], so every role's config
//! is validated before its code runs and every role's `/healthz` and `/metrics` are the
//! runtime's; nothing is bound before the config validates, so a bad config never holds a port.

use std::path::Path;

use tokio_util::sync::CancellationToken;

use crate::{ADMIN, Error, Listeners, Registry, Role, admin, bind, load};

/// Why [`run_from_file`] stopped: the runtime refused to start the role, or the role failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError<E: std::error::Error + 'static> {
    /// Reading, parsing or binding failed.
    #[error(transparent)]
    Runtime(#[from] crate::Error),
    /// The role's config did not validate, or the role stopped with an error.
    #[error(transparent)]
    Role(E),
}

/// Runs role `R` from the TOML file at `path` until SIGINT or SIGTERM. `say` receives the
/// start-up line (where it listens, and what [`Role::describe`] adds).
///
/// # Errors
/// The file cannot be read or parsed, the config does not validate, a listener cannot be bound,
/// or the role stopped with an error.
pub async fn run_from_file<R: Role>(
    path: &Path,
    say: impl FnOnce(&str),
) -> Result<(), RunError<R::Error>> {
    let config: R::Config = load(path)?;
    R::validate(&config).map_err(RunError::Role)?;
    let listeners = bind::<R>(&config).await?;
    let mut line = format!("{}:", R::NAME);
    for (i, (name, addr)) in listeners.addrs().into_iter().enumerate() {
        let sep = if i == 0 { " " } else { ", " };
        line.push_str(&format!("{sep}{name} on {addr}"));
    }
    if let Some(more) = R::describe(&config) {
        line.push_str(&format!("; {more}"));
    }
    say(&line);
    let registry = R::registry(&config);
    run_with_registry::<R>(config, listeners, registry, shutdown_on_signal())
        .await
        .map_err(RunError::Role)
}

/// Runs role `R` on `listeners` until `shutdown` fires, counting into the registry
/// [`Role::registry`] gives it. See [`run_with_registry`].
///
/// # Errors
/// The config does not validate, the role stopped with an error, or its admin listener failed.
pub async fn run<R: Role>(
    config: R::Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), R::Error> {
    let registry = R::registry(&config);
    run_with_registry::<R>(config, listeners, registry, shutdown).await
}

/// Runs role `R` on `listeners` until `shutdown` fires: validates its config, serves its admin
/// listener (`/healthz`, `/metrics` over `registry`, the routes it mounts) while [`Role::run`]
/// runs, and stops the admin server once the role has returned, so the last scrape sees every
/// count the role made. The caller keeps a clone of `registry` to read the counters directly.
///
/// # Errors
/// The config does not validate, the role stopped with an error, or its admin listener failed.
pub async fn run_with_registry<R: Role>(
    config: R::Config,
    mut listeners: Listeners,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), R::Error> {
    R::validate(&config)?;
    let admin_stop = shutdown.child_token();
    let admin = listeners.take(ADMIN).ok().map(|listener| {
        admin::spawn(
            listener,
            registry.clone(),
            listeners.admin_routes(),
            admin_stop.clone(),
        )
    });
    let ran = R::run(config, listeners, registry, shutdown).await;
    admin_stop.cancel();
    let admin = match admin {
        Some(task) => admin::finish(task).await,
        None => Ok(()),
    };
    ran?;
    admin.map_err(|e| Error::Admin(e).into())
}

/// A token cancelled on Ctrl-C (SIGINT) or SIGTERM, whichever comes first.
#[must_use]
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        t.cancel();
    });
    token
}
