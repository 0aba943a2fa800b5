//! Route hijack at the router: once the cloud controller has sent its `router.assigned`
//! snapshot, a registration for a route the controller did not give that app — the victim's
//! host, or a path under it — is ignored and counted (`router.dropped{reason=not_assigned}`),
//! and the victim's traffic never reaches the attacker's backend.

use std::collections::BTreeMap;

use hydrant_bus::messages::{ROUTER_ASSIGNED, RouteAssignments};
use hydrant_router::Config;

use crate::support::{Backend, TestRouter};

#[tokio::test]
async fn registrations_for_routes_the_controller_did_not_assign_are_refused() {
    let victim = Backend::start("victim").await;
    let attacker = Backend::start("attacker").await;
    let router = TestRouter::start(Config::default()).await;
    let snapshot = RouteAssignments {
        apps: BTreeMap::from([
            ("shop".to_owned(), vec!["shop.apps.localhost".to_owned()]),
            ("trap".to_owned(), vec!["trap.apps.localhost".to_owned()]),
        ]),
        ..RouteAssignments::default()
    };
    router.bus.publish_json(ROUTER_ASSIGNED, &snapshot).unwrap();

    // The attacker's app registers the victim's host and a path under it: both ignored.
    router.register(&attacker.registration(&["shop.apps.localhost"], "trap", 0));
    router.register(&attacker.registration(&["shop.apps.localhost/login"], "trap", 1));
    // Its own route and the victim's own registration are accepted.
    router.register(&attacker.registration(&["trap.apps.localhost"], "trap", 2));
    router.register(&victim.registration(&["shop.apps.localhost"], "shop", 0));

    router.wait_status("trap.apps.localhost", "/", 200).await;
    let reply = router.wait_status("shop.apps.localhost", "/", 200).await;
    assert_eq!(reply.text(), "victim");
    for path in ["/", "/login", "/login/x"] {
        for _ in 0..10 {
            assert_eq!(
                router.get("shop.apps.localhost", path).await.text(),
                "victim"
            );
        }
    }
    assert_eq!(
        router
            .metric("router_dropped_total", "reason=\"not_assigned\"")
            .await,
        2.0
    );
    router.stop().await;
}
