//! A public firehose edge beside a micro cloud's pipeline: a second traffic controller on the
//! same doppler that serves TLS for `localhost` with a certificate from a CA of its own, as an
//! edge published with a real certificate does. Clients (`hydrant logs`, nozzles) reach it over
//! `https://` / `wss://` and must be told that CA (`--ca-file`, `ca_file`) to trust it.
//!
//! Invariant: the edge checks tokens with the micro cloud's own key, so the cloud's tokens
//! read from it exactly as from the cloud's own edge, and it stops with the shutdown token it
//! is given.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hydrant_firehose::TrafficController;
use hydrant_runtime::Role as _;
use hydrant_tls::TlsFiles;
use hydrant_tls::local::{LocalCa, Validity};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Error, MicroCloud};

/// The name the edge's certificate is issued for: clients connect to `localhost`.
const SERVER_NAME: &str = "localhost";

/// A running public edge (see the module docs).
#[derive(Debug)]
pub struct PublicEdge {
    /// The port it serves `https://` and `wss://` on (loopback).
    pub port: u16,
    /// The CA that issued its certificate (`ca.pem` in the directory it was given).
    pub ca_file: PathBuf,
    task: JoinHandle<Result<(), hydrant_firehose::Error>>,
}

impl PublicEdge {
    /// Waits up to 10 s for the edge to stop after its shutdown token fired.
    pub async fn stopped(self) {
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

impl MicroCloud {
    /// Starts a [`PublicEdge`] on this cloud's doppler: a fresh CA and its `localhost` leaf
    /// are written to `dir` (`ca.pem`, `localhost.pem`, `localhost.key`), and the edge runs
    /// until `shutdown` fires.
    ///
    /// # Errors
    /// [`Error::Certs`] when the certificates cannot be made or written, [`Error::Bind`] when
    /// no loopback port can be bound.
    pub async fn public_edge(
        &self,
        dir: &Path,
        shutdown: CancellationToken,
    ) -> Result<PublicEdge, Error> {
        let ca = LocalCa::new("platform CA")?;
        ca.write_leaf(dir, SERVER_NAME, Validity::Days(30))?;
        let files = TlsFiles {
            ca_file: dir.join("ca.pem"),
            cert_file: dir.join(format!("{SERVER_NAME}.pem")),
            key_file: dir.join(format!("{SERVER_NAME}.key")),
        };
        hydrant_tls::local::write_private(&files.ca_file, ca.pem().as_bytes())?;
        let listeners = hydrant_runtime::bind_on::<TrafficController>(|_| "127.0.0.1:0".to_owned())
            .await
            .map_err(|source| Error::Bind {
                role: TrafficController::NAME,
                source,
            })?;
        // The edge always has an `http` listener; port 0 (which nothing answers on) would only
        // come from a change to its listener table, and clients then say they cannot connect.
        let port = listeners.local_addr("http").map_or(0, |a| a.port());
        let ca_file = files.ca_file.clone();
        let task = tokio::spawn(hydrant_runtime::run::<TrafficController>(
            hydrant_firehose::Config {
                dopplers: vec![self.doppler_url.clone()],
                token_keys: Some(self.key.key_set().to_json()),
                tls: Some(files),
                ..hydrant_firehose::Config::default()
            },
            listeners,
            shutdown,
        ));
        Ok(PublicEdge {
            port,
            ca_file,
            task,
        })
    }
}
