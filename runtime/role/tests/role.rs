//! The runtime seen from a role: a toy role declares its listeners as data, the runtime binds
//! them (naming the config field when it cannot), loads its config refusing unknown fields, and
//! runs it until shutdown.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::io::Write as _;

use hydrant_runtime::{Error, ListenerSpec, Listeners, Registry, Role, bind, bind_on, invalid};
use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct EchoConfig {
    listen: String,
    admin_listen: String,
    greeting: String,
}

impl Default for EchoConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:0".to_owned(),
            admin_listen: "127.0.0.1:0".to_owned(),
            greeting: "hello".to_owned(),
        }
    }
}

struct Echo;

impl Role for Echo {
    const NAME: &'static str = "echo";
    type Config = EchoConfig;
    type Error = Error;
    const LISTENERS: &'static [ListenerSpec<EchoConfig>] = &[
        ListenerSpec {
            name: "echo",
            field: "listen",
            default: "127.0.0.1:0",
            address: |c| &c.listen,
        },
        ListenerSpec {
            name: "admin",
            field: "admin_listen",
            default: "127.0.0.1:0",
            address: |c| &c.admin_listen,
        },
    ];

    fn validate(config: &EchoConfig) -> Result<(), Error> {
        if config.greeting.is_empty() {
            return Err(invalid("greeting", "write a word to greet with").into());
        }
        Ok(())
    }

    fn registry(_: &EchoConfig) -> Registry {
        Registry::new("echo", "0")
    }

    async fn run(
        config: EchoConfig,
        mut listeners: Listeners,
        registry: Registry,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        let echo = listeners.take("echo")?;
        let greeted = registry.counter("echo.greeted", "Connections greeted.", &[]);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                accepted = echo.accept() => {
                    let (mut s, _) = accepted.map_err(|source| Error::Bind {
                        field: "listen", addr: config.listen.clone(), source,
                    })?;
                    let _ = s.write_all(config.greeting.as_bytes()).await;
                    greeted.inc();
                }
            }
        }
    }
}

#[tokio::test]
async fn a_role_runs_on_what_the_runtime_bound_and_counts_into_the_registry_it_was_given() {
    let config = EchoConfig::default();
    Echo::validate(&config).unwrap();
    let listeners = bind::<Echo>(&config).await.unwrap();
    let addr = listeners.local_addr("echo").unwrap();
    assert!(listeners.local_addr("admin").is_some());
    assert_eq!(
        listeners
            .addrs()
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>(),
        ["echo", "admin"]
    );
    let registry = Echo::registry(&config);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(Echo::run(
        config,
        listeners,
        registry.clone(),
        shutdown.clone(),
    ));
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut got = vec![0; 5];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(got, b"hello");
    // The caller reads the role's counters from the registry directly: no HTTP scrape.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while registry.counter_sum("echo.greeted", &[]) < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the greeting was never counted"
        );
        tokio::task::yield_now().await;
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_taken_address_is_reported_with_its_config_field() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let config = EchoConfig {
        admin_listen: addr.clone(),
        ..EchoConfig::default()
    };
    let err = bind::<Echo>(&config).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            Error::Bind {
                field: "admin_listen",
                ..
            }
        ),
        "{text}"
    );
    assert!(
        text.contains(&addr) && text.contains("admin_listen"),
        "{text}"
    );
}

#[tokio::test]
async fn bind_on_lets_the_caller_choose_and_a_missing_listener_is_an_error_not_a_panic() {
    let mut listeners = bind_on::<Echo>(|_| "127.0.0.1:0".to_owned()).await.unwrap();
    listeners.take("echo").unwrap();
    assert!(matches!(
        listeners.take("echo"),
        Err(Error::NoListener("echo"))
    ));
    assert!(matches!(
        listeners.take("nope"),
        Err(Error::NoListener("nope"))
    ));
}

#[test]
fn load_refuses_unknown_fields_and_names_the_file() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "greting = \"hi\"").unwrap();
    let err = hydrant_runtime::load::<EchoConfig>(file.path()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Parse { .. }), "{text}");
    assert!(
        text.contains("greting") && text.contains(&file.path().display().to_string()),
        "{text}"
    );

    let missing = hydrant_runtime::load::<EchoConfig>(std::path::Path::new("/nonexistent/x.toml"));
    assert!(matches!(missing, Err(Error::Read { .. })));

    let config: EchoConfig = toml::from_str("greeting = \"\"").unwrap();
    let err = Echo::validate(&config).unwrap_err().to_string();
    assert!(err.contains("greeting"), "{err}");
}

/// A role whose only socket is its admin listener, written with the runtime's defaults.
struct AdminOnly;

impl Role for AdminOnly {
    const NAME: &'static str = "admin-only";
    type Config = EchoConfig;
    type Error = Error;
    const LISTENERS: &'static [ListenerSpec<EchoConfig>] =
        &[hydrant_runtime::admin_listener("127.0.0.1:0", |c| {
            &c.admin_listen
        })];

    fn validate(_: &EchoConfig) -> Result<(), Error> {
        Ok(())
    }

    async fn run(
        _: EchoConfig,
        listeners: Listeners,
        _: Registry,
        _: CancellationToken,
    ) -> Result<(), Error> {
        hydrant_runtime::AdminListener::<Self>::take(listeners).map(drop)
    }
}

#[tokio::test]
async fn an_admin_only_role_binds_admin_listen_and_counts_under_its_name() {
    let config = EchoConfig::default();
    let spec = &AdminOnly::LISTENERS[0];
    assert_eq!((spec.name, spec.field), ("admin", "admin_listen"));
    let set = hydrant_runtime::AdminListener::<AdminOnly>::bind(&config)
        .await
        .unwrap();
    assert!(set.admin.local_addr().unwrap().ip().is_loopback());
    assert_eq!(AdminOnly::registry(&config).source_id(), "admin-only");
    let bound = bind::<AdminOnly>(&config).await.unwrap();
    AdminOnly::run(
        config,
        bound,
        Registry::new("x", "0"),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    // A role that asks for the admin set without declaring it gets an error, not a panic.
    let echo_only = Listeners::from_bound(Vec::new());
    assert!(matches!(
        hydrant_runtime::AdminListener::<AdminOnly>::take(echo_only),
        Err(Error::NoListener("admin"))
    ));
}
