//! What the micro cloud's own tests share: waiting for a freshly opened firehose stream to
//! carry envelopes. Until the edge has subscribed to the doppler the firehose has nobody to
//! deliver to, so a test emits until one of its envelopes arrives instead of sleeping.
//!
//! Invariant: a helper fails the test, naming what it waited for, at its deadline or when the
//! stream ends or disconnects; gaps are tolerated (the stream is not being measured here).

use std::time::{Duration, Instant};

use hydrant_emitter::Emitter;
use hydrant_firehose_client::{FirehoseClient, StreamEvent};

/// Emits a log line from `source` every 200 ms until `stream` delivers an envelope of that
/// source, for at most 30 s.
pub async fn emit_until_delivered(
    emitter: &Emitter,
    stream: &mut FirehoseClient,
    source: &str,
    payload: &[u8],
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        emitter.log(source, "0", "APP", payload, false);
        emitter.flush();
        let wait = tokio::time::sleep(Duration::from_millis(200));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = &mut wait => break,
                event = stream.next() => match event {
                    Some(StreamEvent::Batch(batch)) => {
                        if batch.decode().unwrap().iter().any(|e| e.source_id == source) {
                            return;
                        }
                    }
                    Some(StreamEvent::Gap(_)) => {}
                    other => panic!("the stream was interrupted before {source} arrived: {other:?}"),
                },
            }
        }
        assert!(
            Instant::now() < deadline,
            "no envelope of {source} reached the stream in 30 s"
        );
    }
}
