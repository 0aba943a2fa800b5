//! The cloud controller on PostgreSQL (Cloud Foundry's CCDB), against a real, throwaway
//! server: every table family through the API and a restart, and two controllers on one
//! database and one blob directory: what one writes the other serves, either can die, and
//! work only one may do (placement, an orphan mitigation) is done once; and TLS to the server
//! when the URL names the CA (`sslrootcert`), refusing a server another CA vouches for.
//!
//! Needs PostgreSQL's server (the Debian package `postgresql`, which `scripts/test`
//! installs); as root the server runs as an unprivileged uid.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

#[path = "common/postgres.rs"]
mod pg;
#[path = "common/support.rs"]
mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{Method, StatusCode};
use axum::routing::{any, get};
use hydrant_api::services::{CreateServiceBroker, CreateServiceInstance, ServiceInstanceType};
use hydrant_api::{CreateUser, SpaceRole, UpdateApp};
use hydrant_bus::messages;
use hydrant_bus::{Bus, Config as BusConfig};
use hydrant_emitter::Registry;
use hydrant_testkit::wait_for;
use serde_json::json;

use pg::Postgres;
use support::{Cc, FakeExecutor, Options, app_dir, scale_to};

const WAIT: Duration = Duration::from_secs(30);

/// A server with database `name` created; off the async runtime (the client blocks).
async fn postgres_with(name: &'static str) -> (Postgres, String) {
    tokio::task::spawn_blocking(move || {
        let server = Postgres::start();
        let url = server.create_db(name);
        (server, url)
    })
    .await
    .unwrap()
}

fn options(bus: &str, url: &str, shared: &Path, instance: &str) -> Options {
    let mut options = Options::new(bus);
    options.db_url = Some(url.to_owned());
    options.blobs_dir = Some(shared.join("blobs"));
    options.token_keys_dir = Some(shared.join("token_keys"));
    options.instance_id = Some(instance.to_owned());
    options
}

