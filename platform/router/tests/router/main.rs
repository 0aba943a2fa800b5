//! The router on loopback with real backends and an in-process bus: routing, balancing, safe
//! retries, router-made errors, the route lifecycle on the bus, headers, bodies, upgrades and
//! the envelopes each request leaves in the app's stream.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod assigned;
mod limits;
mod placement;
mod support;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use hydrant_bus::messages::{self, RegistryOptions, RouterStart};
use hydrant_envelope::v2;
use hydrant_router::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use hydrant_testkit::{FakeAgent, dead_addr, wait_for};
use support::{Backend, Behaviour, TestRouter, get, send, static_route, wait_bus};

#[tokio::test]
async fn routes_by_host_ignoring_case_and_port_including_paths() {
    let shop = Backend::start("shop").await;
    let api = Backend::start("api").await;
    let custom = Backend::start("custom").await;
    let router = TestRouter::start(Config::default()).await;
    router.register(&shop.registration(&["shop.apps.localhost"], "shop-guid", 0));
    router.register(&api.registration(&["shop.apps.localhost/api"], "api-guid", 0));
    router.register(&custom.registration(&["www.Example.COM"], "custom-guid", 0));

    let reply = router.wait_status("www.example.com", "/", 200).await;
    assert_eq!(reply.text(), "custom");
    router.wait_status("shop.apps.localhost", "/api", 200).await;
    for (host, path, expect) in [
        ("shop.apps.localhost", "/", "shop"),
        ("SHOP.Apps.LocalHost:8080", "/cart?x=1", "shop"),
        ("shop.apps.localhost", "/api", "api"),
        ("shop.apps.localhost", "/API/v1/items", "api"),
        ("shop.apps.localhost", "/apix", "shop"),
        ("WWW.EXAMPLE.COM:443", "/anything", "custom"),
    ] {
        let reply = router.get(host, path).await;
        assert_eq!(reply.status, 200, "{host}{path}");
        assert_eq!(reply.text(), expect, "{host}{path}");
        assert_eq!(
            reply.header("x-seen-path"),
            Some(path),
            "path is forwarded as sent"
        );
    }

    let reply = router.get("nope.apps.localhost", "/").await;
    assert_eq!(reply.status, 404);
    assert_eq!(
        reply.header("x-hydrant-router-error"),
        Some("unknown_route")
    );
    assert_eq!(reply.header("x-cf-routererror"), Some("unknown_route"));
    assert!(
        reply.text().contains("nope.apps.localhost"),
        "{}",
        reply.text()
    );
    assert!(reply.header("x-vcap-request-id").is_some());
    assert_eq!(
        router.metric("router_errors_total", "unknown_route").await,
        1.0
    );
    router.stop().await;
}

