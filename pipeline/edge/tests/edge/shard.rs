//! One firehose subscription id served by two edges (behind one name, as in Cloud Foundry):
//! real dopplers split the id's shard group among the edges' reads, so the copies connected to
//! different edges receive every envelope exactly once between them, about half each; a copy
//! left alone receives everything; a copy that comes back with its cursor is replayed only
//! what was its own, never what the other copy was given meanwhile.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use hydrant_envelope::cursor::POSITION_FIELD;
use hydrant_envelope::gap::Gap;
use hydrant_envelope::v2;
use hydrant_envelope::wire::{EnvelopeView, Fields, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

/// `n` log lines tagged `phase`, from `sources` sources, in batches of 50 alternating between
/// the two dopplers by source (one source always lands on one doppler, as the agents' hash
/// does). Returns every `(source, timestamp)` sent.
async fn send(
    dopplers: [&RealDoppler; 2],
    phase: i64,
    sources: usize,
    n: usize,
) -> HashSet<(String, i64)> {
    let mut sent = HashSet::new();
    let per_source = n / sources;
    for s in 0..sources {
        let source = format!("app-{s}");
        let lines: Vec<v2::Envelope> = (0..per_source as i64)
            .map(|i| log(&source, phase * 1_000_000 + i, &format!("line {i}")))
            .collect();
        for chunk in lines.chunks(50) {
            dopplers[s % 2].send(chunk.to_vec()).await;
        }
        sent.extend(lines.iter().map(|e| (e.source_id.clone(), e.timestamp)));
    }
    sent
}

/// What a copy has read so far, and the cursor of its last frame.
#[derive(Debug, Default)]
struct Copy {
    got: Vec<(String, i64)>,
    gaps: Vec<Gap>,
    cursor: Option<String>,
}

impl Copy {
    fn take(&mut self, frame: &Bytes) {
        for field in Fields::new(frame) {
            match field.unwrap() {
                (1, Value::Len(bytes)) => {
                    let view = EnvelopeView::parse(bytes).unwrap();
                    match Gap::from_view(&view) {
                        Some(gap) => self.gaps.push(gap),
                        None => self.got.push((view.source_id.to_owned(), view.timestamp)),
                    }
                }
                (POSITION_FIELD, Value::Len(bytes)) => {
                    self.cursor = Some(String::from_utf8(bytes.to_vec()).unwrap());
                }
                other => panic!("unexpected field {other:?}"),
            }
        }
    }

    fn of_phase(&self, phase: i64) -> Vec<(String, i64)> {
        self.got
            .iter()
            .filter(|(_, ts)| ts / 1_000_000 == phase)
            .cloned()
            .collect()
    }
}

/// Reads every copy until together they hold `want` envelopes of `phase`, then a little longer
/// (anything sent twice would arrive by then).
async fn read_all(copies: &mut [(&mut Ws, &mut Copy)], phase: i64, want: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut settle: Option<tokio::time::Instant> = None;
    loop {
        let total: usize = copies.iter().map(|(_, c)| c.of_phase(phase).len()).sum();
        if total >= want && settle.is_none() {
            settle = Some(tokio::time::Instant::now() + Duration::from_millis(500));
        }
        let until = settle.unwrap_or(deadline).min(deadline);
        if tokio::time::Instant::now() >= until {
            assert!(
                settle.is_some(),
                "timed out with {total} of {want} envelopes of phase {phase}"
            );
            return;
        }
        // Whichever copy has a frame first.
        let next = futures_util::future::select_all(
            copies
                .iter_mut()
                .enumerate()
                .map(|(i, (ws, _))| Box::pin(async move { (i, ws.next().await) })),
        );
        let Ok(((i, msg), _, _)) = tokio::time::timeout_at(until, next).await else {
            continue;
        };
        match msg {
            Some(Ok(Message::Binary(b))) => copies[i].1.take(&b),
            Some(Ok(_)) => {}
            other => panic!("copy {i}'s stream ended: {other:?}"),
        }
    }
}

/// Asserts the copies got `sent` exactly once between them (none twice, none missing).
fn exactly_once(sent: &HashSet<(String, i64)>, phase: i64, copies: &[&Copy]) {
    let all: Vec<(String, i64)> = copies.iter().flat_map(|c| c.of_phase(phase)).collect();
    let unique: HashSet<(String, i64)> = all.iter().cloned().collect();
    assert_eq!(
        all.len(),
        unique.len(),
        "phase {phase}: {} envelopes delivered more than once",
        all.len() - unique.len()
    );
    let missing = sent.difference(&unique).count();
    assert_eq!(
        missing, 0,
        "phase {phase}: {missing} envelopes never delivered"
    );
    assert_eq!(unique.len(), sent.len(), "phase {phase}: nothing extra");
}

const ID: &str = "/firehose/nozzle-group";

/// Two dopplers with their own ids and two edges, each reading both.
async fn two_of_each() -> ([RealDoppler; 2], Edge, Edge) {
    let (d1, d2) = (
        RealDoppler::named("doppler-1").await,
        RealDoppler::named("doppler-2").await,
    );
    let edge1 = start_edge(config(vec![d1.url(), d2.url()])).await;
    let edge2 = start_edge(config(vec![d1.url(), d2.url()])).await;
    edge1.wait_connected(2.0).await;
    edge2.wait_connected(2.0).await;
    ([d1, d2], edge1, edge2)
}

/// Waits until each doppler serves `n` egress streams (each edge reads each doppler once for
/// everything and once more while it holds a share of the group).
async fn wait_streams(what: &str, [d1, d2]: [&RealDoppler; 2], n: f64) {
    wait_for(what, 10, || async {
        d1.streams().await == n && d2.streams().await == n
    })
    .await;
}

#[tokio::test]
async fn copies_of_one_subscription_on_two_edges_get_each_envelope_once_and_a_lone_copy_gets_all() {
    let ([d1, d2], edge1, edge2) = two_of_each().await;
    let token = admin_token();
    let mut ws1 = edge1.ws(ID, Some(&token)).await.unwrap();
    let mut ws2 = edge2.ws(ID, Some(&token)).await.unwrap();
    // Each edge reads each doppler once for everything and once for the group's share.
    wait_streams("both edges to read the group's share", [&d1, &d2], 4.0).await;
    let (mut c1, mut c2) = (Copy::default(), Copy::default());

    const N: usize = 3000;
    let sent = send([&d1, &d2], 1, 6, N).await;
    read_all(&mut [(&mut ws1, &mut c1), (&mut ws2, &mut c2)], 1, N).await;
    exactly_once(&sent, 1, &[&c1, &c2]);
    let (n1, n2) = (c1.of_phase(1).len(), c2.of_phase(1).len());
    eprintln!("split of {N} envelopes over two edges: {n1} on edge 1, {n2} on edge 2");
    assert!(
        n1 >= N * 3 / 10 && n2 >= N * 3 / 10,
        "the split is roughly fair: {n1} on edge 1, {n2} on edge 2"
    );
    // Every source reached both copies' shares, not one source per copy.
    let sources = |c: &Copy| {
        c.of_phase(1)
            .into_iter()
            .map(|(s, _)| s)
            .collect::<HashSet<_>>()
    };
    assert_eq!((sources(&c1).len(), sources(&c2).len()), (6, 6));
    assert!(c1.gaps.is_empty() && c2.gaps.is_empty(), "nothing lost");

    // The copy on edge 2 goes; once its edge stops reading the share, copy 1 gets everything.
    ws2.close(None).await.unwrap();
    drop(ws2);
    wait_streams("edge 2 to stop reading the group's share", [&d1, &d2], 3.0).await;
    let sent = send([&d1, &d2], 2, 6, N).await;
    read_all(&mut [(&mut ws1, &mut c1)], 2, N).await;
    exactly_once(&sent, 2, &[&c1]);

    // A second copy on the same edge as the first: the edge splits its share between them.
    let mut ws3 = edge1.ws(ID, Some(&token)).await.unwrap();
    let mut c3 = Copy::default();
    wait_for("edge 1 to count both copies", 10, || async {
        edge1.metric("trafficcontroller_firehoses", &[]).await == 2.0
    })
    .await;
    let sent = send([&d1, &d2], 3, 6, N).await;
    read_all(&mut [(&mut ws1, &mut c1), (&mut ws3, &mut c3)], 3, N).await;
    exactly_once(&sent, 3, &[&c1, &c3]);
    assert!(!c3.of_phase(3).is_empty());

    // Two copies on edge 1, one on edge 2: each edge takes as many shares as it has copies, so
    // each copy gets about a third (without weights edge 2's copy would get half).
    let mut ws4 = edge2.ws(ID, Some(&token)).await.unwrap();
    let mut c4 = Copy::default();
    wait_streams("edge 2 to read the group's share again", [&d1, &d2], 4.0).await;
    const M: usize = 6000;
    let sent = send([&d1, &d2], 4, 6, M).await;
    read_all(
        &mut [
            (&mut ws1, &mut c1),
            (&mut ws3, &mut c3),
            (&mut ws4, &mut c4),
        ],
        4,
        M,
    )
    .await;
    exactly_once(&sent, 4, &[&c1, &c3, &c4]);
    let shares = [&c1, &c3, &c4].map(|c| c.of_phase(4).len());
    eprintln!("split of {M} envelopes over three copies (two on edge 1): {shares:?}");
    assert!(
        shares.iter().all(|n| (M / 4..=M * 42 / 100).contains(n)),
        "each copy gets about a third: {shares:?}"
    );

    edge1.stop().await;
    edge2.stop().await;
    d1.stop().await;
    d2.stop().await;
}

#[tokio::test]
async fn a_copy_that_comes_back_with_its_cursor_is_replayed_its_own_share_not_the_others() {
    let ([d1, d2], edge1, edge2) = two_of_each().await;
    let token = admin_token();
    let mut ws1 = edge1.ws(ID, Some(&token)).await.unwrap();
    let mut ws2 = edge2
        .ws(&format!("{ID}?cursor="), Some(&token))
        .await
        .unwrap();
    wait_streams("both edges to read the group's share", [&d1, &d2], 4.0).await;
    let (mut c1, mut c2) = (Copy::default(), Copy::default());
    const N: usize = 1200;
    let first = send([&d1, &d2], 1, 4, N).await;
    read_all(&mut [(&mut ws1, &mut c1), (&mut ws2, &mut c2)], 1, N).await;
    exactly_once(&first, 1, &[&c1, &c2]);
    let cursor = c2.cursor.clone().expect("frames carry the cursor");

    // Copy 2 is away while a second run goes by: copy 1 is given all of it.
    drop(ws2);
    wait_streams("edge 2 to stop reading the group's share", [&d1, &d2], 3.0).await;
    let second = send([&d1, &d2], 2, 4, N).await;
    read_all(&mut [(&mut ws1, &mut c1)], 2, N).await;
    exactly_once(&second, 2, &[&c1]);

    // Back on its edge with its cursor: nothing of the second run is sent to it again, and the
    // third run is split as the first was.
    let mut ws2 = edge2
        .ws(&format!("{ID}?cursor={cursor}"), Some(&token))
        .await
        .unwrap();
    let mut back = Copy::default();
    wait_streams("edge 2 to read the group's share again", [&d1, &d2], 4.0).await;
    let third = send([&d1, &d2], 3, 4, N).await;
    read_all(&mut [(&mut ws1, &mut c1), (&mut ws2, &mut back)], 3, N).await;
    assert_eq!(
        back.of_phase(2).len(),
        0,
        "the share copy 1 was given while copy 2 was away is not replayed to copy 2"
    );
    assert!(back.of_phase(1).is_empty(), "nothing it had is sent again");
    exactly_once(&third, 3, &[&c1, &back]);
    assert!(back.gaps.is_empty() && c1.gaps.is_empty());

    edge1.stop().await;
    edge2.stop().await;
    d1.stop().await;
    d2.stop().await;
}