/// Pushes a static site to `app` and stages it; the build's droplet guid.
async fn push_static(client: &hydrant_api::Client, app: &str) -> String {
    let site = app_dir(&[("index.html", b"<h1>hello</h1>", 0o644)]);
    client.push_dir(app, site.path()).await.unwrap();
    let build = client
        .create_build(app, &hydrant_api::CreateBuild::default())
        .await
        .unwrap();
    let build = client.wait_for_build(&build.guid, WAIT).await.unwrap();
    assert_eq!(build.state, hydrant_api::BuildState::Staged, "{build:?}");
    build.droplet_guid.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_table_family_round_trips_through_postgres_and_survives_a_restart() {
    let (server, url) = postgres_with("ccdb_flows").await;
    let shared = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let bus = "pg-flows";
    let options = options(bus, &url, shared.path(), "cc-0");
    let cc = Cc::start(data.path(), &options).await;
    let admin = cc.admin.clone();

    // Orgs, spaces, users and roles.
    let org = admin.create_org("acme").await.unwrap();
    let space = admin.create_space_in(&org.guid, "prod").await.unwrap();
    admin
        .create_user(&CreateUser {
            username: "dev".into(),
            password: "dev-password-1".into(),
            admin: false,
        })
        .await
        .unwrap();
    admin
        .assign_role(&space.guid, "dev", SpaceRole::Developer)
        .await
        .unwrap();
    let dev = cc.anonymous().with_token(
        cc.anonymous()
            .login("dev", "dev-password-1")
            .await
            .unwrap()
            .access_token,
    );
    assert!(
        dev.list_spaces()
            .await
            .unwrap()
            .iter()
            .any(|s| s.guid == space.guid)
    );

    // Apps, routes, packages, builds and droplets.
    let app = dev
        .create_app(&hydrant_api::CreateApp {
            name: "shop".into(),
            space: Some(space.guid.clone()),
            ..hydrant_api::CreateApp::default()
        })
        .await
        .unwrap();
    let droplet = push_static(&dev, &app.guid).await;
    assert_eq!(dev.current_droplet(&app.guid).await.unwrap().guid, droplet);
    dev.map_route(&app.guid, "shop.apps.localhost")
        .await
        .unwrap();
    let routes = dev.app_routes(&app.guid).await.unwrap();
    assert!(
        routes.iter().any(|r| r.url == "shop.apps.localhost"),
        "{routes:?}"
    );
    let updated = dev
        .update_app(
            &app.guid,
            &UpdateApp {
                env: Some([("GREETING".to_owned(), "hi".to_owned())].into()),
                ..UpdateApp::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.env.get("GREETING").map(String::as_str), Some("hi"));
    let events = admin
        .audit_events(&hydrant_api::EventFilter::default())
        .await
        .unwrap();
    assert!(
        events.iter().any(|e| e.target_guid == app.guid),
        "{events:?}"
    );

    // The database goes away: the API answers 503 saying so, and recovers by itself.
    let server = tokio::task::spawn_blocking(move || {
        let mut server = server;
        server.halt();
        server
    })
    .await
    .unwrap();
    let refused = dev.app(&app.guid).await.unwrap_err();
    match &refused {
        hydrant_api::Error::Api { status, errors } => {
            assert_eq!(*status, 503, "{refused:?}");
            assert!(
                errors.iter().any(|e| e.detail.contains("database")),
                "{refused:?}"
            );
        }
        other => panic!("expected a 503, got {other:?}"),
    }
    let server = tokio::task::spawn_blocking(move || {
        let mut server = server;
        server.run();
        server
    })
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match dev.app(&app.guid).await {
            Ok(_) => break,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "the API did not recover once the database was back: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A restart on the same database migrates nothing and finds everything.
    cc.stop().await;
    let cc = Cc::start(data.path(), &options).await;
    let again = cc.admin.app(&app.guid).await.unwrap();
    assert_eq!(
        again.current_droplet_guid.as_deref(),
        Some(droplet.as_str())
    );
    assert_eq!(again.routes, vec!["shop.apps.localhost".to_owned()]);
    cc.admin.delete_app(&app.guid).await.unwrap();
    assert!(cc.admin.app(&app.guid).await.is_err());
    cc.stop().await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_on_one_database_serve_side_by_side_and_either_can_die() {
    let (server, url) = postgres_with("ccdb_pair").await;
    let shared = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let bus = "pg-pair";
    let cell = FakeExecutor::start(bus, "cell-pair", 8192, 20, false).await;
    let (opts_a, opts_b) = (
        options(bus, &url, shared.path(), "cc-a"),
        options(bus, &url, shared.path(), "cc-b"),
    );
    // Started together on a fresh database and an empty token key directory: one migrates
    // and creates the administrator (under the advisory lock) and one the signing key (under
    // the directory's lock); the other finds them done, so either's tokens verify at both.
    let (a, b) = tokio::join!(
        Cc::start(data_a.path(), &opts_a),
        Cc::start(data_b.path(), &opts_b),
    );
    assert_eq!(a.admin.list_users().await.unwrap().len(), 1);

    // Created and pushed through A (blobs land in the shared directory) ...
    let app = a
        .admin
        .create_app(&hydrant_api::CreateApp {
            name: "pair".into(),
            ..hydrant_api::CreateApp::default()
        })
        .await
        .unwrap();
    push_static(&a.admin, &app.guid).await;
    // ... seen, started and scaled through B; B's droplet URL serves A's droplet.
    assert_eq!(b.admin.app(&app.guid).await.unwrap().name, "pair");
    b.admin.start_app(&app.guid).await.unwrap();
    scale_to(&b.admin, &app.guid, 3).await;
    wait_for(WAIT, "three instances running", || {
        let running = cell.running(&app.guid);
        async move { running == 3 }
    })
    .await;
    // Placement is one controller's (the lease): three starts, not six.
    let starts = |cell: &FakeExecutor| {
        cell.state
            .lock()
            .unwrap()
            .starts
            .iter()
            .filter(|s| s.app == app.guid)
            .count()
    };
    assert_eq!(starts(&cell), 3);
    // A token A issued is good at B (one key directory).
    let token = a
        .anonymous()
        .login("admin", support::ADMIN_PASSWORD)
        .await
        .unwrap();
    let via_b = b.anonymous().with_token(token.access_token);
    assert_eq!(via_b.app(&app.guid).await.unwrap().instances, 3);

    // The placement lease's holder dies mid-flight. The other keeps serving, takes placement
    // over once the lease lapses, and scales and deletes.
    let lease_url = url.clone();
    let holder: String = tokio::task::spawn_blocking(move || {
        let mut client = postgres::Client::connect(&lease_url, postgres::NoTls).unwrap();
        client
            .query_one("SELECT holder FROM leases WHERE name = 'placement'", &[])
            .unwrap()
            .get(0)
    })
    .await
    .unwrap();
    let (dead, b) = if holder.starts_with("cc-a/") {
        (a, b)
    } else {
        (b, a)
    };
    dead.kill().await;
    scale_to(&b.admin, &app.guid, 1).await;
    wait_for(WAIT, "B to scale down to one instance", || {
        let running = cell.running(&app.guid);
        async move { running == 1 }
    })
    .await;
    let pushed = b
        .admin
        .create_app(&hydrant_api::CreateApp {
            name: "after".into(),
            ..hydrant_api::CreateApp::default()
        })
        .await
        .unwrap();
    push_static(&b.admin, &pushed.guid).await;
    b.admin.delete_app(&app.guid).await.unwrap();
    assert!(b.admin.app(&app.guid).await.is_err());
    wait_for(WAIT, "the deleted app's instance to stop", || {
        let running = cell.running(&app.guid);
        async move { running == 0 }
    })
    .await;
    b.stop().await;
    drop(server);
}

// === a broker whose provisions fail, for the orphan mitigation ===

#[derive(Debug, Default)]
struct Calls {
    puts: Vec<String>,
    deletes: Vec<String>,
}

async fn catalog() -> axum::Json<serde_json::Value> {
    axum::Json(json!({"services": [{
        "id": "svc-flaky", "name": "flaky", "description": "fails every provision",
        "bindable": true,
        "plans": [{"id": "p-flaky", "name": "small", "description": "the plan"}]
    }]}))
}

async fn instance(
    State(calls): State<Arc<Mutex<Calls>>>,
    method: Method,
    UrlPath(id): UrlPath<String>,
) -> (StatusCode, axum::Json<serde_json::Value>) {
    let mut calls = calls.lock().unwrap();
    if method == Method::PUT {
        calls.puts.push(id);
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"description": "out of luck"})),
        )
    } else {
        calls.deletes.push(id);
        (StatusCode::OK, axum::Json(json!({})))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_controllers_a_failed_provision_is_called_and_orphan_mitigated_once() {
    let (server, url) = postgres_with("ccdb_orphans").await;
    let calls = Arc::new(Mutex::new(Calls::default()));
    let broker = Router::new()
        .route("/v2/catalog", get(catalog))
        .route("/v2/service_instances/{id}", any(instance))
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broker_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, broker).await });

    let shared = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let bus = "pg-orphans";
    let services = hydrant_cloudcontroller::ServicesConfig {
        allow_private_brokers: true,
        broker_timeout_secs: 2,
        poll_interval_secs: 1,
        max_poll_interval_secs: 1,
        orphan_retry_secs: 1,
        ..hydrant_cloudcontroller::ServicesConfig::default()
    };
    let mut opts_a = options(bus, &url, shared.path(), "cc-a");
    opts_a.services = Some(services.clone());
    let mut opts_b = options(bus, &url, shared.path(), "cc-b");
    opts_b.services = Some(services);
    let a = Cc::start(data_a.path(), &opts_a).await;
    let b = Cc::start(data_b.path(), &opts_b).await;

    a.admin
        .create_service_broker(&CreateServiceBroker {
            name: "flaky".into(),
            url: broker_url,
            username: "user".into(),
            password: "pass".into(),
        })
        .await
        .unwrap();
    a.enable_offering("flaky").await;
    let answer = b
        .admin
        .create_service_instance(&CreateServiceInstance {
            name: "doomed".into(),
            kind: ServiceInstanceType::Managed,
            offering: Some("flaky".into()),
            plan: Some("small".into()),
            ..CreateServiceInstance::default()
        })
        .await
        .unwrap();
    let guid = answer.instance.guid;
    wait_for(
        WAIT,
        "the create to fail and its orphan to be deleted",
        || {
            let calls = calls.clone();
            let a = a.admin.clone();
            let guid = guid.clone();
            async move {
                let deleted = !calls.lock().unwrap().deletes.is_empty();
                let failed = a
                    .service_instance(&guid)
                    .await
                    .is_ok_and(|i| i.last_operation.state == "failed");
                deleted && failed
            }
        },
    )
    .await;
    // Both runners poll every second: a few rounds in which neither may repeat a step.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (puts, deletes) = {
        let calls = calls.lock().unwrap();
        (calls.puts.clone(), calls.deletes.clone())
    };
    assert_eq!(puts, vec![guid.clone()], "the provision ran more than once");
    assert_eq!(
        deletes,
        vec![guid],
        "the orphan mitigation ran more than once"
    );
    a.stop().await;
    b.stop().await;
    drop(server);
}

