//! The traffic controller's upstream: one `BatchedReceiver` subscription per doppler, kept alive
//! with reconnects, feeding the hub; and the gRPC channels the recent-logs API reads through.
//!
//! The edge subscribes once per doppler for everything, whatever the number of consumers
//! (Loggregator opened one upstream stream per consumer per doppler, an M×N mesh), and once per
//! doppler more for each firehose subscription id with a copy connected here, asking with the
//! id as `shard_id` and this edge's member id, so the dopplers split the id between the edges
//! that serve it (see `shard`). Batches arrive as encoded bytes
//! and are split and routed without a prost decode. A doppler that goes away is retried with
//! exponential backoff (from `reconnect_min_ms`, doubling, capped at `reconnect_max_ms`, with
//! jitter so edges do not reconnect in lockstep) and the backoff resets once a stream is up.
//!
//! Each subscription is a ring read (`hydrant-ring-from` metadata): the doppler streams its replay
//! ring, a position record in front of every batch (in the batch's own message), so every envelope
//! the hub queues carries its offset and consumers get cursors. A broken stream is resumed from
//! where the hub stopped (nothing lost within the doppler's window; anything beyond it arrives as
//! an exact gap). A doppler whose ring is off answers `FAILED_PRECONDITION`, and is subscribed to
//! like any v2 client instead, without positions.
//!
//! A doppler followed from the bus (see `follow`) is given up when no stream could be made
//! to it for `doppler_grace_secs`: [`subscribe`] then returns [`Ended::Unreachable`] and the
//! follower frees its slot. A configured doppler is retried for as long as the edge runs.
//!
//! With `upstream_tls` set, every doppler connection (subscription and reads) is mutual TLS:
//! the edge presents its `trafficcontroller` leaf and accepts a doppler only if its certificate
//! names `doppler`, whatever address it dialled.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hydrant_envelope::cursor::{RING_EPOCH, RING_FROM, RING_TO, RingPosition};
use hydrant_envelope::gap::{BySource, GAP_SOURCE, GAP_TOP_SOURCES, Gap};
use hydrant_envelope::raw::egress::egress_client::EgressClient;
use hydrant_envelope::v2::{self, selector};
use hydrant_runtime::Backoff;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::position::split_position;
use crate::shard::{SHARD_MEMBER, SHARD_WEIGHT, Shard};

/// HTTP/2 flow-control windows: tonic's defaults hold one stream to ~0.1 M envelopes/s.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;
/// Largest HTTP/2 DATA frame a doppler may send here (the default is 16 KiB): one write per
/// frame, and over TLS a 16 KiB frame plus its header took a full record and a 9-byte one.
const MAX_FRAME: u32 = 256 * 1024;

/// The gRPC endpoint for one doppler, with the windows, keepalive and timeouts every hop uses.
pub(crate) fn endpoint(url: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true))
}

/// The connector for mutual TLS to the dopplers, when configured.
pub(crate) fn tls(
    files: Option<&hydrant_tls::TlsFiles>,
) -> Result<Option<hydrant_tls::Connector>, hydrant_tls::Error> {
    files
        .map(|files| {
            let material = hydrant_tls::Material::load(files)?;
            hydrant_tls::ClientTls::new(material, hydrant_tls::Identity::Doppler)
        })
        .transpose()
        .map(|tls| tls.map(hydrant_tls::Connector::new))
}

/// A lazily connected channel for the log cache read API; it reconnects on its own.
pub(crate) fn read_channel(
    url: &str,
    tls: Option<&hydrant_tls::Connector>,
) -> Result<Channel, tonic::transport::Error> {
    Ok(hydrant_tls::grpc::connect_lazy(&endpoint(url)?, tls))
}

/// Everything, from every source: one selector per envelope type, each with an empty
/// `source_id` (all sources) and empty names (all counters, all gauges).
///
/// Without `shard` the `shard_id` is empty: this edge is the only subscriber of its own stream,
/// and other edges must each get everything too. With it, the stream is this edge's share of a
/// firehose subscription id that consumers on other edges may hold too: the doppler splits the
/// group among every reader asking with that id, so across edges each envelope goes out once.
pub(crate) fn firehose_request(shard: Option<&Shard>) -> v2::EgressBatchRequest {
    let all = |message| v2::Selector {
        source_id: String::new(),
        message: Some(message),
    };
    v2::EgressBatchRequest {
        shard_id: shard.map(|s| s.id.clone()).unwrap_or_default(),
        selectors: vec![
            all(selector::Message::Log(v2::LogSelector {})),
            all(selector::Message::Counter(v2::CounterSelector::default())),
            all(selector::Message::Gauge(v2::GaugeSelector::default())),
            all(selector::Message::Timer(v2::TimerSelector {})),
            all(selector::Message::Event(v2::EventSelector {})),
        ],
        ..v2::EgressBatchRequest::default()
    }
}