#[tokio::test]
async fn forwards_cf_headers_and_returns_the_request_id() {
    let backend = Backend::start("b").await;
    let router = TestRouter::start(Config::default()).await;
    router.register(&backend.registration(&["h.apps.localhost"], "app-guid", 3));
    router.wait_status("h.apps.localhost", "/", 200).await;

    let reply = get(
        router.addr,
        "h.apps.localhost",
        "/",
        &[
            ("x-forwarded-for", "10.1.2.3"),
            ("connection", "x-hop-secret"),
            ("x-hop-secret", "must not pass"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200);
    let id = reply.header("x-vcap-request-id").unwrap();
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(reply.header("x-seen-request-id"), Some(id));
    assert_eq!(
        reply.header("x-seen-forwarded-for"),
        Some("10.1.2.3, 127.0.0.1")
    );
    assert_eq!(reply.header("x-seen-forwarded-proto"), Some("http"));
    assert!(
        reply
            .header("x-seen-request-start")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert_eq!(reply.header("x-seen-app-id"), Some("app-guid"));
    assert_eq!(reply.header("x-seen-instance-index"), Some("3"));
    assert_eq!(
        reply.header("x-seen-instance-id"),
        Some("app-guid-instance-3")
    );
    assert_eq!(reply.header("x-seen-host"), Some("h.apps.localhost"));
    assert_eq!(
        reply.header("x-seen-secret"),
        None,
        "hop-by-hop header leaked"
    );
    assert_eq!(reply.header("x-cf-app-instance"), Some("app-guid:3"));

    // A sane client request id is propagated.
    let reply = get(
        router.addr,
        "h.apps.localhost",
        "/",
        &[("x-vcap-request-id", "trace-abc-123")],
    )
    .await
    .unwrap();
    assert_eq!(reply.header("x-seen-request-id"), Some("trace-abc-123"));
    router.stop().await;
}

#[tokio::test]
async fn pins_an_instance_with_x_cf_app_instance() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let router = TestRouter::start(Config::default()).await;
    router.register(&a.registration(&["pin.apps.localhost"], "app", 0));
    router.register(&b.registration(&["pin.apps.localhost"], "app", 1));
    wait_for(support::DEADLINE, "both instances", || async {
        let r = router.get("pin.apps.localhost", "/").await;
        (r.text() == "b").then_some(())
    })
    .await;
    for _ in 0..6 {
        let reply = get(
            router.addr,
            "pin.apps.localhost",
            "/",
            &[("x-cf-app-instance", "app:1")],
        )
        .await
        .unwrap();
        assert_eq!(reply.text(), "b");
    }
    for (value, reason) in [
        ("garbage", "invalid_cf_app_instance_header"),
        ("app:7", "unknown_app_instance"),
    ] {
        let reply = get(
            router.addr,
            "pin.apps.localhost",
            "/",
            &[("x-cf-app-instance", value)],
        )
        .await
        .unwrap();
        assert_eq!(reply.status, 400, "{value}");
        assert_eq!(reply.header("x-hydrant-router-error"), Some(reason));
    }
    router.stop().await;
}

#[tokio::test]
async fn round_robin_spreads_evenly() {
    let backends = [
        Backend::start("r0").await,
        Backend::start("r1").await,
        Backend::start("r2").await,
    ];
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let router = TestRouter::start(Config {
        routes: vec![static_route("rr.apps.localhost", &addrs)],
        ..Config::default()
    })
    .await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..30 {
        let reply = router.get("rr.apps.localhost", "/").await;
        *seen.entry(reply.text()).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|&n| n == 10), "{seen:?}");
    assert_eq!(router.metric("router_requests_total", "").await, 30.0);
    assert_eq!(router.metric("router_responses_total", "2xx").await, 30.0);
    assert_eq!(router.metric("router_routes", "").await, 1.0);
    router.stop().await;
}

#[tokio::test]
async fn least_connection_prefers_idle_instances() {
    let busy = Backend::start("busy").await;
    let idle = Backend::start("idle").await;
    let router = TestRouter::start(Config::default()).await;
    let mut message = busy.registration(&["lc.apps.localhost"], "app", 0);
    message.options = Some(RegistryOptions {
        loadbalancing: Some("least-connection".into()),
    });
    router.register(&message);
    let mut message = idle.registration(&["lc.apps.localhost"], "app", 1);
    message.options = Some(RegistryOptions {
        loadbalancing: Some("least-connection".into()),
    });
    router.register(&message);
    wait_for(support::DEADLINE, "both instances", || async {
        (router.get("lc.apps.localhost", "/").await.text() == "idle").then_some(())
    })
    .await;

    // Two slow requests, pinned to "busy", keep it occupied.
    let busy_before = busy.hits();
    let addr = router.addr;
    let slow: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(async move {
                get(
                    addr,
                    "lc.apps.localhost",
                    "/slow",
                    &[("x-cf-app-instance", "app:0")],
                )
                .await
            })
        })
        .collect();
    wait_for(support::DEADLINE, "busy to hold two requests", || async {
        (busy.hits() >= busy_before + 2).then_some(())
    })
    .await;
    let before = idle.hits();
    for _ in 0..10 {
        assert_eq!(router.get("lc.apps.localhost", "/").await.text(), "idle");
    }
    assert_eq!(idle.hits(), before + 10);
    busy.release();
    for task in slow {
        assert_eq!(task.await.unwrap().unwrap().text(), "busy");
    }
    router.stop().await;
}

