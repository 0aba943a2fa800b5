//! The fake Datadog must fail what real Datadog would refuse, or the role tests prove nothing:
//! this checks the fake's contract over real HTTP with the nozzle's own client.

#![allow(clippy::unwrap_used, reason = "test code")]

#[path = "support/fake_datadog.rs"]
mod fake_datadog;

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use fake_datadog::FakeDatadog;
use http::{HeaderName, HeaderValue};
use hydrant_nozzle_datadog::http::{HttpClient, Target};
use serde_json::json;

const KEY: &str = "fake-contract-key";

fn gzip(v: &serde_json::Value) -> Bytes {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(v.to_string().as_bytes()).unwrap();
    Bytes::from(e.finish().unwrap())
}

fn now() -> i64 {
    hydrant_envelope::now_nanos() / 1_000_000_000
}

fn good_series() -> serde_json::Value {
    json!({"series": [{"metric": "hydrant.requests", "type": 1, "interval": 10,
        "points": [{"timestamp": now(), "value": 3.0}], "tags": ["env:test", "app:web"]}]})
}

async fn post(fake: &FakeDatadog, path: &str, key: &str, encoding: &str, body: Bytes) -> u16 {
    let target = Target::parse("api_url", &fake.url()).unwrap();
    let mut client = HttpClient::new("api_url", target, None, Duration::from_secs(5)).unwrap();
    let headers = [
        (
            HeaderName::from_static("dd-api-key"),
            HeaderValue::from_str(key).unwrap(),
        ),
        (
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ),
        (
            http::header::CONTENT_ENCODING,
            HeaderValue::from_str(encoding).unwrap(),
        ),
    ];
    client.post(path, &headers, body).await.unwrap().status
}

#[tokio::test]
async fn the_fake_refuses_what_datadog_documents_as_refused() {
    let fake = FakeDatadog::start(KEY).await;
    let series = "/api/v2/series";
    assert_eq!(
        post(&fake, series, KEY, "gzip", gzip(&good_series())).await,
        202
    );
    assert_eq!(
        post(&fake, series, "wrong", "gzip", gzip(&good_series())).await,
        403
    );
    assert_eq!(
        post(&fake, series, KEY, "br", gzip(&good_series())).await,
        400
    );

    let mut bad = Vec::new();
    // Milliseconds instead of seconds.
    let mut v = good_series();
    v["series"][0]["points"][0]["timestamp"] = json!(now() * 1000);
    bad.push(v);
    // The v1 string type.
    let mut v = good_series();
    v["series"][0]["type"] = json!("count");
    bad.push(v);
    // A count without its interval.
    let mut v = good_series();
    v["series"][0].as_object_mut().unwrap().remove("interval");
    bad.push(v);
    // A tag with a space, and one without a key.
    let mut v = good_series();
    v["series"][0]["tags"] = json!(["app name:web"]);
    bad.push(v);
    let mut v = good_series();
    v["series"][0]["tags"] = json!([":web"]);
    bad.push(v);
    // An undocumented field, and v1's point pairs.
    let mut v = good_series();
    v["series"][0]["host"] = json!("h");
    bad.push(v);
    let mut v = good_series();
    v["series"][0]["points"] = json!([[now(), 1.0]]);
    bad.push(v);
    for v in bad {
        assert_eq!(post(&fake, series, KEY, "gzip", gzip(&v)).await, 400, "{v}");
    }

    // Over 512000 compressed bytes: incompressible tags.
    let tags: Vec<String> = (0..40_000)
        .map(|i| format!("t{i}:{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)))
        .collect();
    let mut v = good_series();
    v["series"][0]["tags"] = json!(tags);
    let body = gzip(&v);
    assert!(body.len() > fake_datadog::MAX_COMPRESSED);
    assert_eq!(post(&fake, series, KEY, "gzip", body).await, 413);
    // Small compressed, but 5 MiB or more once decompressed.
    let v = json!({"series": [], "pad": "x".repeat(fake_datadog::MAX_DECOMPRESSED)});
    let body = gzip(&v);
    assert!(body.len() < fake_datadog::MAX_COMPRESSED);
    assert_eq!(post(&fake, series, KEY, "gzip", body).await, 413);

    // Distribution points take deflate only.
    let dist = json!({"series": [{"metric": "hydrant.http", "type": "distribution",
        "points": [[now(), [1.0, 2.5]]], "tags": ["a:b"]}]});
    let path = "/api/v1/distribution_points";
    assert_eq!(post(&fake, path, KEY, "gzip", gzip(&dist)).await, 400);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(dist.to_string().as_bytes()).unwrap();
    let body = Bytes::from(z.finish().unwrap());
    assert_eq!(post(&fake, path, KEY, "deflate", body).await, 202);

    assert_eq!(fake.accepted(series).len(), 1);
}
