//! The SLO endpoints on loopback: a valid set is stored, read back per app and in the admin
//! listing, and audited without its webhook URL; an invalid set is refused naming the field;
//! deleting the app removes its SLOs.

use hydrant_api::slo::{Sli, Slo, SloSet};

use crate::support::{Cc, events_of};

/// A 99.9 % availability SLO over 30 days, alerting `webhook`.
pub(crate) fn availability(webhook: Option<&str>) -> Slo {
    Slo {
        name: "availability".into(),
        sli: Sli::Availability {
            count_router_errors: true,
        },
        objective: 99.9,
        period_days: 30,
        min_requests: 50,
        webhook_url: webhook.map(str::to_owned),
        description: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slos_are_stored_listed_audited_and_validated() {
    let (_dir, cc) = Cc::fresh("cc-slos").await;
    let admin = &cc.admin;
    let app = cc.app("shop").await;

    let empty = admin.app_slos(&app.guid).await.unwrap();
    assert!(empty.slos.is_empty());
    assert_eq!(empty.app_name, "shop");

    let set = SloSet {
        slos: vec![
            availability(Some("http://user:hunter2@127.0.0.1:1/hook")),
            Slo {
                name: "fast".into(),
                sli: Sli::Latency { threshold_ms: 250 },
                objective: 99.0,
                ..availability(None)
            },
        ],
    };
    let stored = admin.set_slos(&app.guid, &set).await.unwrap();
    assert_eq!(stored.slos, set.slos);
    assert_eq!(admin.app_slos(&app.guid).await.unwrap().slos, set.slos);
    let all = admin.list_slos().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].app_guid, app.guid);
    assert_eq!(all[0].slos.len(), 2);

    let events = events_of(admin, &app.guid, Some("audit.app.slos.update")).await;
    assert_eq!(events.len(), 1);
    let data = events[0].data.to_string();
    assert!(data.contains("fast") && !data.contains("hunter2"), "{data}");

    let bad = SloSet {
        slos: vec![Slo {
            objective: 100.0,
            ..availability(None)
        }],
    };
    let err = admin.set_slos(&app.guid, &bad).await.unwrap_err();
    assert_eq!(err.status(), Some(422));
    assert!(err.detail().unwrap().contains("slos[0].objective"), "{err}");
    // The refused set changed nothing.
    assert_eq!(admin.app_slos(&app.guid).await.unwrap().slos.len(), 2);

    // Non-admins cannot list every app's SLOs (webhook URLs may hold secrets).
    let outsider = cc.user("outsider", None).await;
    assert_eq!(outsider.list_slos().await.unwrap_err().status(), Some(403));
    assert_eq!(
        outsider.app_slos(&app.guid).await.unwrap_err().status(),
        Some(404)
    );

    admin.set_slos(&app.guid, &SloSet::default()).await.unwrap();
    assert!(admin.list_slos().await.unwrap().is_empty());
    admin.set_slos(&app.guid, &set).await.unwrap();
    admin.delete_app(&app.guid).await.unwrap();
    assert!(admin.list_slos().await.unwrap().is_empty());
    cc.stop().await;
}
