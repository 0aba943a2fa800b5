//! `GET /api/v1/read/{source_id}` and `/api/v1/meta`: merged across dopplers, validated, and
//! still answering when a doppler is down.

use hydrant_auth::{Claims, Scope};
use hydrant_envelope::logcache_v1::MetaInfo;

use crate::harness::*;

fn timestamps(body: &serde_json::Value) -> Vec<i64> {
    body["envelopes"]["batch"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["timestamp"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// Two dopplers, each holding part of `web`'s history (as after a failover).
async fn two_dopplers() -> (RunningDoppler, RunningDoppler) {
    let a = RunningDoppler::start().await;
    let b = RunningDoppler::start().await;
    a.fake.cache(vec![
        log("web", 1, "a1"),
        log("web", 3, "a3"),
        counter("web", 5, "hits"),
        log("web", 7, "a7"),
        log("other", 4, "no"),
    ]);
    b.fake.cache(vec![
        log("web", 2, "b2"),
        log("web", 4, "b4"),
        gauge("web", 6),
    ]);
    (a, b)
}

#[tokio::test]
async fn reads_merge_every_doppler_then_order_and_limit() {
    let (a, b) = two_dopplers().await;
    let edge = start_edge(config(vec![a.url(), b.url()])).await;
    let t = admin_token();
    let read = |q: &'static str| {
        let t = t.clone();
        let addr = edge.http;
        async move {
            let (status, body) = http_get(addr, &format!("/api/v1/read/web{q}"), Some(&t)).await;
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            timestamps(&json_body(&body))
        }
    };
    assert_eq!(read("").await, vec![1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(read("?limit=4").await, vec![1, 2, 3, 4]);
    assert_eq!(read("?limit=3&descending=true").await, vec![7, 6, 5]);
    assert_eq!(read("?start_time=3&end_time=6").await, vec![3, 4, 5]);
    assert_eq!(read("?envelope_types=LOG").await, vec![1, 2, 3, 4, 7]);
    assert_eq!(
        read("?envelope_types=COUNTER&envelope_types=GAUGE").await,
        vec![5, 6]
    );
    // The body is Log Cache's shape with protojson envelopes.
    let (_, body) = http_get(edge.http, "/api/v1/read/web?limit=1", Some(&t)).await;
    let v = json_body(&body);
    assert_eq!(v["envelopes"]["batch"][0]["log"]["payload_text"], "a1");
    edge.stop().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn bad_parameters_get_400_with_a_message() {
    let (a, b) = two_dopplers().await;
    let edge = start_edge(config(vec![a.url(), b.url()])).await;
    let t = admin_token();
    for (q, needle) in [
        ("limit=1001", "limit"),
        ("limit=0", "limit"),
        ("start_time=yesterday", "start_time"),
        ("envelope_types=LOGZ", "envelope_types"),
        ("descending=perhaps", "descending"),
        ("start_time=9&end_time=3", "end_time"),
    ] {
        let (status, body) = http_get(edge.http, &format!("/api/v1/read/web?{q}"), Some(&t)).await;
        assert_eq!(status, 400, "{q}");
        let v = json_body(&body);
        assert_eq!(v["error"], "bad_request");
        assert!(v["message"].as_str().unwrap().contains(needle), "{q}: {v}");
    }
    let (status, _) = http_get(edge.http, "/api/v1/read/web", None).await;
    assert_eq!(status, 401);
    edge.stop().await;
}

#[tokio::test]
async fn a_down_doppler_is_skipped_and_counted() {
    let (a, b) = two_dopplers().await;
    let (_, b_addr) = b.stop().await;
    let edge = start_edge(config(vec![a.url(), format!("http://{b_addr}")])).await;
    let (status, body) = http_get(edge.http, "/api/v1/read/web", Some(&admin_token())).await;
    assert_eq!(status, 200);
    assert_eq!(timestamps(&json_body(&body)), vec![1, 3, 5, 7]);
    assert!(
        edge.metric(
            "trafficcontroller_upstream_errors_total",
            &[("call", "read")]
        )
        .await
            >= 1.0
    );
    let (a_fake, a_addr) = a.stop().await;
    drop((a_fake, a_addr));
    let (status, body) = http_get(edge.http, "/api/v1/read/web", Some(&admin_token())).await;
    assert_eq!(status, 503, "no doppler answered");
    assert_eq!(json_body(&body)["error"], "unavailable");
    edge.stop().await;
}

#[tokio::test]
async fn an_app_token_reads_its_own_source_only() {
    let (a, b) = two_dopplers().await;
    let edge = start_edge(config(vec![a.url(), b.url()])).await;
    let dev = token(Claims::new("dev").with_scope(Scope::app_read("web")));
    let (status, _) = http_get(edge.http, "/api/v1/read/web", Some(&dev)).await;
    assert_eq!(status, 200);
    let (status, body) = http_get(edge.http, "/api/v1/read/other", Some(&dev)).await;
    assert_eq!(status, 404);
    assert_eq!(json_body(&body)["error"], "not_found");
    edge.stop().await;
}

#[tokio::test]
async fn meta_merges_dopplers_and_hides_what_the_token_cannot_read() {
    let (a, b) = two_dopplers().await;
    let info = |count, oldest, newest| MetaInfo {
        count,
        expired: 1,
        oldest_timestamp: oldest,
        newest_timestamp: newest,
    };
    a.fake.set_meta("web", info(4, 1, 7));
    a.fake.set_meta("other", info(1, 4, 4));
    b.fake.set_meta("web", info(3, 2, 6));
    let edge = start_edge(config(vec![a.url(), b.url()])).await;
    let (status, body) = http_get(edge.http, "/api/v1/meta", Some(&admin_token())).await;
    assert_eq!(status, 200);
    let v = json_body(&body);
    assert_eq!(v["meta"]["web"]["count"], "7");
    assert_eq!(v["meta"]["web"]["expired"], "2");
    assert_eq!(v["meta"]["web"]["oldestTimestamp"], "1");
    assert_eq!(v["meta"]["web"]["newestTimestamp"], "7");
    assert_eq!(v["meta"]["other"]["count"], "1");
    let dev = token(Claims::new("dev").with_scope(Scope::app_read("web")));
    let (_, body) = http_get(edge.http, "/api/v1/meta", Some(&dev)).await;
    let v = json_body(&body);
    assert_eq!(v["meta"].as_object().unwrap().len(), 1, "{v}");
    assert!(v["meta"].get("web").is_some());
    edge.stop().await;
}

/// `GET path` with `Accept: accept`; the status, `Content-Type` and body.
async fn get_accepting(
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
    accept: &str,
) -> (u16, String, bytes::Bytes) {
    use http_body_util::BodyExt as _;
    let mut sender = http1(addr).await;
    let req = http::Request::get(path)
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {token}"))
        .header("accept", accept)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, content_type, body)
}

/// A client that accepts protobuf gets the same envelopes as one encoded `EnvelopeBatch`
/// (nothing turned into JSON and back); a browser's `Accept` still gets Log Cache's JSON.
#[tokio::test]
async fn protobuf_readers_get_the_batch_binary_and_browsers_json() {
    use prost::Message as _;
    let (a, b) = two_dopplers().await;
    let edge = start_edge(config(vec![a.url(), b.url()])).await;
    let t = admin_token();
    let (status, content_type, body) = get_accepting(
        edge.http,
        "/api/v1/read/web?limit=3&descending=true",
        &t,
        "application/x-protobuf, application/json;q=0.5",
    )
    .await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/x-protobuf")
    );
    let batch = hydrant_envelope::v2::EnvelopeBatch::decode(&body[..]).unwrap();
    let ts: Vec<i64> = batch.batch.iter().map(|e| e.timestamp).collect();
    assert_eq!(ts, vec![7, 6, 5]);
    let (json_status, json_type, json) = get_accepting(
        edge.http,
        "/api/v1/read/web?limit=3&descending=true",
        &t,
        "text/html,application/json;q=0.9,*/*;q=0.8",
    )
    .await;
    assert_eq!(json_status, 200);
    assert!(json_type.starts_with("application/json"), "{json_type}");
    let back = hydrant_envelope::json::read_response(&json).unwrap();
    assert_eq!(back, batch.batch, "both answers carry the same envelopes");
    edge.stop().await;
    a.stop().await;
    b.stop().await;
}