#[tokio::test]
async fn unreachable_instances_are_retried_elsewhere_then_skipped() {
    let live = Backend::start("live").await;
    let dead = [dead_addr(), dead_addr()];
    let router = TestRouter::start(Config {
        routes: vec![static_route(
            "retry.apps.localhost",
            &[dead[0], dead[1], live.addr],
        )],
        ..Config::default()
    })
    .await;
    for _ in 0..9 {
        let reply = router.get("retry.apps.localhost", "/").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), "live");
    }
    // Each dead instance cost one failed attempt, then it was skipped (30 s by default).
    assert_eq!(
        router.metric("router_backend_unreachable_total", "").await,
        2.0
    );
    let retries = router.metric("router_retries_total", "").await;
    assert!((1.0..=2.0).contains(&retries), "{retries}");
    assert_eq!(live.hits(), 9);
    router.stop().await;
}

#[tokio::test]
async fn at_most_three_attempts_never_the_same_instance_twice() {
    let dead: Vec<_> = [dead_addr(), dead_addr(), dead_addr(), dead_addr()].to_vec();
    let two = [dead_addr(), dead_addr()];
    let router = TestRouter::start(Config {
        routes: vec![
            static_route("four.apps.localhost", &dead),
            static_route("two.apps.localhost", &two),
        ],
        ..Config::default()
    })
    .await;
    let reply = router.get("four.apps.localhost", "/").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.header("x-cf-routererror"), Some("endpoint_failure"));
    assert_eq!(
        reply.header("x-hydrant-router-error"),
        Some("endpoint_failure")
    );
    assert_eq!(
        router.metric("router_backend_unreachable_total", "").await,
        3.0
    );

    let reply = router.get("two.apps.localhost", "/").await;
    assert_eq!(reply.status, 502);
    assert_eq!(
        router.metric("router_backend_unreachable_total", "").await,
        5.0
    );

    // Both are marked now; the route fails open and tries them again rather than refusing.
    let reply = router.get("two.apps.localhost", "/").await;
    assert_eq!(reply.status, 502);
    assert_eq!(
        router.metric("router_backend_unreachable_total", "").await,
        7.0
    );
    router.stop().await;
}

#[tokio::test]
async fn a_skipped_instance_is_tried_again_after_the_ejection_time() {
    let live = Backend::start("live").await;
    let dead = dead_addr();
    let router = TestRouter::start(Config {
        routes: vec![static_route("eject.apps.localhost", &[dead, live.addr])],
        retry_after_failure_ms: 300,
        ..Config::default()
    })
    .await;
    for _ in 0..4 {
        assert_eq!(router.get("eject.apps.localhost", "/").await.status, 200);
    }
    assert_eq!(
        router.metric("router_backend_unreachable_total", "").await,
        1.0
    );
    // Once the mark lapses, the dead instance gets (and fails) an attempt again.
    wait_for(
        support::DEADLINE,
        "the dead instance to be tried again",
        || async {
            assert_eq!(router.get("eject.apps.localhost", "/").await.status, 200);
            (router.metric("router_backend_unreachable_total", "").await >= 2.0).then_some(())
        },
    )
    .await;
    router.stop().await;
}

#[tokio::test]
async fn a_failure_after_the_app_got_the_request_is_not_retried() {
    let dying = [
        Backend::start_with("d0", Behaviour::Die).await,
        Backend::start_with("d1", Behaviour::Die).await,
    ];
    let router = TestRouter::start(Config {
        routes: vec![static_route(
            "die.apps.localhost",
            &[dying[0].addr, dying[1].addr],
        )],
        ..Config::default()
    })
    .await;
    let reply = router.get("die.apps.localhost", "/").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.header("x-cf-routererror"), Some("endpoint_failure"));
    assert_eq!(
        dying[0].hits() + dying[1].hits(),
        1,
        "the request was delivered twice"
    );
    assert_eq!(router.metric("router_retries_total", "").await, 0.0);
    router.stop().await;
}

