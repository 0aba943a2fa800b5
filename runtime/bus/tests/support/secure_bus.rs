//! The authenticated bus as tests meet it: a CA, a leaf for each control-plane identity, one
//! executor leaf per cell (`e1`, `e2`) in its own directory as on its own host, a leaf from an
//! unrelated CA, and a real `nats-server` running the config `hydrant_bus::nats_config` writes.
//!
//! Shared by the bus crate's permission tests and the health manager's forged-report tests,
//! which include it by path next to `nats_server.rs`. Invariant: every party connects with its
//! own certificate, so what the server refuses is what production refuses.

use std::path::{Path, PathBuf};

use hydrant_bus::nats_config::{self, ServerTls};
use hydrant_bus::{Bus, Config, TlsFiles};
use hydrant_emitter::Registry;
use hydrant_tls::Identity;
use hydrant_tls::issue::{self, CertDir, LeafSpec};

use super::nats_server::NatsServer;

/// The cells every [`SecureBus`] issues leaves for and names in the server's config.
pub const CELLS: [&str; 2] = ["e1", "e2"];

/// A running authenticated bus and the certificates of everyone who may talk on it.
pub struct SecureBus {
    pub tmp: tempfile::TempDir,
    pub certs: CertDir,
    pub cells: PathBuf,
    pub other_ca: CertDir,
    pub server: NatsServer,
}

impl SecureBus {
    /// Issues the certificates and starts the server.
    pub fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
        let certs = issue::ensure(
            &tmp.path().join("certs"),
            &[
                Identity::CloudController,
                Identity::HealthManager,
                Identity::Router,
                Identity::Agent,
                Identity::Doppler,
                Identity::TrafficController,
                Identity::Nozzle,
                Identity::Nats,
            ],
            &names,
        )
        .unwrap();
        let cells = tmp.path().join("cells");
        for cell in CELLS {
            issue_cell(&certs, &cells, cell);
        }
        let other_ca =
            issue::ensure(&tmp.path().join("other"), &[Identity::CloudController], &[]).unwrap();
        let server = NatsServer::start_with_config(tmp.path(), |port| {
            nats_config::server_config(
                &format!("127.0.0.1:{port}"),
                ServerTls {
                    ca_file: &certs.ca_file(),
                    cert_file: &certs.cert_file(Identity::Nats),
                    key_file: &certs.key_file(Identity::Nats),
                },
                &CELLS.map(str::to_owned),
            )
            .unwrap()
        });
        Self {
            tmp,
            certs,
            cells,
            other_ca,
            server,
        }
    }

    /// A bus config trusting `ca` and presenting `identity`'s leaf from `leaf`.
    pub fn config(&self, ca: &Path, leaf: &CertDir, identity: Identity) -> Config {
        Config {
            tls: Some(TlsFiles {
                ca_file: ca.to_path_buf(),
                cert_file: leaf.cert_file(identity),
                key_file: leaf.key_file(identity),
            }),
            ..Config::nats(&self.server.url())
        }
    }

    /// The config a control-plane role with `identity` connects with.
    pub fn role(&self, identity: Identity) -> Config {
        self.config(&self.certs.ca_file(), &self.certs, identity)
    }

    /// A connected control-plane role and its registry.
    pub async fn connect(&self, identity: Identity) -> (Bus, Registry) {
        let registry = Registry::new(identity.name(), "0");
        (
            Bus::connect(&self.role(identity), &registry).await.unwrap(),
            registry,
        )
    }

    /// A connected cell, with the CA and leaf from its own directory, and its registry.
    pub async fn cell(&self, cell: &str) -> (Bus, Registry) {
        let registry = Registry::new("executor", cell);
        let dir = CertDir::new(self.cells.join(cell));
        let config = self.config(&dir.ca_file(), &dir, Identity::Executor);
        (Bus::connect(&config, &registry).await.unwrap(), registry)
    }
}

/// Issues `cell`'s executor leaf into `cells/<cell>`, from the CA in `certs`.
pub fn issue_cell(certs: &CertDir, cells: &Path, cell: &str) {
    issue::issue(
        certs.dir(),
        &LeafSpec {
            identity: Identity::Executor,
            names: vec![nats_config::cell_user(cell)],
            days: 1,
        },
        Some(&cells.join(cell)),
    )
    .unwrap();
}
