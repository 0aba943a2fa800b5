//! The log cache behind `logs --recent`: Log Cache's `Read` and `Meta` semantics over gRPC.

use hydrant_envelope::logcache_v1::egress_client::EgressClient;
use hydrant_envelope::logcache_v1::{EnvelopeType, MetaInfo, MetaRequest, ReadRequest};
use hydrant_envelope::v2;

use crate::support::*;

/// What the log cache's `Meta` call says it holds, by source.
async fn meta(
    client: &mut EgressClient<tonic::transport::Channel>,
) -> std::collections::HashMap<String, MetaInfo> {
    client
        .meta(MetaRequest::default())
        .await
        .unwrap()
        .into_inner()
        .meta
}

/// 300 envelopes for "app" at known past timestamps: logs, plus a gauge every 10th.
async fn seeded() -> (Doppler, i64) {
    let d = start(config()).await;
    let base = hydrant_envelope::now_nanos() - 3_600_000_000_000;
    let sender = d.sender().await;
    for chunk in (0..300i64).collect::<Vec<_>>().chunks(100) {
        let batch = chunk
            .iter()
            .map(|&i| {
                let mut e = if i % 10 == 0 {
                    gauge("app", &["cpu"])
                } else {
                    log("app", 0, &format!("{i}"))
                };
                e.timestamp = base + i;
                e
            })
            .collect();
        sender.send(batch).await;
    }
    sender.send(vec![log("other", base, "elsewhere")]).await;
    sender.close().await;
    // The cache fills off the routing path; wait until it holds everything.
    let mut client = d.logcache().await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let meta = meta(&mut client).await;
        if meta.get("app").map(|m| m.count) == Some(300) && meta.contains_key("other") {
            let app = &meta["app"];
            assert_eq!(
                (app.oldest_timestamp, app.newest_timestamp),
                (base, base + 299)
            );
            assert_eq!(app.expired, 0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cache never filled: {meta:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    (d, base)
}

fn offsets(batch: Option<v2::EnvelopeBatch>, base: i64) -> Vec<i64> {
    batch
        .unwrap_or_default()
        .batch
        .iter()
        .map(|e| e.timestamp - base)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_follows_log_cache_semantics() {
    let (d, base) = seeded().await;
    let mut client = d.logcache().await;
    let read = |r: ReadRequest| {
        let mut client = client.clone();
        async move { client.read(r).await }
    };
    // The reads that must succeed: their response.
    let ok = |r: ReadRequest| {
        let response = read(r);
        async move { response.await.unwrap().into_inner() }
    };
    let app = |f: &dyn Fn(&mut ReadRequest)| {
        let mut r = ReadRequest {
            source_id: "app".to_owned(),
            ..Default::default()
        };
        f(&mut r);
        r
    };

    // Defaults: from the oldest, until now, limit 100, ascending.
    let got = offsets(ok(app(&|_| {})).await.envelopes, base);
    assert_eq!(got, (0..100).collect::<Vec<_>>());

    // Descending counts the limit from the newest end.
    let got = ok(app(&|r| {
        r.limit = 5;
        r.descending = true;
    }))
    .await;
    assert_eq!(offsets(got.envelopes, base), [299, 298, 297, 296, 295]);

    // start inclusive, end exclusive.
    let got = ok(app(&|r| {
        r.start_time = base + 10;
        r.end_time = base + 13;
    }))
    .await;
    assert_eq!(offsets(got.envelopes, base), [10, 11, 12]);

    // Type filter, and the envelopes come back whole.
    let got = ok(app(&|r| {
        r.envelope_types = vec![EnvelopeType::Gauge as i32];
        r.limit = 1000;
    }))
    .await;
    let gauges = got.envelopes.unwrap().batch;
    assert_eq!(gauges.len(), 30);
    let mut want = gauge("app", &["cpu"]);
    want.timestamp = base;
    assert_eq!(gauges[0], want);

    // ANY is every type.
    let got = ok(app(&|r| {
        r.envelope_types = vec![EnvelopeType::Any as i32];
        r.limit = 1000;
    }))
    .await;
    assert_eq!(got.envelopes.unwrap().batch.len(), 300);

    // Unknown source: empty, not an error.
    let got = ok(ReadRequest {
        source_id: "nobody".to_owned(),
        ..Default::default()
    })
    .await;
    assert!(offsets(got.envelopes, base).is_empty());

    // Refusals are clear and counted.
    let err = read(app(&|r| r.limit = 1001)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "limit (1001) must be 1000 or less");
    let err = read(app(&|r| {
        r.start_time = base + 10;
        r.end_time = base;
    }))
    .await
    .unwrap_err();
    assert!(err.message().contains("start_time"), "{}", err.message());
    let err = read(app(&|r| r.envelope_types = vec![42]))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("envelope_types"),
        "{}",
        err.message()
    );
    let err = read(app(&|r| r.name_filter = "cpu.*".to_owned()))
        .await
        .unwrap_err();
    assert!(err.message().contains("name_filter"), "{}", err.message());
    assert_eq!(d.metric("logcache_rejected_reads_total", &[]).await, 4.0);
    assert_eq!(d.metric("logcache_store_size", &[]).await, 301.0);
    assert_eq!(d.metric("logcache_sources", &[]).await, 2.0);
    drop(client.clone());
    client = d.logcache().await;
    drop(client);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_keeps_only_the_newest_per_source_and_says_so() {
    let d = start(hydrant_doppler::Config {
        logcache: hydrant_logcache::StoreConfig {
            max_per_source: 50,
            ..Default::default()
        },
        ..config()
    })
    .await;
    let sender = d.sender().await;
    sender
        .send((0..120).map(|i| log("app", 1_000 + i, "x")).collect())
        .await;
    sender.close().await;
    let mut client = d.logcache().await;
    d.wait_metric("logcache_ingress_total", &[], |v| v >= 120.0)
        .await;
    let meta = meta(&mut client).await;
    let app = &meta["app"];
    assert_eq!((app.count, app.expired), (50, 70));
    assert_eq!((app.oldest_timestamp, app.newest_timestamp), (1_070, 1_119));
    assert_eq!(
        d.metric("logcache_expired_total", &["reason=\"max_per_source\""])
            .await,
        70.0
    );
    d.stop().await;
}
