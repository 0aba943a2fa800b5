//! The behaviour every bus backend must share, written once and run against the in-process hub
//! and a real nats-server. Each check uses two handles (two NATS connections, or two roles on
//! one hub) with separate registries, as two roles would, and waits with deadlines.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use hydrant_bus::messages::{self, RegistryMessage};
use hydrant_bus::{Bus, Config, Error, Message, Subscription};
use hydrant_emitter::Registry;
use tokio::time::Instant;

/// Subscriber queue size the suite's buses are built with (small, to test overflow).
pub const SUBSCRIBER_BUFFER: usize = 8;

const DEADLINE: Duration = Duration::from_secs(10);

pub struct Pair {
    pub publisher: Bus,
    pub subscriber: Bus,
    pub publisher_registry: Registry,
    pub subscriber_registry: Registry,
}

pub fn registries() -> (Registry, Registry) {
    (
        Registry::new("test-publisher", "0"),
        Registry::new("test-subscriber", "0"),
    )
}

/// Two handles on the bus `config` names, each with its own registry, as two roles would have.
pub async fn connect_pair(config: &Config) -> Pair {
    let (publisher_registry, subscriber_registry) = registries();
    Pair {
        publisher: Bus::connect(config, &publisher_registry).await.unwrap(),
        subscriber: Bus::connect(config, &subscriber_registry).await.unwrap(),
        publisher_registry,
        subscriber_registry,
    }
}

/// Declares one test per shared check, run with the test attribute given (e.g.
/// `#[tokio::test]`) on a fresh pair from `$setup()`, which returns what must outlive the test
/// (a server, or `()`) and the [`Pair`].
macro_rules! backend_suite {
    (#[$test:meta] $setup:ident) => {
        backend_suite!(@each #[$test] $setup;
            exact_subjects,
            wildcards,
            queue_groups,
            request_reply,
            no_responders_and_timeout,
            invalid_input,
            slow_subscriber_drops_are_counted,
            unsubscribe_on_drop,
            typed_json,
        );
    };
    (@each #[$test:meta] $setup:ident; $($name:ident),* $(,)?) => {
        $(
            #[$test]
            async fn $name() {
                let (_keep, pair) = $setup().await;
                suite::$name(&pair).await;
            }
        )*
    };
}

/// The next message, or a panic naming the subscription after the deadline.
pub async fn recv(sub: &mut Subscription) -> Message {
    match tokio::time::timeout(DEADLINE, sub.next()).await {
        Ok(Some(m)) => m,
        Ok(None) => panic!("subscription {:?} closed", sub.pattern()),
        Err(_) => panic!("nothing arrived on {:?} within {DEADLINE:?}", sub.pattern()),
    }
}

/// Polls `cond` until it holds, panicking with `what` after the deadline.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn count(registry: &Registry, name: &str, tags: &[(&str, &str)]) -> u64 {
    registry.counter_sum(name, tags)
}

/// A subscription sees its subject and nothing else; the subject, payload and an empty reply
/// arrive intact. The sentinel published last proves the unwanted message was skipped (one
/// publisher's messages arrive in order), with no sleeping.
pub async fn exact_subjects(p: &Pair) {
    let mut sub = p.subscriber.subscribe("orders.created").await.unwrap();
    assert_eq!(sub.pattern(), "orders.created");
    p.publisher
        .publish("orders.deleted", Bytes::from_static(b"no"))
        .unwrap();
    p.publisher
        .publish("orders.created.extra", Bytes::from_static(b"no"))
        .unwrap();
    p.publisher
        .publish("orders.created", Bytes::from_static(b"yes"))
        .unwrap();
    let m = recv(&mut sub).await;
    assert_eq!(m.subject, "orders.created");
    assert_eq!(&m.payload[..], b"yes");
    assert_eq!(m.reply, None);
    assert!(sub.try_next().is_none());
}

/// `*` takes one token, `>` one or more; both backends route identically.
pub async fn wildcards(p: &Pair) {
    let mut star = p.subscriber.subscribe("router.*").await.unwrap();
    let mut tail = p.subscriber.subscribe("executor.>").await.unwrap();
    for subject in [
        "router.register",
        "router.a.b",
        "executor",
        "executor.heartbeat",
        "executor.start.e1",
        "router.start",
        "done.sentinel",
    ] {
        p.publisher.publish(subject, Bytes::new()).unwrap();
    }
    assert_eq!(recv(&mut star).await.subject, "router.register");
    assert_eq!(recv(&mut star).await.subject, "router.start");
    assert_eq!(recv(&mut tail).await.subject, "executor.heartbeat");
    assert_eq!(recv(&mut tail).await.subject, "executor.start.e1");
    let mut all = p.subscriber.subscribe(">").await.unwrap();
    p.publisher
        .publish("any.thing.at.all", Bytes::new())
        .unwrap();
    assert_eq!(recv(&mut all).await.subject, "any.thing.at.all");
    assert!(star.try_next().is_none());
    assert!(tail.try_next().is_none());
}