/// A ring read of everything (or of `shard`'s share, named by its member id so that a read
/// from an older offset gets the share this edge owned then) from `from` (`None`: the head),
/// up to `to` when bounded.
pub(crate) fn ring_request(
    shard: Option<&Shard>,
    from: Option<(u64, u64)>,
    to: Option<u64>,
) -> tonic::Request<v2::EgressBatchRequest> {
    let mut request = tonic::Request::new(firehose_request(shard));
    let md = request.metadata_mut();
    let number = |n: u64| tonic::metadata::MetadataValue::from(n);
    if let Some(shard) = shard {
        md.insert(SHARD_MEMBER, number(shard.member));
    }
    match from {
        Some((epoch, offset)) => {
            md.insert(RING_FROM, number(offset));
            md.insert(RING_EPOCH, number(epoch));
        }
        None => {
            md.insert(
                RING_FROM,
                tonic::metadata::MetadataValue::from_static("head"),
            );
        }
    }
    if let Some(to) = to {
        md.insert(RING_TO, number(to));
    }
    request
}

/// A ring read of everything from the oldest envelope the ring holds (offset 0 of whatever
/// epoch it is in; what it already evicted is reported as skipped).
fn oldest_request(shard: Option<&Shard>) -> tonic::Request<v2::EgressBatchRequest> {
    let mut request = ring_request(shard, None, None);
    request
        .metadata_mut()
        .insert(RING_FROM, tonic::metadata::MetadataValue::from(0u64));
    request
}

/// True when a doppler refused a ring read because it keeps no ring (or predates them).
pub(crate) fn no_ring(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::FailedPrecondition | tonic::Code::Unimplemented
    )
}

/// The marker for envelopes a doppler's ring no longer held when this edge read on, naming
/// the sources that lost most when the doppler said whose they were (`lost`).
pub(crate) fn ring_gap(position: &RingPosition, lost: Option<BySource>) -> Gap {
    Gap {
        source_id: GAP_SOURCE.to_owned(),
        dropped: position.skipped,
        hop: "doppler".to_owned(),
        reason: if position.restarted {
            "doppler_restarted".to_owned()
        } else {
            "slow_subscriber".to_owned()
        },
        by_source: lost
            .filter(|l| l.total() == position.skipped)
            .map(|l| BySource::top_n(l.top, l.other, GAP_TOP_SOURCES))
            .unwrap_or_default(),
    }
}

/// One source's share of `gap`, for the streams that follow that source.
fn app_gap(gap: &Gap, source: &str, dropped: u64) -> Gap {
    Gap {
        source_id: source.to_owned(),
        dropped,
        by_source: BySource {
            top: vec![(source.to_owned(), dropped)],
            other: 0,
        },
        ..gap.clone()
    }
}

/// Where a doppler's first ring read starts (later ones go on from where the hub stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// Live data from now on: a configured doppler, or one already up when the edge started
    /// following (its past belongs to consumers' resumes, not to live streams).
    Head,
    /// The oldest envelope its ring holds: a doppler that joined while the edge ran, to which
    /// agents may send before this subscription is made; nothing it took is skipped.
    Oldest,
    /// Where this edge stopped reading it before (`epoch`, next offset): a doppler dropped and
    /// announced again. Another epoch (it restarted) reads its new process from the oldest.
    At(u64, u64),
}

/// Why a subscription task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// `shutdown` was cancelled (the edge stops, or the doppler was dropped).
    Stopped,
    /// No stream could be made for longer than the grace.
    Unreachable,
}

/// How one doppler is read.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    pub(crate) tls: Option<hydrant_tls::Connector>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) metrics: Metrics,
    pub(crate) backoff: Backoff,
    /// Give up after this long without a stream; `None`: retry for ever.
    pub(crate) grace: Option<Duration>,
    /// Read only this firehose subscription's share (see `shard`); `None`: everything.
    pub(crate) shard: Option<Shard>,
}

/// Keeps a subscription to `url` (the doppler in `slot`) open until `shutdown`, publishing
/// every batch into the hub; gives up when no stream could be made within the grace.
pub(crate) async fn subscribe(
    slot: usize,
    url: String,
    start: Start,
    upstream: Upstream,
    shutdown: CancellationToken,
) -> Ended {
    let (metrics, backoff, grace) = (&upstream.metrics, upstream.backoff, upstream.grace);
    let mut attempt = 0;
    let mut scratch = Vec::new();
    // Since when no stream has been up.
    let mut down_since = tokio::time::Instant::now();
    while !shutdown.is_cancelled() {
        let result = stream_once(slot, &url, start, &upstream, &mut scratch, &shutdown).await;
        if result.is_ok() {
            // The stream was up; a fresh failure starts over from the shortest delay.
            attempt = 0;
            down_since = tokio::time::Instant::now();
        }
        // The runtime's jitter (up to a quarter off) keeps a fleet of edges from reconnecting
        // in lockstep.
        let delay = backoff.delay(attempt);
        if let Err(e) = result {
            metrics.upstream_subscribe_errors.inc();
            if let Some(grace) = grace
                && down_since.elapsed() >= grace
            {
                tracing::warn!(doppler = %url, error = %e, ?grace,
                    "doppler unreachable for longer than its grace; dropping it");
                return Ended::Unreachable;
            }
            tracing::warn!(doppler = %url, error = %e, retry_in = ?delay, "doppler subscription failed");
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => break,
        }
        attempt = attempt.saturating_add(1);
    }
    Ended::Stopped
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("subscribe: {0}")]
    Status(#[from] tonic::Status),
}

