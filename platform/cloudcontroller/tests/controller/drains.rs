//! The syslog drain endpoints on loopback: a developer binds, lists and unbinds drains and only
//! ever sees them masked; the platform's nozzle reads the full targets and reports status that
//! the developer then sees; drains to internal addresses are refused unless the operator allows
//! them; bad URLs are refused saying what is wrong.

use hydrant_api::{DrainState, DrainStatus, SpaceRole};

use crate::support::{Cc, Options, events_of};

/// A documentation address (TEST-NET-3): public, so allowed, and never contacted here.
const PUBLIC: &str = "syslog://papertrail:hunter2@203.0.113.7:6514?drain-data=all";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_are_bound_masked_reported_and_unbound() {
    let (_dir, cc) = Cc::fresh("cc-drains").await;
    let admin = &cc.admin;
    let app = cc.app("shop").await;
    let space = admin.list_spaces().await.unwrap().remove(0);
    let dev = cc
        .user("dev", Some((space.guid.as_str(), SpaceRole::Developer)))
        .await;

    let drain = dev.create_drain(&app.guid, PUBLIC).await.unwrap();
    assert_eq!(
        drain.url,
        "syslog://papertrail:****@203.0.113.7:6514?drain-data=****"
    );
    let again = dev.create_drain(&app.guid, PUBLIC).await.unwrap_err();
    assert_eq!(again.status(), Some(422));
    assert!(
        again.detail().unwrap().contains("already drains"),
        "{again}"
    );
    assert!(!again.to_string().contains("hunter2"), "{again}");

    // The nozzle's view: the full URL and the names for syslog's HOSTNAME; admins only.
    let targets = admin.drain_targets().await.unwrap();
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0].url, PUBLIC);
    assert_eq!(targets[0].app_name, "shop");
    assert_eq!(targets[0].space_name, space.name);
    assert_eq!(dev.drain_targets().await.unwrap_err().status(), Some(403));
    assert_eq!(
        dev.report_drain_status(&[]).await.unwrap_err().status(),
        Some(403)
    );

    let listed = dev.app_drains(&app.guid).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].status.is_none());
    admin
        .report_drain_status(&[
            DrainStatus {
                guid: drain.guid.clone(),
                sent: 120,
                dropped: 3,
                queue_depth: 7,
                lag_ms: Some(40),
                last_error: Some(
                    "connect to syslog://papertrail:hunter2@203.0.113.7:6514 refused".into(),
                ),
                last_success_unix_ms: Some(1),
                state: DrainState::Retrying,
                reported_at: 0,
            },
            // A report for a binding that no longer exists changes nothing.
            DrainStatus {
                guid: "gone".into(),
                sent: 1,
                dropped: 0,
                queue_depth: 0,
                lag_ms: None,
                last_error: None,
                last_success_unix_ms: None,
                state: DrainState::Ok,
                reported_at: 0,
            },
        ])
        .await
        .unwrap();
    let status = dev.app_drains(&app.guid).await.unwrap()[0]
        .status
        .clone()
        .unwrap();
    assert_eq!(
        (status.sent, status.dropped, status.queue_depth),
        (120, 3, 7)
    );
    assert_eq!(status.state, DrainState::Retrying);
    assert!(status.reported_at > 0);
    let shown = status.last_error.unwrap();
    assert!(
        shown.contains("papertrail:****@") && !shown.contains("hunter2"),
        "{shown}"
    );

    // Outsiders learn nothing; auditors can read but not bind.
    let outsider = cc.user("outsider", None).await;
    assert_eq!(
        outsider.app_drains(&app.guid).await.unwrap_err().status(),
        Some(404)
    );
    let auditor = cc
        .user("auditor", Some((space.guid.as_str(), SpaceRole::Auditor)))
        .await;
    assert_eq!(auditor.app_drains(&app.guid).await.unwrap().len(), 1);
    assert_eq!(
        auditor
            .create_drain(&app.guid, "syslog://203.0.113.8:514")
            .await
            .unwrap_err()
            .status(),
        Some(403)
    );

    let events = events_of(admin, &app.guid, Some("audit.app.drain.create")).await;
    assert_eq!(events.len(), 1);
    assert!(!events[0].data.to_string().contains("hunter2"));

    dev.delete_drain(&app.guid, &drain.guid).await.unwrap();
    assert!(admin.drain_targets().await.unwrap().is_empty());
    assert_eq!(
        dev.delete_drain(&app.guid, &drain.guid)
            .await
            .unwrap_err()
            .status(),
        Some(404)
    );

    // Deleting the app removes its bindings.
    dev.create_drain(&app.guid, PUBLIC).await.unwrap();
    admin.delete_app(&app.guid).await.unwrap();
    assert!(admin.drain_targets().await.unwrap().is_empty());
    cc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_and_malformed_drains_are_refused_saying_why() {
    let (_dir, cc) = Cc::fresh("cc-drains-refused").await;
    let admin = &cc.admin;
    let app = cc.app("shop").await;
    for url in [
        "syslog://127.0.0.1:514",
        "syslog://localhost:514",
        "syslog-tls://10.0.0.5:6514",
        "https://169.254.169.254/latest",
        "syslog://[::1]:514",
    ] {
        let err = admin.create_drain(&app.guid, url).await.unwrap_err();
        assert_eq!(err.status(), Some(422), "{url}");
        let detail = err.detail().unwrap();
        assert!(detail.contains("allow_private_drains"), "{url}: {detail}");
    }
    for (url, says) in [
        ("ftp://203.0.113.7:21", "not supported"),
        ("syslog://user:hunter2@203.0.113.7", "no port"),
        ("203.0.113.7:514", "not a URL"),
        ("syslog://203.0.113.7:0", "invalid port"),
    ] {
        let err = admin.create_drain(&app.guid, url).await.unwrap_err();
        assert_eq!(err.status(), Some(422), "{url}");
        let detail = err.detail().unwrap();
        assert!(detail.contains(says), "{url}: {detail}");
        assert!(!detail.contains("hunter2"), "{detail}");
    }
    assert!(admin.app_drains(&app.guid).await.unwrap().is_empty());
    cc.stop().await;

    // An operator who allows private drains can bind one.
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::new("cc-drains-private");
    options.allow_private_drains = true;
    let cc = Cc::start(dir.path(), &options).await;
    let app = cc.app("shop").await;
    cc.admin
        .create_drain(&app.guid, "syslog://127.0.0.1:514")
        .await
        .unwrap();
    cc.stop().await;
}