/// Each message goes to exactly one member of a queue group, while a plain subscriber on the
/// same subject still sees every message.
pub async fn queue_groups(p: &Pair) {
    let mut m1 = p
        .subscriber
        .queue_subscribe("work.>", "workers")
        .await
        .unwrap();
    let mut m2 = p
        .subscriber
        .queue_subscribe("work.>", "workers")
        .await
        .unwrap();
    assert_eq!(m1.group(), Some("workers"));
    let mut watcher = p.subscriber.subscribe("work.>").await.unwrap();
    const N: usize = 20;
    const BATCH: usize = 4;
    let mut sent = BTreeSet::new();
    let mut got = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    // Batches smaller than the subscriber queues, drained between batches, so nothing overflows
    // however unevenly the group shares the work.
    for batch in 0..N / BATCH {
        for j in 0..BATCH {
            let payload = format!("job-{}", batch * BATCH + j);
            sent.insert(payload.clone());
            p.publisher
                .publish("work.job", Bytes::from(payload))
                .unwrap();
        }
        for _ in 0..BATCH {
            recv(&mut watcher).await;
        }
        let target = got.len() + BATCH;
        while got.len() < target {
            assert!(
                Instant::now() < deadline,
                "group got {} of {target}",
                got.len()
            );
            tokio::select! {
                Some(m) = m1.next() => got.push((1, m)),
                Some(m) = m2.next() => got.push((2, m)),
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
    let payloads: BTreeSet<String> = got
        .iter()
        .map(|(_, m)| String::from_utf8(m.payload.to_vec()).unwrap())
        .collect();
    assert_eq!(payloads, sent, "every job exactly once across the group");
    assert!(got.iter().any(|(w, _)| *w == 1) && got.iter().any(|(w, _)| *w == 2));
    // Nothing was duplicated: a sentinel behind the jobs arrives with both queues empty.
    p.publisher.publish("work.sentinel", Bytes::new()).unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let sentinel = m1.try_next().or_else(|| m2.try_next());
        if let Some(m) = sentinel {
            assert_eq!(m.subject, "work.sentinel", "duplicate delivery: {m:?}");
            break;
        }
        assert!(Instant::now() < deadline, "sentinel never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A responder answers through `reply`; `request` returns the answer. Queue-grouped responders
/// (the usual service shape) answer each request once.
pub async fn request_reply(p: &Pair) {
    let responder = p.subscriber.clone();
    let mut service = p
        .subscriber
        .queue_subscribe("svc.echo", "echo")
        .await
        .unwrap();
    let mut service2 = p
        .subscriber
        .queue_subscribe("svc.echo", "echo")
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        loop {
            let m = tokio::select! {
                Some(m) = service.next() => m,
                Some(m) = service2.next() => m,
                else => break,
            };
            let mut answer = b"echo:".to_vec();
            answer.extend_from_slice(&m.payload);
            responder.reply(&m, Bytes::from(answer)).unwrap();
        }
    });
    for i in 0..10 {
        let answer = p
            .publisher
            .request("svc.echo", Bytes::from(format!("hi-{i}")), DEADLINE)
            .await
            .unwrap();
        assert_eq!(answer.payload, Bytes::from(format!("echo:hi-{i}")));
    }
    assert_eq!(
        count(&p.publisher_registry, "bus.requests", &[("outcome", "ok")]),
        10
    );
    task.abort();
    let no_reply = Message {
        subject: "x".into(),
        payload: Bytes::new(),
        reply: None,
    };
    assert!(matches!(
        p.subscriber.reply(&no_reply, Bytes::new()),
        Err(Error::NoReplySubject { .. })
    ));
}

/// Nobody subscribed: a fast, distinct error. Subscribed but silent: a timeout after the
/// requested time, not before.
pub async fn no_responders_and_timeout(p: &Pair) {
    let started = Instant::now();
    let err = p
        .publisher
        .request("svc.nobody", Bytes::new(), Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoResponders { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no-responders must not wait"
    );

    let _silent = p.subscriber.subscribe("svc.silent").await.unwrap();
    let started = Instant::now();
    let err = p
        .publisher
        .request("svc.silent", Bytes::new(), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(err.to_string().contains("svc.silent"), "{err}");
    let r = &p.publisher_registry;
    assert_eq!(count(r, "bus.requests", &[("outcome", "no_responders")]), 1);
    assert_eq!(count(r, "bus.requests", &[("outcome", "timeout")]), 1);
}

/// Malformed subjects, groups and oversized payloads are refused with clear errors and
/// nothing is sent.
pub async fn invalid_input(p: &Pair) {
    for bad in ["", "a..b", "a b", "wild.*", "wild.>", "x\n"] {
        let err = p.publisher.publish(bad, Bytes::new()).unwrap_err();
        assert!(
            matches!(err, Error::InvalidSubject { .. }),
            "{bad:?}: {err}"
        );
    }
    for bad in ["", "a.>.b", "a. b"] {
        let err = p.subscriber.subscribe(bad).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidSubject { .. }),
            "{bad:?}: {err}"
        );
    }
    let err = p
        .subscriber
        .queue_subscribe("ok.subject", "bad group")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidGroup { .. }), "{err}");
    let err = p
        .publisher
        .request("wild.*", Bytes::new(), DEADLINE)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidSubject { .. }), "{err}");
    let huge = Bytes::from(vec![b'x'; 1024 * 1024 + 1]);
    let err = p.publisher.publish("big", huge).unwrap_err();
    assert!(matches!(err, Error::PayloadTooLarge { .. }), "{err}");
    assert!(err.to_string().contains("1048577 bytes"), "{err}");
    assert_eq!(count(&p.publisher_registry, "bus.published", &[]), 0);
}