/// One connection's life. `Ok` once a stream was established, however it ended.
async fn stream_once(
    slot: usize,
    url: &str,
    start: Start,
    upstream: &Upstream,
    scratch: &mut Vec<crate::hub::Parsed>,
    shutdown: &CancellationToken,
) -> Result<(), StreamError> {
    let (tls, hub, metrics) = (upstream.tls.as_ref(), &*upstream.hub, &upstream.metrics);
    let endpoint = endpoint(url)?;
    let channel = tokio::select! {
        c = hydrant_tls::grpc::connect(&endpoint, tls) => c?,
        () = shutdown.cancelled() => return Ok(()),
    };
    let mut client =
        EgressClient::new(channel).max_decoding_message_size(hydrant_envelope::MAX_MESSAGE_BYTES);
    // Where the hub stopped, so a broken stream loses nothing still in the doppler's ring.
    let shard = upstream.shard.as_ref();
    let mut request = match (hub.identity(slot), start) {
        (Some((_, epoch)), _) => ring_request(shard, Some((epoch, hub.end(slot))), None),
        (None, Start::At(epoch, next)) => ring_request(shard, Some((epoch, next)), None),
        (None, Start::Oldest) => oldest_request(shard),
        (None, Start::Head) => ring_request(shard, None, None),
    };
    if shard.is_some() {
        // As many shares as copies here, so copies spread unevenly over edges get equal parts.
        let weight = tonic::metadata::MetadataValue::from(hub.weight());
        request.metadata_mut().insert(SHARD_WEIGHT, weight);
    }
    let ring = tokio::select! {
        r = client.batched_receiver(request) => r,
        () = shutdown.cancelled() => return Ok(()),
    };
    let (mut stream, ring) = match ring {
        Ok(r) => (r.into_inner(), true),
        Err(status) if no_ring(&status) => {
            hub.forget_position(slot);
            tracing::info!(doppler = %url, "doppler keeps no replay ring; cursors will not advance for it");
            let plain = tokio::select! {
                r = client.batched_receiver(firehose_request(shard)) => r?,
                () = shutdown.cancelled() => return Ok(()),
            };
            (plain.into_inner(), false)
        }
        Err(status) => return Err(status.into()),
    };
    metrics.doppler_connections.inc();
    hub.set_connected(slot, true);
    tracing::info!(doppler = %url, ring, "subscribed to doppler");
    let mut pending: Option<RingPosition> = None;
    let ended = loop {
        tokio::select! {
            m = stream.message() => match m {
                Ok(Some(message)) if ring => {
                    let (position, batch) = split_position(&message);
                    let (lost, batch) = hydrant_envelope::cursor::split_sources(&batch);
                    if let Some(position) = position {
                        if position.skipped > 0 {
                            let gap = ring_gap(&position, lost.clone());
                            let marker: Bytes = hydrant_envelope::wire::batch_of([&gap.encode()[..]]);
                            hub.publish(&marker, scratch);
                            // App streams do not follow the whole-stream marker: each is told
                            // its own source's share.
                            if let Some(lost) = lost.filter(|l| l.total() == position.skipped) {
                                hub.publish_per_source(&lost, |source, n| app_gap(&gap, source, n).encode());
                            }
                        }
                        hub.at_position(slot, &position);
                        pending = (position.count > 0).then_some(position);
                        if batch.is_empty() {
                            continue;
                        }
                    }
                    let at = pending.take();
                    hub.publish_at(at.as_ref().map(|p| (slot, p)), &batch, scratch);
                }
                Ok(Some(batch)) => hub.publish(&batch, scratch),
                Ok(None) => break None,
                Err(status) => break Some(status),
            },
            () = shutdown.cancelled() => break None,
        }
    };
    metrics.doppler_connections.dec();
    hub.set_connected(slot, false);
    if let Some(status) = ended {
        metrics.upstream_subscribe_errors.inc();
        tracing::warn!(doppler = %url, error = %status, "doppler stream broke; reconnecting");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_selects_every_type_from_every_source() {
        let r = firehose_request(None);
        assert!(r.shard_id.is_empty());
        let shard = Shard {
            id: "nozzle".to_owned(),
            member: 42,
        };
        let ring = ring_request(Some(&shard), None, None);
        assert_eq!(ring.get_ref().shard_id, "nozzle");
        assert_eq!(
            ring.metadata()
                .get(SHARD_MEMBER)
                .and_then(|v| v.to_str().ok()),
            Some("42")
        );
        assert_eq!(r.selectors.len(), 5);
        assert!(r.selectors.iter().all(|s| s.source_id.is_empty()));
    }
}
