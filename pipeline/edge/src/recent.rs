//! Recent logs and metrics in Log Cache's HTTP shape: `GET /api/v1/read/{source_id}` and
//! `GET /api/v1/meta`.
//!
//! Each doppler hosts the log cache for the sources hashed to it, but a source moves when a
//! doppler fails over, so a read asks every doppler and merges. Each doppler returns its own best
//! `limit` envelopes in the requested order; the true best `limit` are among their union, so
//! sorting the union by timestamp and cutting at `limit` gives the exact answer. A doppler that
//! is down or slower than `read_timeout_secs` is skipped and counted
//! (`trafficcontroller.upstream_errors{call=read}`); only when none answers does the read fail.
//!
//! The answer is Log Cache's JSON unless the request's `Accept` names [`PROTOBUF`]: then it is
//! one encoded v2 `EnvelopeBatch`, what Hydrant's own client asks for, so recent logs are never
//! turned into JSON only to be parsed back.
//!
//! Invariant: on the binary path recent envelopes stay bytes end to end, like the live stream:
//! the doppler answers with the encoded `ReadResponse` around the bytes it stored, this edge
//! slices the envelopes out of it (reading only their timestamps, to merge) and writes the same
//! bytes into its answer. Only the JSON answer decodes them.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::future::join_all;
use hydrant_envelope::logcache_v1::egress_client::EgressClient;
use hydrant_envelope::logcache_v1::{EnvelopeType, MetaInfo, MetaRequest, ReadRequest};
use hydrant_envelope::raw::logcache::egress_client::EgressClient as RawEgressClient;
use hydrant_envelope::v2;
use hydrant_envelope::wire::{self, EnvelopeView};
use serde_json::{Map, Value, json};

use crate::api::{ApiError, Query, Shared};

/// The media type of a binary read answer: one encoded v2 `EnvelopeBatch`.
pub(crate) const PROTOBUF: &str = "application/x-protobuf";

/// True when `Accept` asks for [`PROTOBUF`] (a client that can read both lists it first).
fn wants_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.split(';').next().is_some_and(|m| m.trim() == PROTOBUF))
}

/// Log Cache's default and largest `limit`.
const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;
/// Longest `name_filter` passed on.
const MAX_NAME_FILTER: usize = 1024;

/// Builds the upstream request from Log Cache's query parameters.
fn read_request(source_id: &str, q: &Query) -> Result<ReadRequest, ApiError> {
    let time = |key: &str| -> Result<i64, ApiError> {
        match q.get(key) {
            None | Some("") => Ok(0),
            Some(v) => v.parse::<i64>().ok().filter(|t| *t >= 0).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{key}={v:?}: must be a UNIX time in nanoseconds (a non-negative integer)"
                ))
            }),
        }
    };
    let start_time = time("start_time")?;
    let end_time = time("end_time")?;
    if end_time != 0 && end_time <= start_time {
        return Err(ApiError::bad_request(format!(
            "end_time ({end_time}) must be after start_time ({start_time}); end_time is exclusive"
        )));
    }
    let limit = match q.get("limit") {
        None | Some("") => DEFAULT_LIMIT,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "limit={v:?}: must be between 1 and {MAX_LIMIT} (default {DEFAULT_LIMIT})"
                ))
            })?,
    };
    let mut envelope_types = Vec::new();
    for v in q.all("envelope_types").flat_map(|v| v.split(',')) {
        let t = EnvelopeType::from_str_name(&v.trim().to_ascii_uppercase()).ok_or_else(|| {
            ApiError::bad_request(format!(
                "envelope_types={v:?}: use LOG, COUNTER, GAUGE, TIMER or EVENT (repeatable)"
            ))
        })?;
        if t != EnvelopeType::Any && !envelope_types.contains(&(t as i32)) {
            envelope_types.push(t as i32);
        }
    }
    let name_filter = q.get("name_filter").unwrap_or_default();
    if name_filter.len() > MAX_NAME_FILTER {
        return Err(ApiError::bad_request(format!(
            "name_filter is {} bytes; at most {MAX_NAME_FILTER}",
            name_filter.len()
        )));
    }
    Ok(ReadRequest {
        source_id: source_id.to_owned(),
        start_time,
        end_time,
        limit,
        envelope_types,
        descending: q.flag("descending")?,
        name_filter: name_filter.to_owned(),
    })
}

/// One encoded envelope of a doppler's answer, with the timestamp the merge orders by.
type Stamped = (i64, Bytes);