#[tokio::test]
async fn a_route_without_instances_answers_503() {
    let backend = Backend::start("b").await;
    let router = TestRouter::start(Config {
        routes: vec![static_route("empty.apps.localhost", &[])],
        empty_route_timeout_secs: 1,
        ..Config::default()
    })
    .await;
    let reply = router.get("empty.apps.localhost", "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("x-cf-routererror"), Some("no_endpoints"));
    assert_eq!(reply.header("x-hydrant-router-error"), Some("no_endpoints"));

    // Unregistering the last instance leaves a 503 route for a while, then it is gone.
    let message = backend.registration(&["gone.apps.localhost"], "app", 0);
    router.register(&message);
    router.wait_status("gone.apps.localhost", "/", 200).await;
    router.unregister(&message);
    router.wait_status("gone.apps.localhost", "/", 503).await;
    router.stop().await;
}

#[tokio::test]
async fn unregister_removes_only_that_instance() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let router = TestRouter::start(Config {
        empty_route_timeout_secs: 0,
        ..Config::default()
    })
    .await;
    let ma = a.registration(&["u.apps.localhost"], "app", 0);
    let mb = b.registration(&["u.apps.localhost"], "app", 1);
    router.register(&ma);
    router.register(&mb);
    wait_for(support::DEADLINE, "both instances", || async {
        (router.get("u.apps.localhost", "/").await.text() == "b").then_some(())
    })
    .await;
    router.unregister(&ma);
    wait_for(support::DEADLINE, "a to be gone", || async {
        let texts: Vec<String> = futures_texts(&router, "u.apps.localhost", 4).await;
        texts.iter().all(|t| t == "b").then_some(())
    })
    .await;
    router.unregister(&mb);
    router.wait_status("u.apps.localhost", "/", 404).await;
    assert_eq!(router.metric("router_unregistrations_total", "").await, 2.0);
    router.stop().await;
}

async fn futures_texts(router: &TestRouter, host: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(router.get(host, "/").await.text());
    }
    out
}

