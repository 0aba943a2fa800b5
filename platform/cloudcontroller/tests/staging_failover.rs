//! A build outlives the cloud controller that accepted it: two controllers on one real
//! PostgreSQL (Cloud Foundry's CCDB) and one blob directory share the staging queue, so a
//! build queued through one is staged by the other's workers, and a build whose controller is
//! killed in the middle of staging is taken over by the survivor, staged again from its
//! package, and the app gets its droplet.
//!
//! Each controller runs on a runtime of its own, so "killed" is what a lost host does: the
//! runtime goes away with every task, without any shutdown path (no claim handed back, no
//! lease given up). Staging runs with `--isolation none` (no root needed): the install step is
//! npm running the package's own `install` script, which waits for a gate file the test
//! creates, so the first controller is provably in the middle of staging when it dies. The
//! queue's bounds hold in the database too: a space past its share is refused.
//!
//! Needs PostgreSQL's server and npm (the Debian packages `postgresql` and `npm`, which
//! `scripts/test` installs).

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

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use hydrant_api::{BuildState, Client, CreateApp, CreateBuild};
use hydrant_bus::Config as BusConfig;
use hydrant_cloudcontroller::{Config, IsolationMode, StagingIsolation};
use hydrant_testkit::FakeAgent;
use pg::Postgres;
use support::{ADMIN_PASSWORD, app_dir};
use tokio_util::sync::CancellationToken;

/// How long the survivor may take to restage a dead controller's build: the claim lapses
/// within 10 s, the survivor looks every second, npm starts in a second or two (CI is slow).
const TAKEOVER: Duration = Duration::from_secs(45);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A cloud controller on the shared database and blob directory, on the current runtime.
struct Controller {
    url: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), hydrant_cloudcontroller::Error>>,
}

