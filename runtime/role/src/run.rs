//! `hydrant run ROLE --config FILE` as one generic function over [`Role`]: read the file,
//! validate, bind, say where the role listens, run until SIGINT/SIGTERM.
//!
//! Invariant: nothing is bound before the config validates, so a bad config never holds a port;
//! the role sees the same [`Listeners`] and registry it would get in the micro cloud.

use std::path::Path;

use tokio_util::sync::CancellationToken;

use crate::{Role, bind, load};

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
    R::run(config, listeners, registry, shutdown_on_signal())
        .await
        .map_err(RunError::Role)
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