#[tokio::test]
async fn registrations_expire_but_not_while_the_bus_is_down() {
    let backend = Backend::start("b").await;
    let router = TestRouter::start(Config {
        prune_interval_ms: 50,
        empty_route_timeout_secs: 0,
        ..Config::default()
    })
    .await;
    let mut message = backend.registration(&["ttl.apps.localhost"], "app", 0);
    message.stale_threshold_in_seconds = Some(1);

    // Plain expiry: no refresh within 1 s and the route is gone.
    router.register(&message);
    router.wait_status("ttl.apps.localhost", "/", 200).await;
    router.wait_status("ttl.apps.localhost", "/", 404).await;
    assert!(router.metric("router_pruned_total", "").await >= 1.0);

    // With the bus down for well past the threshold, the route stays.
    router.register(&message);
    router.wait_status("ttl.apps.localhost", "/", 200).await;
    router.bus.simulate_outage(true).unwrap();
    wait_bus(&router.bus, false).await;
    let down_since = tokio::time::Instant::now();
    while down_since.elapsed() < Duration::from_millis(1600) {
        assert_eq!(router.get("ttl.apps.localhost", "/").await.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Back up: the registration gets a fresh threshold rather than expiring at once...
    router.bus.simulate_outage(false).unwrap();
    wait_bus(&router.bus, true).await;
    let back = tokio::time::Instant::now();
    assert_eq!(router.get("ttl.apps.localhost", "/").await.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(router.get("ttl.apps.localhost", "/").await.status, 200);
    // ...and without a refresh it then expires as usual.
    router.wait_status("ttl.apps.localhost", "/", 404).await;
    assert!(
        back.elapsed() >= Duration::from_millis(900),
        "{:?}",
        back.elapsed()
    );
    router.stop().await;
}

#[tokio::test]
async fn publishes_router_start_and_answers_greet() {
    let config = Config {
        bus: support::unique_bus(),
        ..Config::default()
    };
    let watcher = hydrant_bus::Bus::connect(&config.bus, &hydrant_emitter::Registry::new("w", "0"))
        .await
        .unwrap();
    let mut starts = watcher.subscribe(messages::ROUTER_START).await.unwrap();
    let router = TestRouter::start(config).await;
    let start = tokio::time::timeout(support::DEADLINE, starts.next())
        .await
        .unwrap()
        .unwrap()
        .json::<RouterStart>()
        .unwrap();
    assert_eq!(start.minimum_register_interval_in_seconds, 20);
    assert_eq!(start.prune_threshold_in_seconds, 120);
    assert!(start.id.starts_with("0-"), "{}", start.id);

    let reply = router
        .bus
        .request(messages::ROUTER_GREET, Bytes::new(), support::DEADLINE)
        .await
        .unwrap()
        .json::<RouterStart>()
        .unwrap();
    assert_eq!(reply, start);

    // A reconnect announces again, so executors re-register at once.
    router.bus.simulate_outage(true).unwrap();
    wait_bus(&router.bus, false).await;
    router.bus.simulate_outage(false).unwrap();
    let again = tokio::time::timeout(support::DEADLINE, starts.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.json::<RouterStart>().unwrap().id, start.id);
    router.stop().await;
}

#[tokio::test]
async fn request_bodies_are_proxied_intact() {
    let backend = Backend::start("echo").await;
    let router = TestRouter::start(Config {
        routes: vec![static_route("post.apps.localhost", &[backend.addr])],
        ..Config::default()
    })
    .await;
    let body: Bytes = (0..1_000_000u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let reply = send(
        router.addr,
        "POST",
        "post.apps.localhost",
        "/upload",
        &[],
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), body.len());
    assert!(reply.body == body, "body changed on the way");
    router.stop().await;
}

#[tokio::test]
async fn keep_alive_connections_are_reused() {
    let backend = Backend::start("k").await;
    let router = TestRouter::start(Config {
        routes: vec![static_route("ka.apps.localhost", &[backend.addr])],
        ..Config::default()
    })
    .await;
    // One client connection, many requests, sequentially.
    let stream = TcpStream::connect(router.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    for _ in 0..20 {
        sender.ready().await.unwrap();
        let request = http::Request::builder()
            .uri("/")
            .header("host", "ka.apps.localhost")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap();
    }
    assert_eq!(backend.hits(), 20);
    assert_eq!(
        router.metric("router_backend_unreachable_total", "").await,
        0.0
    );
    router.stop().await;
}

#[tokio::test]
async fn backend_connections_are_pooled_by_each_worker() {
    for workers in [1, 3] {
        let backend = Backend::start("pool").await;
        let router = TestRouter::start(Config {
            routes: vec![static_route("pool.apps.localhost", &[backend.addr])],
            workers,
            ..Config::default()
        })
        .await;
        // Every request on a fresh client connection, so they land on any worker.
        for _ in 0..30 {
            let reply = router.get("pool.apps.localhost", "/").await;
            assert_eq!(reply.status, 200);
        }
        assert_eq!(backend.hits(), 30);
        let dialled = backend.connections();
        assert!(
            (1..=workers).contains(&dialled),
            "{workers} workers dialled {dialled} backend connections for 30 sequential requests"
        );
        router.stop().await;
    }
}

#[tokio::test]
async fn many_clients_at_once_are_all_served() {
    let backends = [Backend::start("m0").await, Backend::start("m1").await];
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let router = TestRouter::start(Config {
        routes: vec![static_route("many.apps.localhost", &addrs)],
        workers: 2,
        max_client_connections: 64,
        ..Config::default()
    })
    .await;
    // Many more clients than workers, all at once: none fails and none gets another's reply.
    // (Past max_client_connections they would be refused with 503: see `limits`.)
    let addr = router.addr;
    let clients: Vec<_> = (0..40)
        .map(|i| {
            tokio::spawn(async move {
                let body = Bytes::from(format!("client {i}"));
                let reply = send(addr, "POST", "many.apps.localhost", "/", &[], body.clone())
                    .await
                    .unwrap();
                assert_eq!(reply.status, 200);
                assert_eq!(reply.body, body, "a reply went to the wrong client");
            })
        })
        .collect();
    for client in clients {
        tokio::time::timeout(support::DEADLINE, client)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(backends[0].hits() + backends[1].hits(), 40);
    assert_eq!(router.metric("router_responses_total", "2xx").await, 40.0);
    wait_for(
        support::DEADLINE,
        "every client connection to close",
        || async { (router.metric("router_connections", "").await == 0.0).then_some(()) },
    )
    .await;
    router.stop().await;
}

#[tokio::test]
async fn shutdown_stops_accepting_and_lets_requests_in_flight_finish() {
    let backend = Backend::start("drain").await;
    let router = TestRouter::start(Config {
        routes: vec![static_route("drain.apps.localhost", &[backend.addr])],
        workers: 2,
        ..Config::default()
    })
    .await;
    let addr = router.addr;
    let slow: Vec<_> = (0..4)
        .map(|_| tokio::spawn(async move { get(addr, "drain.apps.localhost", "/slow", &[]).await }))
        .collect();
    wait_for(
        support::DEADLINE,
        "four requests at the backend",
        || async { (backend.hits() == 4).then_some(()) },
    )
    .await;
    router.begin_shutdown();
    wait_for(
        support::DEADLINE,
        "new connections to be refused",
        || async { TcpStream::connect(addr).await.is_err().then_some(()) },
    )
    .await;
    backend.release();
    for task in slow {
        let reply = tokio::time::timeout(support::DEADLINE, task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            (reply.status.as_u16(), reply.text().as_str()),
            (200, "drain")
        );
    }
    router.stop().await;
}

#[tokio::test]
async fn upgrades_are_tunnelled() {
    let backend = Backend::start("ws").await;
    let router = TestRouter::start(Config {
        routes: vec![static_route("ws.apps.localhost", &[backend.addr])],
        ..Config::default()
    })
    .await;
    let (mut stream, head) = support::open_tunnel(router.addr).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(b"ping over the tunnel").await.unwrap();
    let mut echoed = [0u8; 20];
    tokio::time::timeout(support::DEADLINE, stream.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"ping over the tunnel");
    assert_eq!(router.metric("router_upgrades_total", "").await, 1.0);
    drop(stream);
    router.stop().await;
}

#[tokio::test]
async fn each_request_leaves_a_timer_and_an_rtr_line_in_the_app_stream() {
    let agent = FakeAgent::start();
    let backend = Backend::start("t").await;
    let mut config = Config::default();
    config.telemetry.agent = Some(agent.url());
    config.router_id = "7".into();
    let router = TestRouter::start(config).await;
    router.register(&backend.registration(&["timer.apps.localhost"], "timer-guid", 2));
    router.wait_status("timer.apps.localhost", "/", 200).await;

    let reply = get(
        router.addr,
        "timer.apps.localhost",
        "/orders?id=5",
        &[("user-agent", "probe/1.0 \"quoted\"")],
    )
    .await
    .unwrap();
    let id = reply.header("x-vcap-request-id").unwrap().to_owned();

    let (timer, line) = wait_for(support::DEADLINE, "the Timer and the RTR line", || async {
        let envelopes = agent.envelopes();
        let timer = envelopes.iter().find(|e| {
            e.tags.get("request_id") == Some(&id)
                && matches!(&e.message, Some(v2::envelope::Message::Timer(_)))
        })?;
        let line = envelopes.iter().find_map(|e| match &e.message {
            Some(v2::envelope::Message::Log(log))
                if e.tags.get("source_type").map(String::as_str) == Some("RTR") =>
            {
                let text = String::from_utf8(log.payload.to_vec()).ok()?;
                text.contains(&id).then_some((e.clone(), text))
            }
            _ => None,
        })?;
        Some((timer.clone(), line))
    })
    .await;

    assert_eq!(timer.source_id, "timer-guid");
    assert_eq!(timer.instance_id, "2");
    let Some(v2::envelope::Message::Timer(t)) = &timer.message else {
        unreachable!()
    };
    assert_eq!(t.name, "http");
    assert!(t.stop >= t.start && t.start > 0, "{t:?}");
    for (key, value) in [
        ("peer_type", "Client"),
        ("method", "GET"),
        ("status_code", "200"),
        ("uri", "http://timer.apps.localhost/orders"),
        ("app_id", "timer-guid"),
        ("instance_id", "2"),
        ("routing_instance_id", "timer-guid-instance-2"),
        ("user_agent", "probe/1.0 \"quoted\""),
        ("component", "test"),
    ] {
        assert_eq!(
            timer.tags.get(key).map(String::as_str),
            Some(value),
            "{key}"
        );
    }

    // The app answered: nothing marks it as the router's own error.
    assert!(!timer.tags.contains_key("router_error"), "{:?}", timer.tags);

    let (log, text) = line;
    assert_eq!(log.source_id, "timer-guid");
    assert_eq!(log.instance_id, "7");
    assert!(text.starts_with("timer.apps.localhost - ["), "{text}");
    for part in [
        "\"GET /orders?id=5 HTTP/1.1\" 200 0 1 \"-\" \"probe/1.0 \\\"quoted\\\"\"",
        &format!("vcap_request_id:\"{id}\""),
        "x_forwarded_proto:\"http\"",
        "app_id:\"timer-guid\" app_index:\"2\" instance_id:\"timer-guid-instance-2\"",
        "x_cf_routererror:\"-\"",
        "response_time:",
        "gorouter_time:",
    ] {
        assert!(text.contains(part), "missing {part:?} in {text}");
    }
    router.stop().await;
}