/// Merges per-doppler answers: order by timestamp (stable, so each doppler's own order of equal
/// timestamps survives), then keep the first `limit`.
fn merge(mut envelopes: Vec<Stamped>, descending: bool, limit: usize) -> Vec<Stamped> {
    if descending {
        envelopes.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
    } else {
        envelopes.sort_by_key(|(t, _)| *t);
    }
    envelopes.truncate(limit);
    envelopes
}

/// The envelopes of one doppler's encoded `ReadResponse`, as slices of it with their timestamps.
fn stamped(response: &Bytes) -> Result<Vec<Stamped>, String> {
    let batch = wire::read_response_batch(response).map_err(|e| e.to_string())?;
    wire::split_batch(&batch)
        .map(|envelope| {
            let envelope = envelope.map_err(|e| e.to_string())?;
            let timestamp = EnvelopeView::parse(&envelope)
                .map_err(|e| e.to_string())?
                .timestamp;
            Ok((timestamp, envelope))
        })
        .collect()
}

/// `GET /api/v1/read/{source_id}`.
pub(crate) async fn read(
    State(app): State<Arc<Shared>>,
    Path(source_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (q, claims) = app.query_and_claims(query.as_deref(), &headers).await?;
    if !claims.can_read_source(&source_id) {
        return Err(app.reject(ApiError::source_not_found(&source_id)));
    }
    let request = read_request(&source_id, &q).map_err(|e| app.reject(e))?;
    let deadline = app.read_timeout;
    let readers = app.hub.readers();
    let calls = readers.iter().map(|(_, reader)| {
        let (url, channel) = (&reader.url, &reader.channel);
        let mut client = RawEgressClient::new(channel.clone())
            .max_decoding_message_size(hydrant_envelope::MAX_MESSAGE_BYTES);
        let request = request.clone();
        async move {
            (
                url,
                tokio::time::timeout(deadline, client.read(request)).await,
            )
        }
    });
    let mut envelopes = Vec::new();
    let mut answered = 0usize;
    for (url, result) in join_all(calls).await {
        match result {
            Ok(Ok(response)) => match stamped(response.get_ref()) {
                Ok(theirs) => {
                    answered += 1;
                    envelopes.extend(theirs);
                }
                Err(e) => upstream_failed(&app, url, &format!("unreadable answer: {e}")),
            },
            Ok(Err(status)) => upstream_failed(&app, url, &status.to_string()),
            Err(_) => upstream_failed(&app, url, "timed out"),
        }
    }
    if answered == 0 {
        return Err(unavailable(&app));
    }
    let limit = usize::try_from(request.limit).unwrap_or(usize::MAX);
    let envelopes = merge(envelopes, request.descending, limit);
    app.metrics.egress_recent.add(envelopes.len() as u64);
    if wants_protobuf(&headers) {
        let body = wire::batch_of(envelopes.iter().map(|(_, e)| e.as_ref()));
        return Ok(([(axum::http::header::CONTENT_TYPE, PROTOBUF)], body).into_response());
    }
    // Every envelope passed the walker's validation, which prost accepts.
    let decoded: Vec<v2::Envelope> = envelopes
        .iter()
        .filter_map(|(_, e)| prost::Message::decode(e.clone()).ok())
        .collect();
    Ok(Json(json!({ "envelopes": hydrant_envelope::json::batch(&decoded) })).into_response())
}

fn upstream_failed(app: &Shared, url: &str, error: &str) {
    app.metrics.upstream_read_errors.inc();
    tracing::warn!(doppler = %url, %error, "doppler skipped in a recent read");
}

fn unavailable(app: &Shared) -> ApiError {
    app.reject(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "no doppler answered; the log cache is unreachable, try again shortly",
    ))
}

/// Sums one source's meta across dopplers.
fn merge_meta(into: &mut MetaInfo, from: &MetaInfo) {
    into.count += from.count;
    into.expired += from.expired;
    let oldest = [into.oldest_timestamp, from.oldest_timestamp]
        .into_iter()
        .filter(|t| *t != 0)
        .min();
    into.oldest_timestamp = oldest.unwrap_or(0);
    into.newest_timestamp = into.newest_timestamp.max(from.newest_timestamp);
}