/// A subscriber that does not read loses what overflows its queue, and every loss is counted:
/// received = delivered + dropped, and what it reads afterwards is the oldest `buffer` messages.
pub async fn slow_subscriber_drops_are_counted(p: &Pair) {
    let mut sub = p.subscriber.subscribe("flood").await.unwrap();
    const N: u64 = 100;
    for i in 0..N {
        p.publisher
            .publish("flood", Bytes::from(i.to_string()))
            .unwrap();
    }
    p.publisher.flush().await.unwrap();
    let r = &p.subscriber_registry;
    eventually("all messages counted at the subscriber", || {
        count(r, "bus.received", &[]) == N
    })
    .await;
    let delivered = count(r, "bus.delivered", &[]);
    let dropped = count(r, "bus.dropped", &[("reason", "subscriber_queue_full")]);
    assert_eq!(delivered, SUBSCRIBER_BUFFER as u64);
    assert_eq!(
        delivered + dropped,
        N,
        "ledger: received = delivered + dropped"
    );
    for i in 0..SUBSCRIBER_BUFFER {
        assert_eq!(recv(&mut sub).await.payload, Bytes::from(i.to_string()));
    }
    assert!(sub.is_empty());
    let w = &p.publisher_registry;
    assert_eq!(count(w, "bus.published", &[]), N);
    assert_eq!(count(w, "bus.sent", &[]), N);
    assert_eq!(count(w, "bus.dropped", &[]), 0);
    // Room again: new messages flow.
    p.publisher
        .publish("flood", Bytes::from_static(b"after"))
        .unwrap();
    assert_eq!(&recv(&mut sub).await.payload[..], b"after");
}

/// Dropping a subscription unsubscribes: the subject goes back to having no responders.
pub async fn unsubscribe_on_drop(p: &Pair) {
    let sub = p.subscriber.subscribe("svc.temporary").await.unwrap();
    let err = p
        .publisher
        .request("svc.temporary", Bytes::new(), Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    drop(sub);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let err = p
            .publisher
            .request("svc.temporary", Bytes::new(), Duration::from_millis(100))
            .await
            .unwrap_err();
        if matches!(err, Error::NoResponders { .. }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still subscribed after drop: {err}"
        );
    }
}

/// Typed messages go over the wire as JSON and come back equal.
pub async fn typed_json(p: &Pair) {
    let mut sub = p
        .subscriber
        .subscribe(messages::ROUTER_REGISTER)
        .await
        .unwrap();
    let mut register = RegistryMessage::new("127.0.0.1", 61001, vec!["shop.hydrant.local".into()]);
    register.app = Some("app-1".into());
    register.private_instance_index = Some("0".into());
    p.publisher
        .publish_json(messages::ROUTER_REGISTER, &register)
        .unwrap();
    let m = recv(&mut sub).await;
    assert_eq!(m.json::<RegistryMessage>().unwrap(), register);
    let err = m.json::<Vec<u8>>().unwrap_err();
    assert!(err.to_string().contains(messages::ROUTER_REGISTER), "{err}");
    assert!(p.publisher.status().is_connected());
    assert!(p.subscriber.status().is_connected());
}
