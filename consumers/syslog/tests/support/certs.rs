//! Test certificates made at test time (rcgen, ring): a CA, and server certificates it signs,
//! written as PEM files into a temp dir. No key is ever committed.
#![allow(dead_code, reason = "each test file uses a part")]

use std::path::PathBuf;

use hydrant_nozzle_syslog::rsyslogd::TlsFiles;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub dir: tempfile::TempDir,
    /// The CA certificate, PEM, for `tls.ca_file`.
    pub pem: PathBuf,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("ca.pem");
        std::fs::write(&pem, issuer.pem()).unwrap();
        Self { issuer, dir, pem }
    }

    /// A server certificate for `names` (DNS names or IP literals), signed by this CA.
    pub fn server(&self, names: &[&str]) -> TlsFiles {
        let params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let stem = names
            .first()
            .copied()
            .unwrap_or("server")
            .replace(['.', ':'], "_");
        let files = TlsFiles {
            ca: self.pem.clone(),
            cert: self.dir.path().join(format!("{stem}.pem")),
            key: self.dir.path().join(format!("{stem}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }
}