/// `GET /api/v1/meta`: every source the token may read, with counts and time ranges.
pub(crate) async fn meta(
    State(app): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, claims) = app.query_and_claims(query.as_deref(), &headers).await?;
    let deadline = app.read_timeout;
    let readers = app.hub.readers();
    let calls = readers.iter().map(|(_, reader)| {
        let (url, channel) = (&reader.url, &reader.channel);
        let mut client = EgressClient::new(channel.clone())
            .max_decoding_message_size(hydrant_envelope::MAX_MESSAGE_BYTES);
        // Each doppler answers for itself; this edge does the merging.
        let request = MetaRequest { local_only: true };
        async move {
            (
                url,
                tokio::time::timeout(deadline, client.meta(request)).await,
            )
        }
    });
    let mut merged: HashMap<String, MetaInfo> = HashMap::new();
    let mut answered = 0usize;
    let everything = claims.can_read_firehose();
    for (url, result) in join_all(calls).await {
        match result {
            Ok(Ok(response)) => {
                answered += 1;
                for (source, info) in response.into_inner().meta {
                    if everything || claims.can_read_source(&source) {
                        merge_meta(merged.entry(source).or_default(), &info);
                    }
                }
            }
            Ok(Err(status)) => upstream_failed(&app, url, &status.to_string()),
            Err(_) => upstream_failed(&app, url, "timed out"),
        }
    }
    if answered == 0 {
        return Err(unavailable(&app));
    }
    let meta: Map<String, Value> = merged
        .into_iter()
        .map(|(source, m)| {
            // protojson: int64 as strings, lowerCamelCase names.
            let info = json!({
                "count": m.count.to_string(),
                "expired": m.expired.to_string(),
                "oldestTimestamp": m.oldest_timestamp.to_string(),
                "newestTimestamp": m.newest_timestamp.to_string(),
            });
            (source, info)
        })
        .collect();
    Ok(Json(json!({ "meta": meta })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Query {
        Query::parse(Some(s)).unwrap()
    }

    #[test]
    fn read_parameters() {
        let r = read_request(
            "web",
            &q("start_time=5&end_time=10&envelope_types=LOG&envelope_types=gauge,COUNTER&limit=7&descending=true"),
        )
        .unwrap();
        assert_eq!(
            (r.start_time, r.end_time, r.limit, r.descending),
            (5, 10, 7, true)
        );
        assert_eq!(
            r.envelope_types,
            vec![
                EnvelopeType::Log as i32,
                EnvelopeType::Gauge as i32,
                EnvelopeType::Counter as i32
            ]
        );
        let d = read_request("web", &q("")).unwrap();
        assert_eq!((d.limit, d.descending, d.start_time), (100, false, 0));
        for bad in [
            "limit=1001",
            "limit=0",
            "limit=x",
            "start_time=-1",
            "end_time=abc",
            "start_time=10&end_time=10",
            "envelope_types=LOGS",
            "descending=maybe",
        ] {
            assert!(
                read_request("web", &q(bad)).is_err(),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn merge_orders_then_limits() {
        let e = |t| (t, Bytes::new());
        let ts = |v: Vec<Stamped>| v.iter().map(|(t, _)| *t).collect::<Vec<_>>();
        let all = vec![e(5), e(1), e(9), e(3), e(7)];
        assert_eq!(ts(merge(all.clone(), false, 3)), vec![1, 3, 5]);
        assert_eq!(ts(merge(all, true, 2)), vec![9, 7]);
    }

    #[test]
    fn a_doppler_answer_is_sliced_not_decoded_and_bad_bytes_are_refused() {
        let one = wire::encode(&v2::Envelope {
            timestamp: 7,
            source_id: "web".to_owned(),
            ..v2::Envelope::default()
        });
        let answer = wire::read_response([one.as_ref()]);
        let got = stamped(&answer).unwrap();
        assert_eq!(got, vec![(7, one)]);
        // The envelope is a slice of the doppler's answer, not a copy.
        assert!(answer.as_ptr_range().contains(&got[0].1.as_ptr()));
        assert!(stamped(&Bytes::from_static(&[0x0a, 0x03, 0x0a, 0x09, 0x00])).is_err());
    }

    #[test]
    fn meta_merges_ranges() {
        let mut a = MetaInfo {
            count: 2,
            expired: 1,
            oldest_timestamp: 0,
            newest_timestamp: 10,
        };
        merge_meta(
            &mut a,
            &MetaInfo {
                count: 3,
                expired: 0,
                oldest_timestamp: 4,
                newest_timestamp: 8,
            },
        );
        assert_eq!(
            (a.count, a.expired, a.oldest_timestamp, a.newest_timestamp),
            (5, 1, 4, 10)
        );
    }
}
