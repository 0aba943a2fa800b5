//! The cloud controller end to end on loopback, driven through `hydrant-api`'s client: login,
//! apps and their audit events, authorisation, push with resource matching, staging for each
//! buildpack with its STG lines, placement on fake executors, crashes, droplet downloads and a
//! restart on the same data directory.

use std::time::Duration;

use hydrant_api::{
    AppState, BuildState, CreateApp, EventFilter, InstanceState, Resource, ScaleApp, SpaceRole,
    UpdateApp,
};
use hydrant_bus::messages::{self, ExecutorCrash};
use hydrant_testkit::{FakeAgent, wait_for};
use sha2::{Digest as _, Sha256};

use crate::support::{
    Cc, FakeExecutor, Options, app_dir, app_in, assert_counter, events_of, push_and_stage, scale_to,
};

const WAIT: Duration = Duration::from_secs(15);

fn sha(bytes: &[u8]) -> String {
    hydrant_api::push::hex(&Sha256::digest(bytes))
}

/// A staging case: app name, files, start command, then the expected buildpack, start
/// command and STG detection line.
type Case<'a> = (
    &'a str,
    Vec<(&'a str, &'a [u8], u32)>,
    Option<&'a str>,
    &'a str,
    &'a str,
    &'a str,
);

const STATIC_SITE: &[(&str, &[u8], u32)] = &[("index.html", b"<h1>hello</h1>", 0o644)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guessing_is_slowed_per_name_whether_or_not_the_name_exists() {
    let (_dir, cc) = Cc::fresh("cc-login-brake").await;
    let http = reqwest::Client::new();
    let login = |user: &'static str, password: &'static str| {
        http.post(format!("{}/v3/tokens", cc.url))
            .json(&serde_json::json!({"username": user, "password": password}))
            .send()
    };
    for user in ["admin", "nobody"] {
        // Five failures are free; the sixth starts a back-off.
        for attempt in 1..=6 {
            let status = login(user, "guess").await.unwrap().status();
            assert_eq!(status, 401, "{user}: attempt {attempt}");
        }
        // During it even the right password is refused, before any hashing, with the wait.
        let refused = login(user, crate::support::ADMIN_PASSWORD).await.unwrap();
        assert_eq!(refused.status(), 429, "{user}");
        assert_eq!(
            refused
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned()),
            Some("1".to_owned()),
            "{user}"
        );
        let body: hydrant_api::ApiErrors = refused.json().await.unwrap();
        assert!(
            body.errors[0].detail.contains("too many wrong passwords"),
            "{body:?}"
        );
    }
    // Another name is not slowed by those guesses, and tokens already issued keep working.
    assert_eq!(login("carol", "guess").await.unwrap().status(), 401);
    assert!(cc.admin.me().await.is_ok());
    let metrics = cc.metrics().await;
    for (reason, count) in [("wrong_password", 13), ("throttled", 2)] {
        assert_counter(&metrics, "logins_refused", ("reason", reason), count);
    }
    cc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_spraying_a_password_over_many_names_is_slowed() {
    let (_dir, cc) = Cc::fresh("cc-login-address").await;
    let http = reqwest::Client::new();
    let login = |user: String| {
        http.post(format!("{}/v3/tokens", cc.url))
            .json(&serde_json::json!({"username": user, "password": "Summer2026!"}))
            .send()
    };
    // One guess per name never trips a name's brake; the address's twenty free failures run out.
    for i in 0..20 {
        let status = login(format!("user{i}")).await.unwrap().status();
        assert_eq!(status, 401, "guess {i}");
    }
    assert_eq!(login("user20".into()).await.unwrap().status(), 401);
    let refused = login("user21".into()).await.unwrap();
    assert_eq!(refused.status(), 429);
    let body: hydrant_api::ApiErrors = refused.json().await.unwrap();
    assert!(
        body.errors[0].detail.contains("from this address"),
        "{body:?}"
    );
    let metrics = cc.metrics().await;
    assert_counter(
        &metrics,
        "logins_refused",
        ("reason", "throttled_address"),
        1,
    );
    cc.stop().await;
}

/// With a realistic PBKDF2 cost, refusing an unknown name takes as long as refusing a known
/// one: without the stand-in hash an unknown name would answer in a fraction of the time, and
/// the difference would tell which names exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_and_unknown_names_take_the_same_time_to_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let options = crate::support::Options {
        password_hash_iterations: 50_000,
        ..crate::support::Options::new("cc-login-timing")
    };
    let cc = Cc::start(dir.path(), &options).await;
    const TRIES: usize = 8;
    for i in 0..TRIES {
        cc.admin
            .create_user(&hydrant_api::CreateUser {
                username: format!("known{i}"),
                password: format!("known{i}-password"),
                admin: false,
            })
            .await
            .unwrap();
    }
    let http = reqwest::Client::new();
    let time = |user: String| {
        let request = http
            .post(format!("{}/v3/tokens", cc.url))
            .json(&serde_json::json!({"username": user, "password": "wrong"}));
        async move {
            let start = std::time::Instant::now();
            let status = request.send().await.unwrap().status();
            assert_eq!(status, 401);
            start.elapsed().as_secs_f64()
        }
    };
    // Interleaved, one guess per name (16 failures: under the address's free twenty).
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for i in 0..TRIES {
        known.push(time(format!("known{i}")).await);
        unknown.push(time(format!("stranger{i}")).await);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (known, unknown) = (median(&mut known), median(&mut unknown));
    println!("median refusal: known name {known:.4} s, unknown name {unknown:.4} s");
    let ratio = unknown / known;
    assert!(
        (0.5..=2.0).contains(&ratio),
        "an unknown name is refused in {unknown:.4} s, a known one in {known:.4} s"
    );
    cc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_info_and_401s() {
    let (_dir, cc) = Cc::fresh("cc-login").await;
    let info = cc.anonymous().info().await.unwrap();
    assert_eq!(info.apps_domain, "apps.localhost");
    assert_eq!(info.endpoints["firehose"], "ws://127.0.0.1:1");
    assert_eq!(info.api_version, hydrant_api::API_VERSION);

    let err = cc.anonymous().login("admin", "wrong").await.unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");
    let err = cc
        .anonymous()
        .login("nobody", "whatever")
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(401));

    let err = cc.anonymous().list_apps().await.unwrap_err();
    assert!(err.is_unauthenticated(), "{err}");
    assert!(err.detail().unwrap().contains("log in"), "{err}");
    let err = cc
        .anonymous()
        .with_token("garbage.not.token")
        .list_apps()
        .await
        .unwrap_err();
    assert!(err.is_unauthenticated(), "{err}");

    let me = cc.admin.me().await.unwrap();
    assert!(me.user.admin);
    assert_eq!(me.user.username, "admin");
    // The API counts its answers by status class.
    let metrics = cc.metrics().await;
    assert!(
        metrics.contains("cloudcontroller_requests_total{source_id=\"cloudcontroller\",instance_id=\"0\",status_class=\"4xx\"}"),
        "{metrics}"
    );
    cc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_lifecycle_writes_audit_events() {
    let (_dir, cc) = Cc::fresh("cc-lifecycle").await;
    let admin = &cc.admin;
    let app = cc.app("shop").await;
    assert_eq!(app.state, AppState::Stopped);
    assert_eq!(app.routes, ["shop.apps.localhost"]);
    assert_eq!((app.instances, app.memory_mb), (1, 256));

    let err = admin
        .create_app(&CreateApp {
            name: "shop".into(),
            ..CreateApp::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(422));
    let err = admin
        .create_app(&CreateApp {
            name: "Bad_Name".into(),
            ..CreateApp::default()
        })
        .await
        .unwrap_err();
    assert!(err.detail().unwrap().contains("lower-case"), "{err}");

    let err = admin.start_app(&app.guid).await.unwrap_err();
    assert_eq!(err.status(), Some(422));
    assert!(err.detail().unwrap().contains("no droplet"), "{err}");

    assert_eq!(admin.list_apps().await.unwrap().len(), 1);
    assert_eq!(
        admin.app_by_name("shop", None).await.unwrap().guid,
        app.guid
    );
    assert!(
        admin
            .app_by_name("nope", None)
            .await
            .unwrap_err()
            .is_not_found()
    );

    let scaled = admin
        .scale_app(
            &app.guid,
            &ScaleApp {
                instances: Some(3),
                memory_mb: Some(128),
                ..ScaleApp::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((scaled.instances, scaled.memory_mb), (3, 128));
    let err = admin
        .scale_app(
            &app.guid,
            &ScaleApp {
                instances: Some(100_000),
                ..ScaleApp::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        err.detail().unwrap().contains("max_instances_per_app"),
        "{err}"
    );

    let dir = app_dir(STATIC_SITE);
    admin.push_dir(&app.guid, dir.path()).await.unwrap();
    let build = admin
        .create_build(&app.guid, &Default::default())
        .await
        .unwrap();
    let build = admin.wait_for_build(&build.guid, WAIT).await.unwrap();
    assert_eq!(build.state, BuildState::Staged, "{build:?}");
    let started = admin.start_app(&app.guid).await.unwrap();
    assert_eq!(started.state, AppState::Started);
    let stopped = admin.stop_app(&app.guid).await.unwrap();
    assert_eq!(stopped.state, AppState::Stopped);
    admin
        .update_app(
            &app.guid,
            &UpdateApp {
                command: Some("./serve".into()),
                ..UpdateApp::default()
            },
        )
        .await
        .unwrap();
    // A route off the shared apps domain needs a domain of the app's org.
    admin
        .create_domain(&hydrant_api::CreateDomain {
            name: "shop.example.com".into(),
            org: Some("default".into()),
        })
        .await
        .unwrap();
    let route = admin
        .map_route(&app.guid, "www.shop.example.com/api")
        .await
        .unwrap();
    assert_eq!(route.url, "www.shop.example.com/api");
    assert_eq!(admin.app_routes(&app.guid).await.unwrap().len(), 2);
    admin
        .unmap_route(&app.guid, "www.shop.example.com/api")
        .await
        .unwrap();
    admin.delete_app(&app.guid).await.unwrap();
    assert!(admin.app(&app.guid).await.unwrap_err().is_not_found());

    let events = events_of(admin, &app.guid, None).await;
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    for want in [
        "audit.app.create",
        "audit.app.scale",
        "audit.app.start",
        "audit.app.stop",
        "audit.app.update",
        "audit.app.delete-request",
    ] {
        assert!(types.contains(&want), "{want} missing from {types:?}");
    }
    let scale = events
        .iter()
        .find(|e| e.event_type == "audit.app.scale")
        .unwrap();
    assert_eq!(scale.data["instances"], 3);
    assert_eq!(scale.actor, "admin");
    cc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn developers_auditors_and_outsiders() {
    let (dir, cc) = Cc::fresh("cc-authz").await;
    let space = cc.admin.create_space("team").await.unwrap();
    let dev = cc
        .user("dev", Some((&space.guid, SpaceRole::Developer)))
        .await;
    let aud = cc
        .user("aud", Some((&space.guid, SpaceRole::Auditor)))
        .await;
    let out = cc.user("outsider", None).await;

    let app = app_in(&dev, "billing", Some("team")).await;
    // Developers cannot create in spaces they have no role in (the default space is as
    // invisible to them as one that does not exist), nor do admin work.
    let err = dev
        .create_app(&CreateApp {
            name: "sneaky".into(),
            ..CreateApp::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
    assert_eq!(
        dev.create_space("mine").await.unwrap_err().status(),
        Some(403)
    );

    // Auditors read, and cannot change.
    assert_eq!(aud.app(&app.guid).await.unwrap().name, "billing");
    let err = aud
        .scale_app(
            &app.guid,
            &ScaleApp {
                instances: Some(2),
                ..ScaleApp::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(403));
    assert!(err.detail().unwrap().contains("auditor"), "{err}");
    assert_eq!(
        aud.delete_app(&app.guid).await.unwrap_err().status(),
        Some(403)
    );

    // Outsiders learn nothing: the same 404 as for an app that does not exist.
    let missing = out.app("no-such-guid").await.unwrap_err();
    let hidden = out.app(&app.guid).await.unwrap_err();
    assert_eq!(missing.status(), Some(404));
    assert_eq!(hidden.status(), Some(404));
    assert_eq!(missing.detail(), hidden.detail());
    assert!(out.delete_app(&app.guid).await.unwrap_err().is_not_found());
    assert!(out.log_token(&app.guid).await.unwrap_err().is_not_found());
    assert!(out.list_apps().await.unwrap().is_empty());
    assert!(
        out.audit_events(&EventFilter::default())
            .await
            .unwrap()
            .is_empty()
    );

    // Developers and auditors get log tokens the firehose edge accepts for this app only,
    // verified with nothing but the published public keys.
    let _ = &dir;
    let keys = published_keys(&cc).await;
    for client in [&dev, &aud] {
        let token = client.log_token(&app.guid).await.unwrap();
        assert_eq!(token.source_id, app.guid);
        let claims = keys.verify(&token.token, hydrant_auth::AUD_LOGS).unwrap();
        assert!(
            keys.verify(&token.token, hydrant_auth::AUD_API).is_err(),
            "a log token is never an API token"
        );
        assert!(claims.can_read_source(&app.guid));
        assert!(!claims.can_read_source("another-app"));
        assert!(!claims.can_read_firehose());
    }
    let events = events_of(&aud, &app.guid, Some("audit.app.create")).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].actor, "dev");
    assert_eq!(aud.list_spaces().await.unwrap().len(), 1);
    cc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_matching_uploads_only_what_is_missing() {
    let (_dir, cc) = Cc::fresh("cc-match").await;
    let app = cc.app("big").await;
    let files: Vec<(String, Vec<u8>)> = (0..1000)
        .map(|i| {
            (
                format!("dir{}/file{i}.txt", i % 10),
                format!("content of file {i}\n").into_bytes(),
            )
        })
        .collect();
    let listed: Vec<(&str, &[u8], u32)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice(), 0o644))
        .chain([("index.html", b"<p>x</p>".as_slice(), 0o644)])
        .collect();
    let src = app_dir(&listed);

    let first = cc.admin.push_dir(&app.guid, src.path()).await.unwrap();
    assert_eq!(first.files, 1001);
    assert_eq!(first.uploaded_files, 1001);
    let second = cc.admin.push_dir(&app.guid, src.path()).await.unwrap();
    assert_eq!(
        second.uploaded_files, 0,
        "an unchanged re-push uploads nothing"
    );
    assert_eq!(second.package.sha256, first.package.sha256);
    std::fs::write(src.path().join("dir3/file3.txt"), b"changed").unwrap();
    let third = cc.admin.push_dir(&app.guid, src.path()).await.unwrap();
    assert_eq!(third.uploaded_files, 1);
    assert_ne!(third.package.sha256, first.package.sha256);
    let build = cc
        .admin
        .create_build(&app.guid, &Default::default())
        .await
        .unwrap();
    let build = cc.admin.wait_for_build(&build.guid, WAIT).await.unwrap();
    assert_eq!(build.state, BuildState::Staged, "{build:?}");
    cc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_paths_and_oversize_uploads_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::new("cc-bad");
    options.max_blob_bytes = 1024;
    let cc = Cc::start(dir.path(), &options).await;
    let app = cc.app("bad").await;
    let resource = |path: &str| Resource {
        path: path.into(),
        size: 1,
        sha256: sha(b"x"),
        mode: 0o644,
    };
    for (paths, expect) in [
        (vec!["/etc/passwd"], "absolute"),
        (vec!["a/../../etc/passwd"], ".."),
        (vec!["a", "a"], "twice"),
    ] {
        let list: Vec<Resource> = paths.iter().map(|p| resource(p)).collect();
        // Sent raw, bypassing the client's own checks, to see the server's answer.
        let response = reqwest::Client::new()
            .post(format!("{}/v3/resource_match", cc.url))
            .bearer_auth(cc.admin.token().unwrap())
            .json(&hydrant_api::Resources { resources: list })
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422, "{paths:?}");
        let body: hydrant_api::ApiErrors = response.json().await.unwrap();
        assert!(body.errors[0].detail.contains(expect), "{body:?}");
    }

    let big = vec![7u8; 2048];
    let err = cc
        .admin
        .upload_blob_bytes(&sha(&big), big.clone())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(413), "{err}");
    assert!(err.detail().unwrap().contains("max_blob_bytes"), "{err}");
    let err = cc
        .admin
        .upload_blob_bytes(&sha(b"other"), b"content".to_vec())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(422));
    assert!(err.detail().unwrap().contains("hash to"), "{err}");
    let err = cc
        .admin
        .resource_match(&[Resource {
            size: 5000,
            ..resource("huge.bin")
        }])
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(413));
    let err = cc
        .admin
        .create_package(&app.guid, &[resource("never-uploaded.txt")])
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(422));
    assert!(
        err.detail().unwrap().contains("not in the blob store"),
        "{err}"
    );
    cc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_detects_each_buildpack_and_narrates_it() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::start();
    let mut options = Options::new("cc-staging");
    options.agent = Some(agent.url());
    let cc = Cc::start(dir.path(), &options).await;
    let cases: Vec<Case<'_>> = vec![
        (
            "procfile",
            vec![("Procfile", b"web: ./run --port $PORT\n", 0o644)],
            None,
            "procfile",
            "./run --port $PORT",
            "-----> Procfile detected",
        ),
        (
            "binary",
            vec![
                ("server", b"\x7fELF\x02\x01\x01", 0o755),
                ("data.txt", b"d", 0o644),
            ],
            None,
            "binary",
            "./server",
            "-----> Executable server detected",
        ),
        (
            "python",
            vec![
                ("app.py", b"print('hi')\n", 0o644),
                ("requirements.txt", b"", 0o644),
            ],
            None,
            "python",
            "python3 app.py",
            "-----> Python app detected",
        ),
        (
            "node",
            vec![(
                "package.json",
                br#"{"name":"n","scripts":{"start":"node server.js"}}"#.as_slice(),
                0o644,
            )],
            None,
            "node",
            "npm start",
            "-----> Node.js app detected",
        ),
        (
            "site",
            STATIC_SITE.to_vec(),
            None,
            "static",
            hydrant_cloudcontroller::STATIC_START,
            "-----> Static site detected (index.html)",
        ),
        (
            "custom",
            STATIC_SITE.to_vec(),
            Some("./my-server --fast"),
            "static",
            "./my-server --fast",
            "-----> Static site detected (index.html)",
        ),
    ];
    for (name, files, command, buildpack, start, line) in cases {
        let (app, build) = push_and_stage(&cc.admin, name, &files, command).await;
        assert_eq!(build.state, BuildState::Staged, "{name}: {build:?}");
        assert_eq!(build.buildpack.as_deref(), Some(buildpack), "{name}");
        let droplet = cc.admin.current_droplet(&app.guid).await.unwrap();
        assert_eq!(droplet.start_command, start, "{name}");
        assert_eq!(
            app.current_droplet_guid.as_deref(),
            Some(droplet.guid.as_str())
        );
        for want in [
            "Downloading app package...",
            line,
            "Uploading droplet...",
            "Staging complete",
        ] {
            let guid = app.guid.clone();
            let agent = &agent;
            wait_for(WAIT, &format!("{name}: STG {want:?}"), move || {
                let found = agent.lines_from(&guid, "STG").iter().any(|l| l == want);
                async move { found }
            })
            .await;
        }
    }

    let (app, build) =
        push_and_stage(&cc.admin, "nothing", &[("notes.txt", b"x", 0o644)], None).await;
    assert_eq!(build.state, BuildState::Failed);
    let reason = build.error.unwrap();
    assert!(
        reason.starts_with("no buildpack detected: add a Procfile"),
        "{reason}"
    );
    assert!(app.current_droplet_guid.is_none());
    let guid = app.guid.clone();
    let agent = &agent;
    wait_for(WAIT, "the failure as an STG line", move || {
        let found = agent
            .lines_from(&guid, "STG")
            .iter()
            .any(|l| l.starts_with("Staging failed: no buildpack detected"));
        async move { found }
    })
    .await;
    // Lifecycle changes show as API lines.
    let (app, _) = push_and_stage(&cc.admin, "lifecycle", STATIC_SITE, None).await;
    cc.admin.start_app(&app.guid).await.unwrap();
    let guid = app.guid.clone();
    wait_for(WAIT, "an API line for the start", move || {
        let found = agent
            .lines_from(&guid, "API")
            .iter()
            .any(|l| l.contains(r#"({"state"=>"STARTED"})"#));
        async move { found }
    })
    .await;
    cc.stop().await;
}

async fn stats_states(cc: &Cc, app: &str) -> Vec<InstanceState> {
    cc.admin
        .app_stats(app)
        .await
        .unwrap()
        .instances
        .iter()
        .map(|i| i.state)
        .collect()
}

/// An app's stop grace: 1-300 s with an error naming the range, 10 s when unset, changed by an
/// update, kept across a controller restart, and carried in every start message so the
/// executor SIGKILLs after the app's grace rather than its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apps_stop_grace_is_checked_kept_and_sent_to_its_executor() {
    let dir = tempfile::tempdir().unwrap();
    let bus = "cc-stop-grace";
    let cc = Cc::start(dir.path(), &Options::new(bus)).await;
    for bad in [0, 301] {
        let err = cc
            .admin
            .create_app(&CreateApp {
                name: "deaf".into(),
                stop_timeout_secs: Some(bad),
                ..CreateApp::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(422), "{err}");
        assert!(err.to_string().contains("between 1 and 300"), "{err}");
    }
    let (app, _) = push_and_stage(&cc.admin, "deaf", STATIC_SITE, None).await;
    assert_eq!(app.stop_timeout_secs, 10, "the default grace");
    let err = cc
        .admin
        .update_app(
            &app.guid,
            &UpdateApp {
                stop_timeout_secs: Some(0),
                ..UpdateApp::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("between 1 and 300"), "{err}");
    let app = cc
        .admin
        .update_app(
            &app.guid,
            &UpdateApp {
                stop_timeout_secs: Some(45),
                ..UpdateApp::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(app.stop_timeout_secs, 45);

    let executor = FakeExecutor::start(bus, "e1", 8192, 10, false).await;
    cc.admin.start_app(&app.guid).await.unwrap();
    let state = executor.state.clone();
    let guid = app.guid.clone();
    wait_for(WAIT, "a start message", || {
        let found = state.lock().unwrap().starts.iter().any(|s| s.app == guid);
        async move { found }
    })
    .await;
    let start = state
        .lock()
        .unwrap()
        .starts
        .iter()
        .find(|s| s.app == app.guid)
        .cloned()
        .unwrap();
    assert_eq!(start.stop_timeout_secs, Some(45));
    drop(executor);
    cc.stop().await;

    let cc = Cc::start(dir.path(), &Options::new(bus)).await;
    let again = cc.admin.app(&app.guid).await.unwrap();
    assert_eq!(again.stop_timeout_secs, 45, "kept across a restart");
    cc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_spreads_respects_capacity_and_waits_for_room() {
    let dir = tempfile::tempdir().unwrap();
    let bus = "cc-placement";
    let cc = Cc::start(dir.path(), &Options::new(bus)).await;
    let (app, _) = push_and_stage(&cc.admin, "web", STATIC_SITE, None).await;
    cc.admin
        .scale_app(
            &app.guid,
            &ScaleApp {
                instances: Some(4),
                memory_mb: Some(256),
                ..ScaleApp::default()
            },
        )
        .await
        .unwrap();
    cc.admin.start_app(&app.guid).await.unwrap();

    // No executors yet: the instances are DOWN and say why.
    let guid = app.guid.clone();
    let admin = cc.admin.clone();
    wait_for(WAIT, "a placement error", move || {
        let admin = admin.clone();
        let guid = guid.clone();
        async move {
            let stats = admin.app_stats(&guid).await.unwrap();
            stats.instances.len() == 4
                && stats.instances.iter().all(|i| {
                    i.state == InstanceState::Down
                        && i.placement_error
                            .as_deref()
                            .is_some_and(|e| e.contains("no executor has room"))
                })
        }
    })
    .await;

    // A refusing executor, a small one and a big one appear. The app is stopped until the
    // cloud controller knows all three, so the first one heard from does not take everything.
    cc.admin.stop_app(&app.guid).await.unwrap();
    let refuser = FakeExecutor::start(bus, "e0", 100_000, 100, true).await;
    let small = FakeExecutor::start(bus, "e1", 512, 10, false).await;
    let big = FakeExecutor::start(bus, "e2", 8192, 10, false).await;
    let metrics_url = format!("{}/metrics", cc.admin_url);
    wait_for(WAIT, "three executors known", || async {
        reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .contains(
                "cloudcontroller_executors{source_id=\"cloudcontroller\",instance_id=\"0\"} 3",
            )
    })
    .await;
    cc.admin.start_app(&app.guid).await.unwrap();
    wait_for(WAIT, "4 running instances", || async {
        stats_states(&cc, &app.guid).await == vec![InstanceState::Running; 4]
    })
    .await;
    assert_eq!(small.running(&app.guid) + big.running(&app.guid), 4);
    assert_eq!(
        small.running(&app.guid),
        2,
        "spread evenly while room lasts"
    );
    assert!(!refuser.state.lock().unwrap().starts.is_empty());
    assert_eq!(refuser.running(&app.guid), 0);

    // Scaling up past the small executor's memory puts the rest on the big one.
    scale_to(&cc.admin, &app.guid, 7).await;
    wait_for(WAIT, "7 running instances", || async {
        stats_states(&cc, &app.guid).await == vec![InstanceState::Running; 7]
    })
    .await;
    assert_eq!(
        small.running(&app.guid),
        2,
        "512 MB holds two 256 MB instances"
    );
    assert_eq!(big.running(&app.guid), 5);

    // The droplet URL executors get downloads only with its token.
    let start = big.state.lock().unwrap().starts[0].clone();
    assert!(start.droplet_url.starts_with(&cc.url));
    assert_eq!(start.uris, ["web.apps.localhost"]);
    assert_eq!(start.start_command, hydrant_cloudcontroller::STATIC_START);
    let body = reqwest::get(&start.droplet_url)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha(&body), start.droplet_sha256);
    let bare = start.droplet_url.split('?').next().unwrap().to_owned();
    assert_eq!(reqwest::get(&bare).await.unwrap().status(), 401);
    // An API token is not a droplet token, admin or not: wrong audience.
    let forged = format!("{bare}?token={}", cc.admin.token().unwrap());
    assert_eq!(reqwest::get(&forged).await.unwrap().status(), 401);
    let tampered = format!("{}x", start.droplet_url);
    assert_eq!(reqwest::get(&tampered).await.unwrap().status(), 401);

    // Scaling down stops the extra indexes; stopping the app stops the rest.
    scale_to(&cc.admin, &app.guid, 1).await;
    wait_for(WAIT, "one instance left", || async {
        small.running(&app.guid) + big.running(&app.guid) == 1
    })
    .await;
    cc.admin.stop_app(&app.guid).await.unwrap();
    wait_for(WAIT, "no instance left", || async {
        small.running(&app.guid) + big.running(&app.guid) == 0
    })
    .await;
    let stop = big.state.lock().unwrap().stops.last().cloned().unwrap();
    assert!(stop.reason.is_some());
    cc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_become_audit_events_and_are_not_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let bus_name = "cc-crash";
    let cc = Cc::start(dir.path(), &Options::new(bus_name)).await;
    let executor = FakeExecutor::start(bus_name, "e1", 4096, 10, false).await;
    let (app, _) = push_and_stage(&cc.admin, "crashy", STATIC_SITE, None).await;
    cc.admin.start_app(&app.guid).await.unwrap();
    wait_for(WAIT, "the instance running", || async {
        stats_states(&cc, &app.guid).await == vec![InstanceState::Running]
    })
    .await;
    let instance = executor.crash(&app.guid, 0);
    let bus = hydrant_bus::Bus::connect(
        &hydrant_bus::Config::inprocess(bus_name),
        &hydrant_emitter::Registry::new("test", "0"),
    )
    .await
    .unwrap();
    // Another cell reports e1's instance crashed, under its own name and under e1's, on the
    // only subject it may publish: both dropped and counted, no audit event.
    let forged = |executor_id: &str| ExecutorCrash {
        executor_id: executor_id.into(),
        app: app.guid.clone(),
        instance: instance.clone(),
        reason: "CRASHED".into(),
        ..ExecutorCrash::default()
    };
    for executor_id in ["e2", "e1"] {
        bus.publish_json(
            &messages::executor_crash_subject("e2"),
            &forged(executor_id),
        )
        .unwrap();
    }
    let metrics_url = format!("{}/metrics", cc.admin_url);
    wait_for(WAIT, "the forged crashes dropped and counted", || async {
        let text = reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        ["not_placed", "wrong_cell"].iter().all(|reason| {
            text.lines().any(|l| {
                l.starts_with("cloudcontroller_dropped_total{")
                    && l.contains(&format!("reason=\"{reason}\""))
                    && l.ends_with(" 1")
            })
        })
    })
    .await;
    let crash_events = EventFilter {
        target_guid: Some(app.guid.clone()),
        types: Some("audit.app.process.crash".into()),
    };
    assert!(
        cc.admin
            .audit_events(&crash_events)
            .await
            .unwrap()
            .is_empty()
    );
    bus.publish_json(
        &messages::executor_crash_subject("e1"),
        &ExecutorCrash {
            executor_id: "e1".into(),
            app: app.guid.clone(),
            instance: instance.clone(),
            index: 0,
            reason: "CRASHED".into(),
            exit_status: Some(137),
            exit_description: "APP/PROC/WEB: Exited with status 137 (out of memory)".into(),
            crash_count: Some(2),
            crash_timestamp: 1_700_000_000_000_000_000,
        },
    )
    .unwrap();
    let filter = EventFilter {
        target_guid: Some(app.guid.clone()),
        types: Some("audit.app.process.crash".into()),
    };
    wait_for(WAIT, "the crash event", || async {
        !cc.admin.audit_events(&filter).await.unwrap().is_empty()
    })
    .await;
    let event = cc.admin.audit_events(&filter).await.unwrap().remove(0);
    assert_eq!(event.actor, "executor:e1");
    assert_eq!(event.data["instance"], instance.as_str());
    assert_eq!(event.data["index"], 0);
    assert_eq!(event.data["exit_status"], 137);
    assert_eq!(event.data["crash_count"], 2);
    assert_eq!(event.data["reason"], "CRASHED");
    wait_for(WAIT, "the crashed state in a heartbeat", || async {
        stats_states(&cc, &app.guid).await == vec![InstanceState::Crashed]
    })
    .await;
    let stats = cc.admin.app_stats(&app.guid).await.unwrap();
    assert_eq!(
        stats.instances[0].crash.as_ref().unwrap().exit_status,
        Some(137)
    );
    // Restarting crashed instances is the health manager's job: no second start here. A
    // negative can only be watched for a while: three convergence intervals.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(executor.state.lock().unwrap().starts.len(), 1);

    // A restart replaces the instance: the crashed one is stopped, a new one started.
    cc.admin.restart_app(&app.guid).await.unwrap();
    wait_for(WAIT, "a fresh running instance", || async {
        let stats = cc.admin.app_stats(&app.guid).await.unwrap();
        stats.instances.len() == 1
            && stats.instances[0].state == InstanceState::Running
            && stats.instances[0].instance_guid.as_deref() != Some(instance.as_str())
    })
    .await;
    {
        let state = executor.state.lock().unwrap();
        assert_eq!(state.starts.len(), 2);
        assert_eq!(state.stops[0].instance.as_deref(), Some(instance.as_str()));
        assert_eq!(state.stops[0].reason.as_deref(), Some("restarted"));
    }
    cc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_one_crashed_instance_places_a_fresh_guid() {
    let dir = tempfile::tempdir().unwrap();
    let bus_name = "cc-restart-index";
    let cc = Cc::start(dir.path(), &Options::new(bus_name)).await;
    let executor = FakeExecutor::start(bus_name, "e1", 4096, 10, false).await;
    let (app, _) = push_and_stage(&cc.admin, "flaky", STATIC_SITE, None).await;
    scale_to(&cc.admin, &app.guid, 2).await;
    cc.admin.start_app(&app.guid).await.unwrap();
    wait_for(WAIT, "two running instances", || async {
        stats_states(&cc, &app.guid).await == vec![InstanceState::Running; 2]
    })
    .await;
    let request = hydrant_api::RestartInstance {
        reason: Some("crash back-off elapsed".into()),
        crash_count: Some(3),
        instance: None,
    };
    // A healthy index is left alone.
    let answer = cc
        .admin
        .restart_instance(&app.guid, 0, &request)
        .await
        .unwrap();
    assert!(answer.replaced.is_empty());
    // An index that is not desired is refused.
    let err = cc
        .admin
        .restart_instance(&app.guid, 5, &request)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(422));
    // Outsiders learn nothing.
    let outsider = cc.user("stranger", None).await;
    let err = outsider
        .restart_instance(&app.guid, 0, &request)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404));

    let crashed = executor.crash(&app.guid, 1);
    wait_for(WAIT, "the crashed state in a heartbeat", || async {
        stats_states(&cc, &app.guid).await == vec![InstanceState::Running, InstanceState::Crashed]
    })
    .await;
    let answer = cc
        .admin
        .restart_instance(&app.guid, 1, &request)
        .await
        .unwrap();
    assert_eq!(answer.replaced, vec![crashed.clone()]);
    wait_for(WAIT, "a fresh instance at index 1", || async {
        let stats = cc.admin.app_stats(&app.guid).await.unwrap();
        stats.instances.len() == 2
            && stats.instances[1].state == InstanceState::Running
            && stats.instances[1].instance_guid.as_deref() != Some(crashed.as_str())
    })
    .await;
    {
        let state = executor.state.lock().unwrap();
        assert_eq!(state.starts.len(), 3);
        assert_eq!(state.starts[2].index, 1);
    }
    let events = events_of(&cc.admin, &app.guid, Some("audit.app.process.restart")).await;
    let event = events
        .iter()
        .find(|e| e.data["index"] == 1)
        .expect("an audit event for index 1");
    assert_eq!(event.actor, "admin");
    assert_eq!(event.data["reason"], "crash back-off elapsed");
    assert_eq!(event.data["crash_count"], 3);
    assert_eq!(event.data["replaced"][0], crashed.as_str());
    cc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_the_same_data_dir_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::new("cc-restart");
    let cc = Cc::start(dir.path(), &options).await;
    let space = cc.admin.create_space("keep").await.unwrap();
    let _dev = cc
        .user("keeper", Some((&space.guid, SpaceRole::Developer)))
        .await;
    let (app, build) = push_and_stage(&cc.admin, "durable", STATIC_SITE, None).await;
    cc.admin.start_app(&app.guid).await.unwrap();
    let droplet = cc.admin.current_droplet(&app.guid).await.unwrap();
    let events_before = cc
        .admin
        .audit_events(&EventFilter::default())
        .await
        .unwrap();
    cc.stop().await;

    let cc = Cc::start(dir.path(), &options).await;
    let again = cc.admin.app(&app.guid).await.unwrap();
    assert_eq!(again.state, AppState::Started);
    assert_eq!(again.routes, app.routes);
    assert_eq!(
        again.current_droplet_guid.as_deref(),
        Some(droplet.guid.as_str())
    );
    assert_eq!(
        cc.admin.build(&build.guid).await.unwrap().state,
        BuildState::Staged
    );
    let events_after = cc
        .admin
        .audit_events(&EventFilter::default())
        .await
        .unwrap();
    assert_eq!(events_after, events_before);
    let dev = cc
        .anonymous()
        .login("keeper", "keeper-password")
        .await
        .unwrap();
    assert!(dev.scopes.iter().any(|s| s.contains(&space.guid)));
    assert_eq!(cc.admin.list_spaces().await.unwrap().len(), 2);
    // The blobs are still there: re-pushing uploads nothing.
    let src = app_dir(STATIC_SITE);
    let outcome = cc.admin.push_dir(&app.guid, src.path()).await.unwrap();
    assert_eq!(outcome.uploaded_files, 0);
    // Old tokens stay valid: the signing key was kept.
    let token = cc.admin.log_token(&app.guid).await.unwrap();
    let keys = published_keys(&cc).await;
    keys.verify(&token.token, hydrant_auth::AUD_LOGS).unwrap();
    let _ = &dir;
    cc.stop().await;
}

// === tokens: only the auth server mints them, and every check names its audience ===

/// `GET /token_keys`, parsed: what every verifying role holds.
async fn published_keys(cc: &Cc) -> hydrant_auth::KeySet {
    let body = reqwest::get(format!("{}/token_keys", cc.url))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    hydrant_auth::KeySet::from_json(&body).unwrap()
}

/// The status of `method path` with `token` (none when `None`).
async fn status(cc: &Cc, method: reqwest::Method, path: &str, token: Option<&str>) -> u16 {
    let mut request = reqwest::Client::new().request(method, format!("{}{path}", cc.url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().status().as_u16()
}

/// The token half of the auth matrix against the API: each kind of token, on a read and a
/// write of an app, gets exactly the expected status, and nothing is allowed that should not
/// be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_token_matrix_has_no_unexpected_allows() {
    use hydrant_auth::{
        AUD_API, AUD_LOGS, Claims, KeyStore, SCOPE_ADMIN, SCOPE_API_READ, SCOPE_API_WRITE,
    };
    let (dir, cc) = Cc::fresh("cc-token-matrix").await;
    let app = cc.app("matrix").await;
    let other_space = cc.admin.create_space("elsewhere").await.unwrap();
    let outsider = cc
        .user("outsider", Some((&other_space.guid, SpaceRole::Developer)))
        .await;
    // The test reads the controller's own key directory to mint the odd tokens a real
    // issuer never would (expired, wrong audience, narrow scopes): same key, so only the
    // claims differ.
    let key = KeyStore::open(dir.path().join("token_keys"))
        .unwrap()
        .signing()
        .clone();
    let admin_claims = || {
        Claims::new("admin")
            .for_audience(AUD_API)
            .for_audience(AUD_LOGS)
            .with_scope(SCOPE_ADMIN)
            .with_scope(SCOPE_API_READ)
            .with_scope(SCOPE_API_WRITE)
    };
    let mut expired = admin_claims();
    expired.iat -= 7200;
    expired.exp = hydrant_auth::now_secs() - 60;
    let mut logs_only = admin_claims();
    logs_only.aud = vec![AUD_LOGS.to_owned()];
    let mut no_api_scope = admin_claims();
    no_api_scope.scopes = vec!["firehose".to_owned()];
    let mut read_only = admin_claims();
    read_only.scopes = vec![SCOPE_ADMIN.to_owned(), SCOPE_API_READ.to_owned()];
    let log_token = cc.admin.log_token(&app.guid).await.unwrap().token;
    let forged = hydrant_auth::SigningKey::generate()
        .unwrap()
        .issue(&admin_claims());
    let refresh = cc
        .anonymous()
        .login("admin", crate::support::ADMIN_PASSWORD)
        .await
        .unwrap()
        .refresh_token
        .unwrap();

    let read = format!("/v3/apps/{}", app.guid);
    let write = format!("/v3/apps/{}/actions/stop", app.guid);
    let rows: Vec<(&str, Option<String>, u16, u16)> = vec![
        ("no token", None, 401, 401),
        ("expired", Some(key.issue(&expired)), 401, 401),
        (
            "wrong audience (logs only)",
            Some(key.issue(&logs_only)),
            401,
            401,
        ),
        ("wrong audience (a log token)", Some(log_token), 401, 401),
        ("wrong audience (a refresh token)", Some(refresh), 401, 401),
        ("a key not in /token_keys", Some(forged), 401, 401),
        (
            "wrong scope (no API scope)",
            Some(key.issue(&no_api_scope)),
            403,
            403,
        ),
        (
            "wrong scope (read only)",
            Some(key.issue(&read_only)),
            200,
            403,
        ),
        (
            "another space's user",
            outsider.token().map(str::to_owned),
            404,
            404,
        ),
        ("admin", cc.admin.token().map(str::to_owned), 200, 200),
    ];
    let mut table = Vec::new();
    let mut unexpected_allows = Vec::new();
    for (name, token, want_read, want_write) in &rows {
        let got_read = status(&cc, reqwest::Method::GET, &read, token.as_deref()).await;
        let got_write = status(&cc, reqwest::Method::POST, &write, token.as_deref()).await;
        for (what, want, got) in [
            ("read", want_read, got_read),
            ("write", want_write, got_write),
        ] {
            if got < 300 && *want >= 300 {
                unexpected_allows.push(format!("{name} / {what}: {got}"));
            }
            if got != *want {
                table.push(format!("{name} / {what}: want {want}, got {got}"));
            }
        }
    }
    assert!(
        unexpected_allows.is_empty(),
        "unexpected allows: {unexpected_allows:#?}"
    );
    assert!(table.is_empty(), "unexpected statuses: {table:#?}");
    cc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_keys_refresh_and_client_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("autoscaler.secret");
    std::fs::write(&secret_file, "s3cret-s3cret-s3cret\n").unwrap();
    // UAA's shape, public halves only.
    let (_d, plain) = Cc::fresh("cc-token-keys").await;
    let doc: serde_json::Value = reqwest::get(format!("{}/token_keys", plain.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = &doc["keys"][0];
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    assert_eq!(key["alg"], "EdDSA");
    assert_eq!(key["use"], "sig");
    assert!(key.get("d").is_none(), "never the private half: {doc}");

    // A refresh token renews the access token, with the user's scopes as they are now.
    let login = plain
        .anonymous()
        .login("admin", crate::support::ADMIN_PASSWORD)
        .await
        .unwrap();
    let refresh = login.refresh_token.unwrap();
    let renewed = plain.anonymous().refresh(&refresh).await.unwrap();
    assert!(renewed.scopes.iter().any(|s| s == "admin"));
    let me = plain
        .anonymous()
        .with_token(renewed.access_token)
        .me()
        .await
        .unwrap();
    assert_eq!(me.user.username, "admin");
    // An access token is not a refresh token.
    let err = plain
        .anonymous()
        .refresh(plain.admin.token().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");
    plain.stop().await;

    // Client credentials: a configured client gets a token with its configured scopes.
    let data = tempfile::tempdir().unwrap();
    let mut options = Options::new("cc-clients");
    options.clients = vec![hydrant_cloudcontroller::ClientConfig {
        id: "autoscaler".into(),
        secret: None,
        secret_file: Some(secret_file.display().to_string()),
        scopes: vec!["cloud_controller.read".into()],
        audiences: vec!["hydrant-api".into()],
    }];
    let cc = Cc::start(data.path(), &options).await;
    let bad = cc
        .anonymous()
        .client_credentials("autoscaler", "wrong-wrong-wrong")
        .await
        .unwrap_err();
    assert_eq!(bad.status(), Some(401));
    let granted = cc
        .anonymous()
        .client_credentials("autoscaler", "s3cret-s3cret-s3cret")
        .await
        .unwrap();
    assert!(granted.refresh_token.is_none());
    let client = cc.anonymous().with_token(granted.access_token.clone());
    client.list_apps().await.unwrap();
    // What a role holds: the token is reused while it has time left, fetched anew when
    // cleared (after the API refused it) or near expiry.
    let cache = hydrant_api::TokenCache::new();
    let first = cache
        .client_token(&cc.url, "autoscaler", "s3cret-s3cret-s3cret")
        .await
        .unwrap();
    let again = cache
        .client_token(&cc.url, "autoscaler", "s3cret-s3cret-s3cret")
        .await
        .unwrap();
    assert_eq!(first, again, "cached while it has time left");
    cache.clear();
    let renewed = cache
        .client_token(&cc.url, "autoscaler", "s3cret-s3cret-s3cret")
        .await
        .unwrap();
    assert_ne!(first, renewed, "a fresh token (new jti) after clear");
    let app = cc.app("scaled").await;
    let write = format!("/v3/apps/{}/actions/stop", app.guid);
    assert_eq!(
        status(
            &cc,
            reqwest::Method::POST,
            &write,
            Some(&granted.access_token)
        )
        .await,
        403,
        "read scope only"
    );
    cc.stop().await;
}

/// Rotation: a key staged and activated on disk signs new tokens while the old key's tokens
/// keep verifying, with no restart; after retirement the old key is no longer published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_without_a_restart() {
    let (dir, cc) = Cc::fresh("cc-rotation").await;
    let keys_dir = dir.path().join("token_keys");
    let old_token = cc.admin.token().unwrap().to_owned();
    let old_kid = hydrant_auth::KeyStore::open(&keys_dir)
        .unwrap()
        .signing()
        .kid()
        .to_owned();
    let new_kid = hydrant_auth::KeyStore::stage(&keys_dir).unwrap();
    wait_for(WAIT, "the staged key to be published", || async {
        published_keys(&cc).await.contains(&new_kid)
    })
    .await;
    hydrant_auth::KeyStore::activate(&keys_dir, &new_kid).unwrap();
    wait_for(WAIT, "the new key to sign", || async {
        let t = cc
            .anonymous()
            .login("admin", crate::support::ADMIN_PASSWORD)
            .await
            .unwrap();
        t.access_token.contains(&new_kid_header(&new_kid))
    })
    .await;
    let new_token = cc
        .anonymous()
        .login("admin", crate::support::ADMIN_PASSWORD)
        .await
        .unwrap()
        .access_token;
    // The overlap: both verify, at the API and with the published keys.
    let keys = published_keys(&cc).await;
    for t in [&old_token, &new_token] {
        keys.verify(t, hydrant_auth::AUD_API).unwrap();
        cc.anonymous()
            .with_token(t.clone())
            .list_apps()
            .await
            .unwrap();
    }
    hydrant_auth::KeyStore::retire(&keys_dir, &old_kid).unwrap();
    wait_for(WAIT, "the old key to be withdrawn", || async {
        !published_keys(&cc).await.contains(&old_kid)
    })
    .await;
    let err = cc
        .anonymous()
        .with_token(old_token)
        .list_apps()
        .await
        .unwrap_err();
    assert!(err.is_unauthenticated(), "{err}");
    cc.anonymous()
        .with_token(new_token)
        .list_apps()
        .await
        .unwrap();
    cc.stop().await;
}

/// The base64url JWT header a token signed with `kid` starts with.
fn new_kid_header(kid: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":"{kid}"}}"#))
}
