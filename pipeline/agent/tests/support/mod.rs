//! The rig the agent's end-to-end tests share: a real doppler and a real agent started through
//! the role runtime on loopback ports of their own, a subscription at the doppler's v2 Egress,
//! an app log line, and the admin `/metrics` read back. Each test file states only what its
//! roles do differently (their config), so a change to how roles start is made here once.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support; not every test file uses every helper"
)]

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::Bytes;
use hydrant_envelope::raw::egress::egress_client::EgressClient;
use hydrant_envelope::v2;
use hydrant_envelope::wire;
use hydrant_runtime::Listeners;
use hydrant_testkit::scrape_metric;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A role running on loopback: where it serves, its admin address, and how to stop it.
pub struct Role {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub shutdown: CancellationToken,
}

/// Two loopback listeners: the role's data port and its admin port.
async fn bind() -> (TcpListener, TcpListener) {
    (
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
}

/// Binds the two ports, lets `config` take their addresses, and runs role `R` until the
/// returned role's `shutdown`; `port` names the data listener as the role expects it.
async fn start<R: hydrant_runtime::Role>(
    port: &'static str,
    config: impl FnOnce(SocketAddr, SocketAddr) -> R::Config,
) -> Role
where
    R::Config: Send,
{
    let (data, admin) = bind().await;
    let (addr, admin_addr) = (data.local_addr().unwrap(), admin.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(hydrant_runtime::run::<R>(
        config(addr, admin_addr),
        Listeners::from_bound(vec![(port, data), ("admin", admin)]),
        shutdown.clone(),
    ));
    Role {
        addr,
        admin: admin_addr,
        shutdown,
    }
}

/// A real doppler with `config` (its listen addresses are filled in).
pub async fn start_doppler(config: hydrant_doppler::Config) -> Role {
    start::<hydrant_doppler::Doppler>("grpc", |addr, admin| hydrant_doppler::Config {
        listen: addr.to_string(),
        admin_listen: admin.to_string(),
        ..config
    })
    .await
}

/// A real agent with `config` (its listen addresses are filled in).
pub async fn start_agent(config: hydrant_agent::Config) -> Role {
    start::<hydrant_agent::Agent>("ingress", |addr, admin| hydrant_agent::Config {
        listen: addr.to_string(),
        admin_listen: admin.to_string(),
        ..config
    })
    .await
}

/// The sum of every series of `name` on `admin`'s `/metrics` whose labels include all of
/// `labels` (0 when absent).
pub async fn metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> u64 {
    scrape_metric(admin, name, labels).await as u64
}

/// An app's log line from `source` (instance 0, `APP/PROC/WEB/0`), as an app's emitter sends it.
pub fn log(source: &str, payload: String) -> v2::Envelope {
    v2::Envelope {
        source_id: source.to_owned(),
        instance_id: "0".to_owned(),
        tags: HashMap::from([("source_type".to_owned(), "APP/PROC/WEB/0".to_owned())]),
        message: Some(v2::envelope::Message::Log(v2::Log {
            payload: payload.into_bytes().into(),
            r#type: 0,
        })),
        ..v2::Envelope::default()
    }
}

/// [`log`], encoded for a raw ingress stream.
pub fn log_bytes(source: &str, payload: String) -> Bytes {
    wire::encode(&log(source, payload))
}

/// A subscription at `doppler`'s v2 Egress to the logs of `source` (every source when empty)
/// under `shard_id`, yielding batches of encoded envelopes until the doppler ends it.
pub async fn subscribe_logs(
    doppler: SocketAddr,
    shard_id: String,
    source: String,
) -> tonic::Streaming<Bytes> {
    let mut client = EgressClient::connect(format!("http://{doppler}"))
        .await
        .unwrap()
        .max_decoding_message_size(hydrant_envelope::MAX_MESSAGE_BYTES);
    let request = v2::EgressBatchRequest {
        shard_id,
        selectors: vec![v2::Selector {
            source_id: source,
            message: Some(v2::selector::Message::Log(v2::LogSelector {})),
        }],
        ..v2::EgressBatchRequest::default()
    };
    client.batched_receiver(request).await.unwrap().into_inner()
}