async fn start(
    data: &Path,
    shared: &Path,
    db_url: &str,
    instance: &str,
    agent: &FakeAgent,
) -> Controller {
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        admin_listen: "127.0.0.1:0".into(),
        data_dir: data.display().to_string(),
        admin_password: Some(ADMIN_PASSWORD.into()),
        password_hash_iterations: 1000,
        converge_interval_ms: 200,
        staging_workers: 1,
        // Half of it, one place, is a space's share.
        staging_queue: 2,
        staging_timeout_secs: 300,
        staging_isolation: StagingIsolation {
            mode: IsolationMode::None,
            ..StagingIsolation::default()
        },
        endpoints: BTreeMap::from([("firehose".into(), "ws://127.0.0.1:1".into())]),
        bus: BusConfig::inprocess("stg-failover"),
        blobs_dir: Some(shared.join("blobs").display().to_string()),
        token_keys_dir: Some(shared.join("token_keys").display().to_string()),
        instance_id: instance.into(),
        ..Config::default()
    };
    config.db.url = db_url.to_owned();
    config.telemetry.agent = Some(agent.url());
    config.telemetry.interval_secs = 1;
    let listeners = hydrant_runtime::bind::<hydrant_cloudcontroller::CloudController>(&config)
        .await
        .unwrap();
    let addr = listeners.local_addr("api").unwrap();
    config.external_url = format!("http://{addr}");
    let url = config.external_url.clone();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(hydrant_runtime::run::<
        hydrant_cloudcontroller::CloudController,
    >(config, listeners, shutdown.clone()));
    let anonymous = Client::new(&url, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while anonymous.info().await.is_err() {
        assert!(
            !task.is_finished(),
            "the cloud controller {instance} stopped before it answered"
        );
        assert!(
            Instant::now() < deadline,
            "{instance} did not answer in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Controller {
        url,
        shutdown,
        task,
    }
}

/// The admin's client for the controller at `url`, on the calling runtime.
async fn admin(url: &str) -> Client {
    let anonymous = Client::new(url, None);
    let token = anonymous.login("admin", ADMIN_PASSWORD).await.unwrap();
    anonymous.with_token(token.access_token)
}

/// A build's queue row as the database holds it.
#[derive(Debug, Clone)]
struct Row {
    state: String,
    claimed_by: Option<String>,
    staged_by: Option<String>,
    lost_claims: i64,
}

fn row(db_url: &str, build: &str) -> Row {
    let mut client = postgres::Client::connect(db_url, postgres::NoTls).unwrap();
    let r = client
        .query_one(
            "SELECT state, claimed_by, staged_by, lost_claims FROM builds WHERE guid = $1",
            &[&build],
        )
        .unwrap();
    Row {
        state: r.get(0),
        claimed_by: r.get(1),
        staged_by: r.get(2),
        lost_claims: r.get(3),
    }
}

/// Polls `done` until it holds, failing with `what` after `limit`.
fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Creates app `name`, pushes `files` and asks for a build; the app's and the build's guids.
async fn queue_build(
    client: &Client,
    name: &str,
    files: &[(&str, &[u8], u32)],
) -> (String, String) {
    let app = client
        .create_app(&CreateApp {
            name: name.into(),
            ..CreateApp::default()
        })
        .await
        .unwrap();
    let dir = app_dir(files);
    client.push_dir(&app.guid, dir.path()).await.unwrap();
    let build = client
        .create_build(&app.guid, &CreateBuild::default())
        .await
        .unwrap();
    (app.guid, build.guid)
}

#[test]
fn a_build_outlives_the_controller_that_accepted_it_and_any_controller_stages_the_queue() {
    let server = Postgres::start();
    let db_url = server.create_db("ccdb_staging_failover");
    let shared = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let gate_dir = tempfile::tempdir().unwrap();
    let gate = gate_dir.path().join("open");
    let agent = FakeAgent::start();
    let (rt_a, rt) = (runtime(), runtime());

    // Controller A alone: it accepts a build whose install step waits for the gate, and its
    // one worker starts staging it.
    let a = rt_a.block_on(start(data_a.path(), shared.path(), &db_url, "cc-a", &agent));
    let via_a = rt.block_on(admin(&a.url));
    let package = format!(
        r#"{{"name":"gated","version":"1.0.0","scripts":{{"install":"while [ ! -e '{}' ]; do sleep 0.1; done","start":"node s.js"}}}}"#,
        gate.display()
    );
    let (gated_app, gated) = rt.block_on(queue_build(
        &via_a,
        "gated",
        &[
            ("package.json", package.as_bytes(), 0o644),
            (
                "s.js",
                b"require('http').createServer().listen(process.env.PORT)",
                0o644,
            ),
        ],
    ));
    wait_until(
        Duration::from_secs(60),
        "A to start the gated build's install step",
        || {
            agent
                .lines_from(&gated_app, "STG")
                .iter()
                .any(|l| l.contains("Installing dependencies with npm"))
        },
    );
    let claimed = row(&db_url, &gated);
    assert_eq!(claimed.state, "STAGING", "{claimed:?}");
    assert!(
        claimed
            .claimed_by
            .as_deref()
            .is_some_and(|c| c.starts_with("cc-a/")),
        "{claimed:?}"
    );

    // A second build accepted by A waits: A's only worker is busy ...
    let (quick_app, quick) = rt.block_on(queue_build(
        &via_a,
        "quick",
        &[("index.html", b"<h1>quick</h1>".as_slice(), 0o644)],
    ));
    assert_eq!(row(&db_url, &quick).state, "QUEUED");
    // The queue's bounds are the database's: the space's one place is taken, so another build
    // is refused with today's answer, and leaves no row.
    let refused = rt
        .block_on(via_a.create_build(&quick_app, &CreateBuild::default()))
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("its share of the staging queue"),
        "{refused}"
    );
    let mut pg = postgres::Client::connect(&db_url, postgres::NoTls).unwrap();
    let rows: i64 = pg
        .query_one(
            "SELECT COUNT(*) FROM builds WHERE app_guid = $1",
            &[&quick_app],
        )
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
    drop(pg);

    // ... and B's worker stages it, while A is alive and still staging the other.
    let b = rt.block_on(start(data_b.path(), shared.path(), &db_url, "cc-b", &agent));
    let via_b = rt.block_on(admin(&b.url));
    let staged = rt
        .block_on(via_b.wait_for_build(&quick, Duration::from_secs(60)))
        .unwrap();
    assert_eq!(staged.state, BuildState::Staged, "{staged:?}");
    let quick_row = row(&db_url, &quick);
    assert_eq!(
        quick_row.staged_by.as_deref(),
        Some("cc-b"),
        "{quick_row:?}"
    );
    let quick_droplet = rt.block_on(via_a.app(&quick_app)).unwrap();
    assert_eq!(quick_droplet.current_droplet_guid, staged.droplet_guid);
    let still = row(&db_url, &gated);
    assert!(
        still.state == "STAGING"
            && still
                .claimed_by
                .as_deref()
                .is_some_and(|c| c.starts_with("cc-a/")),
        "A's claim holds while A lives: {still:?}"
    );

    // A dies in the middle of the install step (its runtime and every task gone, nothing
    // handed over); the gate opens, so a fresh staging of the package can finish.
    let killed = Instant::now();
    drop(a);
    rt_a.shutdown_timeout(Duration::from_secs(30));
    std::fs::write(&gate, b"").unwrap();

    let build = rt
        .block_on(via_b.wait_for_build(&gated, TAKEOVER))
        .unwrap_or_else(|e| {
            panic!(
                "B did not finish A's build: {e}; {:?}",
                row(&db_url, &gated)
            )
        });
    let took = killed.elapsed();
    assert_eq!(build.state, BuildState::Staged, "{build:?}");
    let app = rt.block_on(via_b.app(&gated_app)).unwrap();
    assert_eq!(app.current_droplet_guid, build.droplet_guid);
    let done = row(&db_url, &gated);
    assert_eq!(done.staged_by.as_deref(), Some("cc-b"), "{done:?}");
    assert_eq!(done.lost_claims, 1, "{done:?}");
    let lines = agent.lines_from(&gated_app, "STG");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Staging retried (retry 1 of 2)")
                && l.contains("(cc-a/")
                && l.contains("was lost")),
        "{lines:#?}"
    );
    println!(
        "staging failover: A killed mid-install; B restaged the build and the app had its \
         droplet {:.1} s later (claim TTL 10 s)",
        took.as_secs_f64()
    );

    b.shutdown.cancel();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), b.task)
            .await
            .expect("B stops within 30 s")
            .unwrap()
            .unwrap();
    });
    drop(server);
}
