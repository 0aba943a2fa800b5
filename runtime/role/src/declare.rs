//! [`role!`](crate::role): the [`Role`](crate::Role) impl of a role that listens only on its
//! admin port, written as data (name, config, error, admin address, entry function) instead of
//! the same twenty lines of trait impl in every such role crate.
//!
//! Where it sits: a role crate declares itself with it; the runtime's [`run`](crate::run)
//! starts the result like any other [`Role`](crate::Role). Invariant: the expansion is exactly
//! the impl a role would write by hand — one admin listener, read from the config field named,
//! and the role's own entry function called with the validated config — so a role that needs
//! more (its own listeners, a different `validate`) implements [`Role`](crate::Role) itself.

/// Declares a unit struct and its [`Role`](crate::Role) impl for a role whose only listener is
/// its admin port.
///
/// ```ignore
/// hydrant_runtime::role! {
///     /// The OTLP nozzle: `hydrant run nozzle-otlp`.
///     pub struct OtlpNozzle {
///         name: "nozzle-otlp", config: Config, error: Error,
///         admin: "127.0.0.1:14842" => admin_listen,
///         registry: |c| Registry::new(ROLE, &c.instance_id),
///         describe: |c| format!("exporting to {}", c.endpoint),
///         serve: serve,
///     }
/// }
/// ```
///
/// `registry` and `describe` are optional (the [`Role`](crate::Role) defaults apply without
/// them). `serve` names an `async fn(Config, Registry, CancellationToken) -> Result<(), Error>`;
/// `serve_with_listeners` one that also takes `&Listeners` second, for a role that mounts
/// routes on its admin listener.
#[macro_export]
macro_rules! role {
    (
        $(#[$meta:meta])*
        $vis:vis struct $role:ident {
            name: $name:literal, config: $config:ty, error: $error:ty,
            admin: $admin:literal => $field:ident,
            $(registry: |$rc:ident| $registry:expr,)?
            $(describe: |$dc:ident| $describe:expr,)?
            $(serve: $serve:path,)?
            $(serve_with_listeners: $serve_l:path,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy)]
        $vis struct $role;

        impl $crate::Role for $role {
            const NAME: &'static str = $name;
            type Config = $config;
            type Error = $error;
            const LISTENERS: &'static [$crate::ListenerSpec<$config>] =
                &[$crate::admin_listener($admin, |c| &c.$field)];

            $(
                fn registry($rc: &$config) -> $crate::Registry {
                    $registry
                }
            )?

            $(
                fn describe($dc: &$config) -> ::std::option::Option<::std::string::String> {
                    ::std::option::Option::Some($describe)
                }
            )?

            async fn run(
                config: $config,
                listeners: $crate::Listeners,
                registry: $crate::Registry,
                shutdown: $crate::declare::CancellationToken,
            ) -> ::std::result::Result<(), $error> {
                $crate::role!(@entry [$($serve)?] [$($serve_l)?] config, listeners, registry, shutdown)
            }
        }
    };
    (@entry [$serve:path] [] $config:ident, $listeners:ident, $registry:ident, $shutdown:ident) => {{
        let _ = $listeners;
        $serve($config, $registry, $shutdown).await
    }};
    (@entry [] [$serve:path] $config:ident, $listeners:ident, $registry:ident, $shutdown:ident) => {
        $serve($config, &$listeners, $registry, $shutdown).await
    };
}

/// The shutdown token type the expansion names, so a role crate need not import it.
#[doc(hidden)]
pub use tokio_util::sync::CancellationToken;

#[cfg(test)]
mod tests {
    use crate::{Error, Registry, Validate};
    use tokio_util::sync::CancellationToken;

    #[derive(Debug, serde::Deserialize)]
    struct Config {
        admin_listen: String,
        copy: String,
    }

    impl Validate for Config {
        type Error = Error;

        fn validate(&self) -> Result<(), Error> {
            Ok(())
        }
    }

    async fn serve(
        config: Config,
        registry: Registry,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        let _ = (config, registry);
        shutdown.cancelled().await;
        Ok(())
    }

    crate::role! {
        /// A role declared the short way.
        struct Declared {
            name: "declared", config: Config, error: Error,
            admin: "127.0.0.1:14999" => admin_listen,
            registry: |c| Registry::new("declared", &c.copy),
            describe: |c| format!("copy {}", c.copy),
            serve: serve,
        }
    }

    crate::role! {
        struct Plain {
            name: "plain", config: Config, error: Error,
            admin: "127.0.0.1:14998" => admin_listen,
            serve: serve,
        }
    }

    #[tokio::test]
    async fn a_declared_role_is_the_impl_written_out() {
        use crate::Role as _;
        let config = Config {
            admin_listen: "127.0.0.1:0".to_owned(),
            copy: "3".to_owned(),
        };
        assert_eq!(Declared::NAME, "declared");
        let [admin] = Declared::LISTENERS else {
            panic!("one listener")
        };
        assert_eq!(
            (admin.name, admin.field, admin.default),
            ("admin", "admin_listen", "127.0.0.1:14999")
        );
        assert_eq!((admin.address)(&config), "127.0.0.1:0");
        assert_eq!(Declared::describe(&config).as_deref(), Some("copy 3"));
        assert_eq!(Plain::describe(&config), None);
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let listeners = crate::bind::<Plain>(&config).await.unwrap();
        Plain::run(config, listeners, Registry::new("plain", "0"), shutdown)
            .await
            .unwrap();
    }
}
