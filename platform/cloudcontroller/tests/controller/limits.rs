//! The API listener's abuse limits and the controller's state at rest: a slow-loris client
//! neither starves other clients nor holds more connections than its address may; bodies over
//! an endpoint's limit are refused and counted; the data directory, database, blobs and
//! droplets are readable by the platform's user only.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use hydrant_cloudcontroller::Config;
use hydrant_runtime::Limits;
use hydrant_testkit::{SlowLoris, fetch, p99, probe, prometheus_value, wait_for};
use tokio_util::sync::CancellationToken;

use crate::support::{ADMIN_PASSWORD, Cc, Options, push_and_stage};

const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A controller with `limits` on its API listener; returns the API and admin addresses.
async fn start(
    dir: &Path,
    limits: Limits,
    shutdown: &CancellationToken,
) -> (SocketAddr, SocketAddr) {
    let bus = format!("cc-limits-{}", std::process::id());
    let config = Config {
        listen: "127.0.0.1:0".into(),
        admin_listen: "127.0.0.1:0".into(),
        data_dir: dir.display().to_string(),
        admin_password: Some(ADMIN_PASSWORD.into()),
        password_hash_iterations: 1000,
        bus: hydrant_bus::Config::inprocess(&bus),
        limits,
        ..Config::default()
    };
    let listeners = hydrant_runtime::bind::<hydrant_cloudcontroller::CloudController>(&config)
        .await
        .unwrap();
    let api = listeners.local_addr("api").unwrap();
    let admin = listeners.local_addr("admin").unwrap();
    tokio::spawn(hydrant_runtime::run::<
        hydrant_cloudcontroller::CloudController,
    >(config, listeners, shutdown.clone()));
    wait_for(
        Duration::from_secs(10),
        "the API to answer",
        || async move {
            probe(api, CLIENT, "api", "/v3/info")
                .await
                .is_ok_and(|(s, _)| s == 200)
        },
    )
    .await;
    (api, admin)
}

async fn metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (status, text) = fetch(admin, ATTACKER, "admin", "/metrics").await.unwrap();
    assert_eq!(status, 200);
    prometheus_value(&text, name, labels)
}

#[tokio::test]
async fn a_slow_loris_neither_starves_the_api_nor_holds_more_than_its_cap() {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let limits = Limits {
        max_connections: 1000,
        max_connections_per_address: 200,
        header_read_timeout_ms: 3000,
        idle_timeout_secs: 30,
    };
    let (api, admin) = start(dir.path(), limits, &shutdown).await;

    let mut loris = SlowLoris::start(api, ATTACKER, 300, Duration::from_secs(1));
    wait_for(
        Duration::from_secs(10),
        "the loris to hold its connections",
        || {
            let c = loris.counts();
            async move { c.open == 200 && c.refused + c.closed == 100 }
        },
    )
    .await;

    // While the attacker holds every connection its address may have, another client is
    // served as fast as ever.
    let mut latencies = Vec::new();
    for _ in 0..100 {
        let (status, took) = probe(api, CLIENT, "api", "/v3/info").await.unwrap();
        assert_eq!(status, 200);
        latencies.push(took);
    }
    let p99 = p99(&latencies);
    println!("cloud controller p99 under a 300-connection slow loris: {p99:?}");
    assert!(p99 < Duration::from_millis(100), "p99 {p99:?}");
    assert!(loris.counts().open > 0, "the loris still held connections");

    let refused = [
        ("listener", "api"),
        ("reason", "max_connections_per_address"),
    ];
    assert_eq!(
        metric(admin, "listener_connections_refused_total", &refused).await,
        100.0
    );
    // The header read timeout then closes every connection that never finished its head.
    wait_for(Duration::from_secs(10), "the header timeout", || {
        let c = loris.counts();
        async move { c.open == 0 }
    })
    .await;
    let closed = [("listener", "api"), ("reason", "header_timeout")];
    assert_eq!(
        metric(admin, "listener_connections_closed_total", &closed).await,
        200.0
    );
    loris.stop();
    shutdown.cancel();
}

#[tokio::test]
async fn bodies_over_the_endpoint_limit_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let (api, admin) = start(dir.path(), Limits::default(), &shutdown).await;
    let http = reqwest::Client::new();
    let huge_login = serde_json::json!({
        "username": "admin",
        "password": "x".repeat(128 * 1024),
    });
    let response = http
        .post(format!("http://{api}/v3/tokens"))
        .json(&huge_login)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: hydrant_api::ApiErrors = response.json().await.unwrap();
    assert!(
        body.errors[0].detail.contains("max_small_request_bytes"),
        "{body:?}"
    );
    let refused = [("listener", "api"), ("reason", "body_too_large")];
    assert_eq!(
        metric(admin, "listener_requests_refused_total", &refused).await,
        1.0
    );

    // A resource list of the same size is an ordinary push and passes the body limit.
    let token = hydrant_api::Client::new(&format!("http://{api}"), None)
        .login("admin", ADMIN_PASSWORD)
        .await
        .unwrap()
        .access_token;
    let resources: Vec<_> = (0..1500)
        .map(|i| {
            serde_json::json!({
                "path": format!("static/assets/some/deep/directory/file-{i:05}.css"),
                "sha256": "0".repeat(64),
                "size": 10,
                "mode": 420,
            })
        })
        .collect();
    let response = http
        .post(format!("http://{api}/v3/resource_match"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "resources": resources }))
        .send()
        .await
        .unwrap();
    assert_ne!(response.status(), 413, "{:?}", response.text().await);
    assert_eq!(
        metric(admin, "listener_requests_refused_total", &refused).await,
        1.0
    );
    shutdown.cancel();
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[tokio::test]
async fn state_at_rest_is_readable_by_the_platform_only() {
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("cc");
    // An existing, world-readable directory is made private too.
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cc = Cc::start(&data, &Options::new("cc-at-rest")).await;
    let site: &[(&str, &[u8], u32)] = &[("index.html", b"<h1>private</h1>", 0o644)];
    let (_, build) = push_and_stage(&cc.admin, "private", site, None).await;
    assert_eq!(build.state, hydrant_api::BuildState::Staged, "{build:?}");

    assert_eq!(mode(&data), 0o700, "the data directory");
    for dir in ["blobs", "droplets", "tmp"] {
        assert_eq!(mode(&data.join(dir)), 0o700, "{dir}");
    }
    assert_eq!(
        mode(&data.join("cloudcontroller.db")),
        0o600,
        "the database"
    );
    let wal = data.join("cloudcontroller.db-wal");
    if wal.exists() {
        assert_eq!(mode(&wal), 0o600, "the WAL");
    }
    let mut blobs = Vec::new();
    files_under(&data.join("blobs"), &mut blobs);
    let mut droplets = Vec::new();
    files_under(&data.join("droplets"), &mut droplets);
    assert!(!blobs.is_empty() && !droplets.is_empty());
    for file in blobs.iter().chain(&droplets) {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    cc.stop().await;
}
