//! The public edge over TLS (`[tls]`): a WebSocket consumer streams over `wss://` and a reader
//! gets `https://` answers, trusting the CA that issued the edge's certificate; a client that
//! trusts another CA, or speaks plain HTTP to the TLS port, gets nothing. Tokens still decide.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::BodyExt as _;
use hydrant_tls::local::{LocalCa, Validity};
use hydrant_tls::{TlsFiles, public_client};
use prost::Message as _;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::harness::*;

/// A certificate for `localhost` from `ca`, written into `dir`.
fn edge_files(ca: &LocalCa, dir: &std::path::Path) -> TlsFiles {
    ca.write_leaf(dir, "localhost", Validity::Days(30)).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    TlsFiles {
        ca_file: dir.join("ca.pem"),
        cert_file: dir.join("localhost.pem"),
        key_file: dir.join("localhost.key"),
    }
}

/// A TLS connection to `addr`, checking the server is `localhost` against `bundle`.
async fn tls(addr: SocketAddr, bundle: &std::path::Path) -> std::io::Result<TlsStream<TcpStream>> {
    let config = public_client(Some(bundle)).unwrap();
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::clone(&config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

#[tokio::test]
async fn the_public_edge_serves_wss_and_https_to_clients_that_trust_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::new("edge test CA").unwrap();
    let files = edge_files(&ca, dir.path());
    let doppler = RunningDoppler::start().await;
    let edge = start_edge_connected(hydrant_firehose::Config {
        tls: Some(files.clone()),
        ..config(vec![doppler.url()])
    })
    .await;

    // wss://: the upgrade with a token, then data.
    let stream = tls(edge.http, &files.ca_file).await.unwrap();
    let mut request = format!("wss://localhost:{}/firehose/tls", edge.http.port())
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", admin_token()).parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    doppler
        .fake
        .push_envelopes(&[log("app-1", 1, "over TLS")])
        .await;
    loop {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
            .await
            .expect("a frame in time");
        match msg {
            Some(Ok(Message::Binary(frame))) => {
                let batch = hydrant_envelope::v2::EnvelopeBatch::decode(&frame[..]).unwrap();
                assert_eq!(batch.batch.len(), 1);
                break;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    // https://: a plain read, and a refusal without a token, as on plain HTTP.
    for (token, expected) in [(Some(admin_token()), 200), (None, 401)] {
        let stream = tls(edge.http, &files.ca_file).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut req = http::Request::get("/api/v1/meta").header("host", "localhost");
        if let Some(t) = &token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = sender
            .send_request(req.body(http_body_util::Empty::<Bytes>::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), expected);
        let _ = resp.into_body().collect().await;
    }

    // A client trusting another CA refuses the edge; plain HTTP to the TLS port gets no answer.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(
        other.path().join("ca.pem"),
        LocalCa::new("another CA").unwrap().pem(),
    )
    .unwrap();
    assert!(tls(edge.http, &other.path().join("ca.pem")).await.is_err());
    assert!(
        edge.ws("/firehose/plain", Some(&admin_token()))
            .await
            .is_err()
    );
    edge.stop().await;
}
