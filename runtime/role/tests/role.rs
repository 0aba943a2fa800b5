//! The runtime seen from a role: a toy role declares its listeners as data, the runtime binds
//! them (naming the config field when it cannot), loads its config refusing unknown fields,
//! serves its `/healthz`, `/metrics` and mounted routes, and runs it until shutdown.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::io::Write as _;

use hydrant_runtime::{
    Error, ListenerSpec, Listeners, Registry, Role, Validate, bind, bind_on, invalid,
};
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

impl Validate for EchoConfig {
    type Error = Error;

    fn validate(&self) -> Result<(), Error> {
        if self.greeting.is_empty() {
            return Err(invalid("greeting", "write a word to greet with").into());
        }
        Ok(())
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

/// A role whose only socket is its admin listener, written with the runtime's defaults: it
/// counts, mounts a status route once it has the state the route reads, and waits.
struct AdminOnly;

impl Role for AdminOnly {
    const NAME: &'static str = "admin-only";
    type Config = EchoConfig;
    type Error = Error;
    const LISTENERS: &'static [ListenerSpec<EchoConfig>] =
        &[hydrant_runtime::admin_listener("127.0.0.1:0", |c| {
            &c.admin_listen
        })];

    async fn run(
        config: EchoConfig,
        listeners: Listeners,
        registry: Registry,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        // The admin listener is the runtime's: the role never gets it.
        assert!(listeners.addrs().is_empty());
        registry
            .counter("admin_only.started", "Starts.", &[("greeting", "x")])
            .inc();
        let greeting = config.greeting;
        // Mounted only once the role is told to, so the test sees the 404 before.
        shutdown.cancelled().await;
        listeners.mount_admin(axum::Router::new().route(
            "/greeting",
            axum::routing::get(move || async move { greeting }),
        ));
        Ok(())
    }
}

/// GET `path` from `addr`: the status and the body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test]
async fn the_runtime_serves_healthz_metrics_and_the_routes_a_role_mounts() {
    let config = EchoConfig::default();
    let spec = &AdminOnly::LISTENERS[0];
    assert_eq!((spec.name, spec.field), ("admin", "admin_listen"));
    let bound = bind::<AdminOnly>(&config).await.unwrap();
    let admin = bound.local_addr("admin").unwrap();
    assert!(admin.ip().is_loopback());
    let registry = AdminOnly::registry(&config);
    assert_eq!(registry.source_id(), "admin-only");
    let stop_role = CancellationToken::new();
    let task = tokio::spawn(hydrant_runtime::run_with_registry::<AdminOnly>(
        config,
        bound,
        registry.clone(),
        stop_role.clone(),
    ));

    assert_eq!(get(admin, "/healthz").await, (200, "ok\n".to_owned()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, body) = get(admin, "/metrics").await;
        assert_eq!(status, 200);
        if body.contains("admin_only_started") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never counted: {body}"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(get(admin, "/greeting").await.0, 404);
    stop_role.cancel();
    task.await.unwrap().unwrap();
    // Once the role has returned, the runtime has stopped its admin server too.
    assert!(
        reqwest::get(format!("http://{admin}/healthz"))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_mounted_route_is_served_beside_healthz_and_metrics() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listeners = Listeners::from_bound(vec![("admin", listener)]);
    listeners
        .mount_admin(axum::Router::new().route("/status", axum::routing::get(|| async { "fine" })));
    let stop = CancellationToken::new();
    let task = tokio::spawn(hydrant_runtime::run::<Mounted>(
        EchoConfig::default(),
        listeners,
        stop.clone(),
    ));
    assert_eq!(get(addr, "/status").await, (200, "fine".to_owned()));
    assert_eq!(get(addr, "/healthz").await.0, 200);
    assert_eq!(get(addr, "/nope").await.0, 404);
    stop.cancel();
    task.await.unwrap().unwrap();
}

/// A role that only waits: its admin routes were mounted by whoever bound its listeners.
struct Mounted;

impl Role for Mounted {
    const NAME: &'static str = "mounted";
    type Config = EchoConfig;
    type Error = Error;
    const LISTENERS: &'static [ListenerSpec<EchoConfig>] =
        &[hydrant_runtime::admin_listener("127.0.0.1:0", |c| {
            &c.admin_listen
        })];

    async fn run(
        _: EchoConfig,
        _: Listeners,
        _: Registry,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        shutdown.cancelled().await;
        Ok(())
    }
}

#[tokio::test]
async fn a_config_that_does_not_validate_never_reaches_the_role() {
    let config = EchoConfig {
        greeting: String::new(),
        ..EchoConfig::default()
    };
    let listeners = bind_on::<Echo>(|_| "127.0.0.1:0".to_owned()).await.unwrap();
    let err = hydrant_runtime::run::<Echo>(config, listeners, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("greeting"), "{err}");
}