/// Copies `identity`'s certificate and key from `certs` to a directory the server's user
/// owns (PostgreSQL wants its key private to itself); their paths.
fn server_files(certs: &hydrant_tls::issue::CertDir, to: &Path) -> (String, String) {
    use std::os::unix::fs::PermissionsExt as _;
    let identity = hydrant_tls::Identity::CloudController;
    let (cert, key) = (to.join("server.pem"), to.join("server.key"));
    std::fs::copy(certs.cert_file(identity), &cert).unwrap();
    std::fs::copy(certs.key_file(identity), &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    if is_root() {
        for path in [to, cert.as_path(), key.as_path()] {
            std::os::unix::fs::chown(path, Some(65534), Some(65534)).unwrap();
        }
    }
    (cert.display().to_string(), key.display().to_string())
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_naming_the_ca_reaches_postgres_over_tls_and_refuses_a_server_another_ca_signed() {
    let (server, url) = postgres_with("ccdb_tls").await;
    // The server's certificate from `hydrant certs`' CA, naming the address it listens on.
    let certs = tempfile::tempdir().unwrap();
    let ours = hydrant_tls::issue::ensure(
        &certs.path().join("ours"),
        &[hydrant_tls::Identity::CloudController],
        &["127.0.0.1".to_owned()],
    )
    .unwrap();
    let other = hydrant_tls::issue::init(&certs.path().join("other"), 1).unwrap();
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = server_files(&ours, files.path());
    let plain = url.clone();
    tokio::task::spawn_blocking(move || {
        let mut c = postgres::Client::connect(&plain, postgres::NoTls).unwrap();
        for statement in [
            format!("ALTER SYSTEM SET ssl_cert_file = '{cert}'"),
            format!("ALTER SYSTEM SET ssl_key_file = '{key}'"),
            "ALTER SYSTEM SET ssl = on".to_owned(),
            "SELECT pg_reload_conf()".to_owned(),
        ] {
            c.batch_execute(&statement).unwrap();
        }
        let deadline = std::time::Instant::now() + WAIT;
        while c.query_one("SHOW ssl", &[]).unwrap().get::<_, String>(0) != "on" {
            assert!(std::time::Instant::now() < deadline, "ssl never came on");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();

    // Named CA: every session the controller opens is TLS, and the API works on it.
    let shared = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let tls_url = format!(
        "{url}?sslmode=verify-full&sslrootcert={}",
        ours.ca_file().display()
    );
    let cc = Cc::start(
        data.path(),
        &options("pg-tls", &tls_url, shared.path(), "cc-tls"),
    )
    .await;
    let app = cc.app("secure").await;
    assert_eq!(cc.admin.app(&app.guid).await.unwrap().name, "secure");
    let plain = url.clone();
    let (sessions, encrypted) = tokio::task::spawn_blocking(move || {
        let mut c = postgres::Client::connect(&plain, postgres::NoTls).unwrap();
        let row = c
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
                 JOIN pg_stat_ssl s USING (pid) \
                 WHERE a.application_name = 'hydrant-cloudcontroller'",
                &[],
            )
            .unwrap();
        (row.get::<_, i64>(0), row.get::<_, i64>(1))
    })
    .await
    .unwrap();
    assert!(sessions >= 1, "the controller holds no session");
    assert_eq!(encrypted, sessions, "a controller session is not TLS");
    cc.stop().await;

    // Another CA: the server is not the one named, and the controller will not start on it.
    let mut config = hydrant_cloudcontroller::Config {
        listen: "127.0.0.1:0".into(),
        admin_listen: "127.0.0.1:0".into(),
        data_dir: tempfile::tempdir().unwrap().keep().display().to_string(),
        admin_password: Some("unused-password-1".into()),
        bus: hydrant_bus::Config::inprocess("pg-tls-other"),
        ..hydrant_cloudcontroller::Config::default()
    };
    config.db.url = format!("{url}?sslrootcert={}", other.ca_file().display());
    let listeners = hydrant_runtime::bind::<hydrant_cloudcontroller::CloudController>(&config)
        .await
        .unwrap();
    let stopped = tokio::time::timeout(
        WAIT,
        hydrant_runtime::run::<hydrant_cloudcontroller::CloudController>(
            config,
            listeners,
            tokio_util::sync::CancellationToken::new(),
        ),
    )
    .await
    .expect("a controller whose database presents an unknown certificate kept running");
    let e = format!(
        "{:#}",
        stopped.expect_err("it started on an unverified server")
    );
    assert!(e.contains("certificate"), "{e}");
    drop(server);
}

// === what two controllers behind one name share ===

/// The status of a wrong-password login at `cc`.
async fn wrong_password(cc: &Cc, user: &str) -> u16 {
    match cc.anonymous().login(user, "not-the-password").await {
        Err(hydrant_api::Error::Api { status, .. }) => status,
        other => panic!("a wrong password answered {other:?}"),
    }
}

/// A `POST` of `path` at `cc` with `token`; the status.
async fn post_with(cc: &Cc, token: &str, path: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{}{path}", cc.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_brake_and_cell_requests_hold_whichever_controller_is_asked() {
    let (server, url) = postgres_with("ccdb_shared").await;
    let shared = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let bus_name = "pg-shared";
    let cell = FakeExecutor::start(bus_name, "cell-shared", 8192, 20, false).await;
    let a = Cc::start(
        data_a.path(),
        &options(bus_name, &url, shared.path(), "cc-a"),
    )
    .await;
    // A holds the placement lease before B starts: B is the controller that never carries a
    // request out itself.
    let lease_url = url.clone();
    let holder = move || {
        let url = lease_url.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                client
                    .query_opt("SELECT holder FROM leases WHERE name = 'placement'", &[])
                    .unwrap()
                    .map(|r| r.get::<_, String>(0))
            })
            .await
            .unwrap()
        }
    };
    wait_for(WAIT, "A to hold the placement lease", || {
        let holder = holder();
        async move { holder.await.is_some_and(|h| h.starts_with("cc-a/")) }
    })
    .await;
    let b = Cc::start(
        data_b.path(),
        &options(bus_name, &url, shared.path(), "cc-b"),
    )
    .await;

    // Logged in before the guessing below slows the administrator's name (one key directory:
    // either controller accepts it).
    let token = a
        .anonymous()
        .login("admin", support::ADMIN_PASSWORD)
        .await
        .unwrap()
        .access_token;

    // A guesser alternating between the controllers meets one count: the free failures are
    // spent across both, and the next attempt is refused at either.
    for i in 0..5 {
        let cc = if i % 2 == 0 { &a } else { &b };
        assert_eq!(
            wrong_password(cc, "admin").await,
            401,
            "attempt {i} is free"
        );
    }
    assert_eq!(wrong_password(&b, "admin").await, 401);
    assert_eq!(wrong_password(&a, "admin").await, 429);
    assert_eq!(wrong_password(&b, "admin").await, 429);
    // Another name is not slowed.
    assert_eq!(wrong_password(&b, "nobody").await, 401);

    // Drain and kill asked of B (which holds no lease) reach the cell through A, the holder.
    let listener = Bus::connect(
        &BusConfig::inprocess(bus_name),
        &Registry::new("test", "listener"),
    )
    .await
    .unwrap();
    let mut evacuate = listener
        .subscribe(&messages::executor_evacuate_subject("cell-shared"))
        .await
        .unwrap();
    let mut kill = listener
        .subscribe(&messages::executor_kill_subject("cell-shared"))
        .await
        .unwrap();
    assert_eq!(
        post_with(&b, &token, "/v3/cells/no-such-cell/actions/drain").await,
        404
    );
    // Accepted once B has heard the cell (its heartbeats come every 100 ms).
    wait_for(WAIT, "B to take the drain", || {
        let (b, token) = (&b, &token);
        async move { post_with(b, token, "/v3/cells/cell-shared/actions/drain").await == 202 }
    })
    .await;
    let asked = tokio::time::timeout(WAIT, evacuate.next())
        .await
        .expect("the drain B took never reached the cell")
        .unwrap();
    let asked: messages::EvacuateCell = asked.json().unwrap();
    assert_eq!(asked.executor_id, "cell-shared");
    assert_eq!(
        post_with(&b, &token, "/v3/cells/cell-shared/actions/kill").await,
        202
    );
    tokio::time::timeout(WAIT, kill.next())
        .await
        .expect("the kill B took never reached the cell")
        .unwrap();
    drop(cell);
    a.stop().await;
    b.stop().await;
    drop(server);
}
