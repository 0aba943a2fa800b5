//! A cell may only route to instances placed on it, as the slim placement message
//! (`executor.placed.<cell>`, no environment) says; the router never reads start commands. A
//! registration on
//! `router.register.<cell>` for an instance the cloud controller placed on another cell is
//! ignored and counted (`router.dropped{reason=not_placed}`), never routed to; the rightful
//! cell's registration is; and a forged unregister from another cell removes nothing.

use hydrant_bus::messages::{
    InstancePlaced, executor_placed_subject, router_register_subject, router_unregister_subject,
};
use hydrant_router::Config;

use crate::support::{Backend, TestRouter};

#[tokio::test]
async fn a_registration_from_a_cell_the_instance_was_not_placed_on_is_ignored() {
    let genuine = Backend::start("genuine").await;
    let thief = Backend::start("thief").await;
    let router = TestRouter::start(Config::default()).await;
    // The cloud controller places shop's instance 0 on e1 (and says so without the start
    // command's environment).
    let placed = InstancePlaced {
        executor_id: "e1".into(),
        app: "shop".into(),
        instance: "shop-instance-0".into(),
        index: 0,
    };
    router
        .bus
        .publish_json(&executor_placed_subject("e1"), &placed)
        .unwrap();

    // e2 claims that instance (pointing at its own backend), and a fresh instance id it was
    // never given for the same route: both ignored.
    let forged = thief.registration(&["shop.apps.localhost"], "shop", 0);
    router
        .bus
        .publish_json(&router_register_subject("e2"), &forged)
        .unwrap();
    let mut nameless = thief.registration(&["shop.apps.localhost"], "shop", 1);
    nameless.private_instance_id = None;
    router
        .bus
        .publish_json(&router_register_subject("e2"), &nameless)
        .unwrap();
    // e1's own registration is accepted.
    let own = genuine.registration(&["shop.apps.localhost"], "shop", 0);
    router
        .bus
        .publish_json(&router_register_subject("e1"), &own)
        .unwrap();

    let reply = router.wait_status("shop.apps.localhost", "/", 200).await;
    assert_eq!(reply.text(), "genuine");
    assert_eq!(
        router
            .metric("router_dropped_total", "reason=\"not_placed\"")
            .await,
        2.0
    );
    for _ in 0..20 {
        assert_eq!(
            router.get("shop.apps.localhost", "/").await.text(),
            "genuine"
        );
    }

    // A forged unregister from e2 removes nothing; e1's own does.
    router
        .bus
        .publish_json(&router_unregister_subject("e2"), &own)
        .unwrap();
    router
        .bus
        .publish_json(&router_unregister_subject("e1"), &own)
        .unwrap();
    // A route whose last instance left answers 503 until it expires.
    router.wait_status("shop.apps.localhost", "/", 503).await;
    assert_eq!(
        router
            .metric("router_dropped_total", "reason=\"not_placed\"")
            .await,
        3.0
    );
    router.stop().await;
}
