//! The driver that feeds `Windows` from a firehose stream: batches land in the windows, gap
//! markers are counted, disconnects are recorded, a fatal error ends the loop, shutdown stops it.

#![allow(clippy::unwrap_used, reason = "test code")]

#[path = "support/envelopes.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream;
use hydrant_envelope::gap::Gap;
use hydrant_firehose_client::{Batch, Error as ClientError, StreamEvent};
use hydrant_windows::{Error, SharedWindows, Windows, WindowsConfig, drive_stream};
use support::{gauge, http};
use tokio_util::sync::CancellationToken;

fn shared() -> SharedWindows {
    Arc::new(Mutex::new(Windows::new(WindowsConfig::default()).unwrap()))
}

#[tokio::test]
async fn batches_and_gaps_reach_the_windows() {
    let windows = shared();
    let batch = Batch::from_envelopes(&[
        http("app", "0", 200, 1000),
        http("app", "0", 500, 1000),
        gauge("app", "0", &[("memory", 5.0)]),
    ]);
    let gap = Gap {
        source_id: "app".to_owned(),
        dropped: 3,
        hop: "firehose".to_owned(),
        reason: "slow_consumer".to_owned(),
        by_source: Default::default(),
    };
    let events = stream::iter(vec![
        StreamEvent::Connected,
        StreamEvent::Batch(batch.clone()),
        StreamEvent::Gap(gap),
        StreamEvent::Batch(batch),
    ]);
    drive_stream(events, Arc::clone(&windows), CancellationToken::new())
        .await
        .unwrap();
    let w = windows.lock().unwrap();
    let now = std::time::Instant::now();
    let app = w.app("app").unwrap();
    assert_eq!(app.status_classes(Duration::from_secs(10), now).total(), 4);
    assert_eq!(app.last_gap().map(|(_, n)| n), Some(3));
    let status = w.stream_status();
    assert!(status.connected);
    assert_eq!(status.batches, 2);
    assert_eq!(w.stats().lost, 3);
}

#[tokio::test]
async fn fatal_ends_the_loop_and_disconnects_are_recorded() {
    let windows = shared();
    let events = stream::iter(vec![
        StreamEvent::Connected,
        StreamEvent::Disconnected {
            reason: "reset".to_owned(),
            retry_in: Duration::from_millis(100),
        },
        StreamEvent::Connected,
        StreamEvent::Fatal(ClientError::Unauthorized),
    ]);
    let err = drive_stream(events, Arc::clone(&windows), CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Stream(_)), "{err}");
    let status = windows.lock().unwrap().stream_status();
    assert!(!status.connected);
    assert_eq!(status.disconnects, 2);
}

#[tokio::test]
async fn shutdown_stops_a_quiet_stream() {
    let windows = shared();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(drive_stream(
        stream::pending::<StreamEvent>(),
        windows,
        shutdown.clone(),
    ));
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
