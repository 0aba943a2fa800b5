//! Selector and shard semantics, exactly as a Loggregator subscriber expects them.

use std::collections::HashSet;

use hydrant_envelope::v2::{self, selector::Message as Sel};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_client_round_trips_envelopes_unchanged() {
    let d = start(config()).await;
    let mut sub = d.subscribe("", vec![logs_of("app")]).await;
    let sender = d.sender().await;
    let sent: Vec<_> = (0..250)
        .map(|i| log("app", 1000 + i, &format!("line {i}")))
        .collect();
    for chunk in sent.chunks(100) {
        sender.send(chunk.to_vec()).await;
    }
    let got = sub.take(sent.len()).await;
    assert_eq!(got, sent, "envelopes arrive whole and in order");
    sender.close().await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_single_envelope_receiver_gets_the_same_stream() {
    use futures_util::StreamExt;
    let d = start(config()).await;
    let mut stream = d
        .egress()
        .await
        .receiver(v2::EgressRequest {
            selectors: vec![logs_of("app")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let sender = d.sender().await;
    let sent: Vec<_> = (0..5).map(|i| log("app", i, &format!("{i}"))).collect();
    sender.send(sent.clone()).await;
    for want in &sent {
        let got = tokio::time::timeout(DEADLINE, stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(&got, want);
    }
    d.stop().await;
}

/// Every subscription of the matrix, with the envelopes it must receive before its fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selector_matrix() {
    let d = start(config()).await;
    let counter_sel = |name: &str| {
        Sel::Counter(v2::CounterSelector {
            name: name.to_owned(),
        })
    };
    let gauge_sel = |names: &[&str]| {
        Sel::Gauge(v2::GaugeSelector {
            names: names.iter().map(|n| (*n).to_owned()).collect(),
        })
    };
    let mut app_a_logs = d.subscribe("", vec![logs_of("app-a")]).await;
    let mut all_logs = d.subscribe("", vec![logs_of("")]).await;
    let mut twice = d
        .subscribe("", vec![logs_of("app-a"), logs_of("app-a")])
        .await;
    let mut requests = d
        .subscribe("", vec![selector("", counter_sel("requests"))])
        .await;
    let mut all_counters = d.subscribe("", vec![selector("", counter_sel(""))]).await;
    let mut gauge_ab = d
        .subscribe("", vec![selector("", gauge_sel(&["b", "a"]))])
        .await;
    let mut all_gauges = d.subscribe("", vec![selector("", gauge_sel(&[]))]).await;
    let mut timers_events = d
        .subscribe(
            "",
            vec![
                selector("app-b", Sel::Timer(v2::TimerSelector {})),
                selector("app-b", Sel::Event(v2::EventSelector {})),
            ],
        )
        .await;
    let mut no_selectors = d.subscribe("", vec![]).await;
    let mut untyped = d
        .subscribe(
            "",
            vec![v2::Selector {
                source_id: "app-a".to_owned(),
                message: None,
            }],
        )
        .await;

    let timer = envelope(
        "app-b",
        1,
        v2::envelope::Message::Timer(v2::Timer {
            name: "http".to_owned(),
            start: 1,
            stop: 2,
        }),
    );
    let event = envelope(
        "app-b",
        1,
        v2::envelope::Message::Event(v2::Event {
            title: "crash".to_owned(),
            body: "exit 1".to_owned(),
        }),
    );
    let no_message = v2::Envelope {
        source_id: "app-a".to_owned(),
        ..Default::default()
    };
    let matrix = vec![
        log("app-a", 1, "a1"),
        log("app-b", 2, "b1"),
        counter("app-a", "requests"),
        counter("app-a", "requests2"),
        counter("app-b", "request"),
        gauge("app-a", &["a"]),
        gauge("app-a", &["a", "b"]),
        gauge("app-b", &["a", "b", "c"]),
        timer.clone(),
        event.clone(),
        timer_at("app-a"),
        no_message,
    ];
    // One envelope per subscription kind, tagged, sent last: a subscriber has seen everything
    // routed to it once its fence arrives (one ordered stream, one router).
    let fence = |mut e: v2::Envelope| {
        e.tags.insert("fence".to_owned(), "1".to_owned());
        e
    };
    let fences = vec![
        fence(log("app-a", 9, "fence")),
        fence(counter("app-a", "requests")),
        fence(gauge("app-a", &["a", "b"])),
        fence(timer.clone()),
    ];
    let sender = d.sender().await;
    sender.send(matrix).await;
    sender.send(fences).await;

    async fn before_fence(sub: &mut Subscriber) -> Vec<v2::Envelope> {
        let mut out = Vec::new();
        loop {
            let e = sub.next().await;
            if e.tags.contains_key("fence") {
                return out;
            }
            out.push(e);
        }
    }
    let describe = |es: &[v2::Envelope]| -> Vec<String> {
        es.iter()
            .map(|e| match &e.message {
                Some(v2::envelope::Message::Log(_)) => format!("log {}", line(e)),
                Some(v2::envelope::Message::Counter(c)) => format!("counter {}", c.name),
                Some(v2::envelope::Message::Gauge(g)) => {
                    let mut names: Vec<_> = g.metrics.keys().cloned().collect();
                    names.sort();
                    format!("gauge {}", names.join(","))
                }
                Some(v2::envelope::Message::Timer(t)) => {
                    format!("timer {} {}", e.source_id, t.name)
                }
                Some(v2::envelope::Message::Event(ev)) => format!("event {}", ev.title),
                None => "none".to_owned(),
            })
            .collect()
    };

    assert_eq!(describe(&before_fence(&mut app_a_logs).await), ["log a1"]);
    assert_eq!(
        describe(&before_fence(&mut all_logs).await),
        ["log a1", "log b1"]
    );
    // Two identical selectors are two subscriptions: every match arrives twice, fence included.
    assert_eq!(
        describe(&before_fence(&mut twice).await),
        ["log a1", "log a1"]
    );
    assert!(twice.next().await.tags.contains_key("fence"));
    assert_eq!(
        describe(&before_fence(&mut requests).await),
        ["counter requests"]
    );
    assert_eq!(
        describe(&before_fence(&mut all_counters).await),
        ["counter requests", "counter requests2", "counter request"]
    );
    // Exact key set: {a,b} only, not {a} and not {a,b,c}.
    assert_eq!(describe(&before_fence(&mut gauge_ab).await), ["gauge a,b"]);
    assert_eq!(
        describe(&before_fence(&mut all_gauges).await),
        ["gauge a", "gauge a,b", "gauge a,b,c"]
    );
    assert_eq!(
        describe(&before_fence(&mut timers_events).await),
        ["timer app-b http", "event crash"]
    );

    // Everything was routed by the time the fences arrived (the router fills every queue for
    // a batch before the next), so anything meant for these would already be waiting.
    no_selectors.assert_quiet(300).await;
    untyped.assert_quiet(300).await;
    // And the doppler agrees: it wrote exactly what the subscribers above read.
    // Per subscription above, its matches plus its fence (two each for `twice`).
    let delivered = 2 + 3 + 4 + 2 + 4 + 2 + 4 + 3;
    let egress = d
        .wait_metric("doppler_egress_total", &[], |v| v >= delivered as f64)
        .await;
    assert_eq!(egress, delivered as f64);
    sender.close().await;
    d.stop().await;
}

fn timer_at(source: &str) -> v2::Envelope {
    envelope(
        source,
        1,
        v2::envelope::Message::Timer(v2::Timer {
            name: "other-source".to_owned(),
            start: 1,
            stop: 2,
        }),
    )
}

async fn ids(
    sub: &mut Subscriber,
    until_total: usize,
    other: &mut Subscriber,
) -> (Vec<i64>, Vec<i64>) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    while a.len() + b.len() < until_total {
        tokio::select! {
            e = sub.next() => a.push(e.timestamp),
            e = other.next() => b.push(e.timestamp),
        }
    }
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_group_splits_the_stream_and_broadcast_copies_it() {
    let d = start(config()).await;
    let mut shard_x = d.subscribe("nozzle", vec![logs_of("")]).await;
    let mut shard_y = d.subscribe("nozzle", vec![logs_of("")]).await;
    let mut copy_1 = d.subscribe("", vec![logs_of("")]).await;
    let mut copy_2 = d.subscribe("", vec![logs_of("")]).await;
    // Same shard id, different selector: not in the group, gets its own copy.
    let mut other_selector = d.subscribe("nozzle", vec![logs_of("app-0")]).await;

    let sender = d.sender().await;
    let n = 1000;
    let all: Vec<_> = (0..n)
        .map(|i| log(&format!("app-{}", i % 7), i, "x"))
        .collect();
    for chunk in all.chunks(100) {
        sender.send(chunk.to_vec()).await;
    }

    let (x, y) = ids(&mut shard_x, n as usize, &mut shard_y).await;
    assert!(
        (400..=600).contains(&x.len()),
        "roughly half: {} / {}",
        x.len(),
        y.len()
    );
    let union: HashSet<i64> = x.iter().chain(&y).copied().collect();
    assert_eq!(union.len(), n as usize, "together exactly all, none twice");

    for copy in [&mut copy_1, &mut copy_2] {
        let got: Vec<i64> = copy
            .take(n as usize)
            .await
            .iter()
            .map(|e| e.timestamp)
            .collect();
        assert_eq!(got, (0..n).collect::<Vec<_>>());
    }
    let app0 = other_selector.take((n as usize).div_ceil(7)).await;
    assert!(app0.iter().all(|e| e.source_id == "app-0"));

    // Nothing beyond the n each: the group members got no duplicates later either.
    shard_x.assert_quiet(200).await;
    shard_y.assert_quiet(200).await;
    sender.close().await;
    d.stop().await;
}
