//! What `hydrant certs` promises about the files it writes: they parse, name the identity as CN
//! and DNS SAN, are private (0600 in a 0700 directory), chain to the CA under rustls' own webpki
//! verifier (both as client and as server certificates), and a three-step rotation keeps every
//! leaf trusted at every step until the old CA is dropped.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use hydrant_tls::issue::{self, CertDir, LeafSpec, Rotation};
use hydrant_tls::{Error, Identity};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn roots(bundle: &Path) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certs(bundle) {
        roots.add(cert).unwrap();
    }
    Arc::new(roots)
}

/// Does the leaf of `identity` in `dir` verify against the CAs in `bundle`, as a client
/// certificate and as a server certificate for its identity's name?
fn chains(dir: &CertDir, identity: Identity, bundle: &Path) -> bool {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = roots(bundle);
    let leaf = certs(&dir.cert_file(identity)).remove(0);
    let now = UnixTime::now();
    let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .unwrap()
        .verify_client_cert(&leaf, &[], now)
        .is_ok();
    let name = ServerName::try_from(identity.name()).unwrap();
    let server = WebPkiServerVerifier::builder_with_provider(roots, provider)
        .build()
        .unwrap()
        .verify_server_cert(&leaf, &[], &name, &[], now)
        .is_ok();
    assert_eq!(
        client, server,
        "{identity}: client and server verification disagree"
    );
    client
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn ensure_makes_a_private_complete_directory_whose_leaves_name_their_identity_and_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
    let certs = issue::ensure(&dir, &Identity::ALL, &names).unwrap();

    assert_eq!(mode(&dir), 0o700);
    assert_eq!(certs.identities(), Identity::ALL.to_vec());
    for path in [
        certs.ca_file(),
        certs.signing_cert_file(),
        certs.signing_key_file(),
    ] {
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    let ca = issue::read_certificates(&certs.ca_file()).unwrap();
    assert_eq!(ca.len(), 1);
    assert!(ca[0].is_ca);
    let now = issue::unix_now();
    assert!(ca[0].days_left(now) >= i64::from(issue::DEFAULT_CA_DAYS) - 1);

    for id in Identity::ALL {
        assert_eq!(mode(&certs.cert_file(id)), 0o600, "{id}");
        assert_eq!(mode(&certs.key_file(id)), 0o600, "{id}");
        PrivateKeyDer::from_pem_file(certs.key_file(id)).unwrap();
        let info = issue::read_certificates(&certs.cert_file(id))
            .unwrap()
            .remove(0);
        assert_eq!(info.subject_cn, id.name());
        assert_eq!(
            info.dns_names,
            vec![id.name().to_owned(), "localhost".to_owned()]
        );
        assert_eq!(
            info.ip_addresses,
            vec!["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(info.issuer_cn, ca[0].subject_cn);
        assert!(!info.is_ca);
        let days = info.days_left(now);
        assert!((364..=365).contains(&days), "{id}: {days} days left");
        assert!(
            chains(&certs, id, &certs.ca_file()),
            "{id} does not chain to the CA"
        );
    }

    // A second call keeps everything: roles may be holding these files.
    let before = std::fs::read(certs.cert_file(Identity::Doppler)).unwrap();
    let ca_before = std::fs::read(certs.ca_file()).unwrap();
    issue::ensure(&dir, &Identity::ALL, &names).unwrap();
    assert_eq!(
        std::fs::read(certs.cert_file(Identity::Doppler)).unwrap(),
        before
    );
    assert_eq!(std::fs::read(certs.ca_file()).unwrap(), ca_before);
    // And a missing leaf is filled in from the same CA.
    std::fs::remove_file(certs.cert_file(Identity::Slo)).unwrap();
    issue::ensure(&dir, &Identity::ALL, &[]).unwrap();
    assert!(chains(&certs, Identity::Slo, &certs.ca_file()));
    // No temporary files left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_leaf_from_another_ca_does_not_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = issue::ensure(&tmp.path().join("a"), &[Identity::Agent], &[]).unwrap();
    let theirs = issue::ensure(&tmp.path().join("b"), &[Identity::Agent], &[]).unwrap();
    assert!(chains(&ours, Identity::Agent, &ours.ca_file()));
    assert!(!chains(&theirs, Identity::Agent, &ours.ca_file()));
}

#[test]
fn init_refuses_to_replace_a_ca_and_issue_needs_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    let spec = LeafSpec {
        identity: Identity::Executor,
        names: vec!["cell-1.example.com".into(), "10.0.0.5".into()],
        days: 30,
    };
    let err = issue::issue(&dir, &spec, None).unwrap_err();
    assert!(matches!(err, Error::NoCa(_)), "{err}");
    assert!(err.to_string().contains("hydrant certs init"), "{err}");

    issue::init(&dir, 100).unwrap();
    let err = issue::init(&dir, 100).unwrap_err();
    assert!(matches!(err, Error::CaExists(_)), "{err}");
    assert!(matches!(
        issue::init(&tmp.path().join("x"), 0),
        Err(Error::BadDays(0))
    ));

    // A leaf for another host goes to its own directory with a copy of the bundle.
    let out = tmp.path().join("cell-1");
    let cell = issue::issue(&dir, &spec, Some(&out)).unwrap();
    assert_eq!(mode(&out), 0o700);
    assert_eq!(
        std::fs::read(cell.ca_file()).unwrap(),
        std::fs::read(CertDir::new(&dir).ca_file()).unwrap()
    );
    assert!(!CertDir::new(&dir).cert_file(Identity::Executor).exists());
    let info = issue::read_certificates(&cell.cert_file(Identity::Executor))
        .unwrap()
        .remove(0);
    assert_eq!(info.dns_names, ["executor", "cell-1.example.com"]);
    assert_eq!(
        info.ip_addresses,
        ["10.0.0.5".parse::<std::net::IpAddr>().unwrap()]
    );
    assert!((29..=30).contains(&info.days_left(issue::unix_now())));
    assert!(chains(&cell, Identity::Executor, &cell.ca_file()));
    // A leaf never outlives its CA.
    let long = LeafSpec { days: 1000, ..spec };
    issue::issue(&dir, &long, None).unwrap();
    let leaf = issue::read_certificates(&CertDir::new(&dir).cert_file(Identity::Executor))
        .unwrap()
        .remove(0);
    let ca = issue::read_certificates(&CertDir::new(&dir).ca_file())
        .unwrap()
        .remove(0);
    assert!(leaf.not_after <= ca.not_after);
    let err = issue::issue(
        &dir,
        &LeafSpec {
            identity: Identity::Router,
            names: vec!["not a host".into()],
            days: 1,
        },
        None,
    )
    .unwrap_err();
    assert!(matches!(err, Error::BadName(_)), "{err}");
}

#[test]
fn rotation_keeps_every_leaf_trusted_at_every_step_and_refuses_to_run_out_of_order() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    let ids = [Identity::Agent, Identity::Doppler, Identity::Nats];
    let certs = issue::ensure(&dir, &ids, &["127.0.0.1".into()]).unwrap();
    let old_ca = tmp.path().join("old-ca.pem");
    std::fs::copy(certs.ca_file(), &old_ca).unwrap();
    let old_leaf = tmp.path().join("old-agent");
    std::fs::create_dir(&old_leaf).unwrap();
    let old_agent = CertDir::new(&old_leaf);
    std::fs::copy(
        certs.cert_file(Identity::Agent),
        old_agent.cert_file(Identity::Agent),
    )
    .unwrap();

    let refused = |result: Result<(), Error>, next: &str| {
        let err = result.unwrap_err();
        assert!(matches!(err, Error::RotationOrder { .. }), "{err}");
        assert!(err.to_string().contains(next), "{err} should name {next}");
    };
    assert_eq!(certs.rotation(), Rotation::Idle);
    refused(issue::rotate_reissue(&dir).map(drop), "rotate begin");
    refused(issue::rotate_finish(&dir).map(drop), "rotate begin");

    // 1. begin: two CAs trusted, leaves unchanged and still trusted.
    issue::rotate_begin(&dir, 100).unwrap();
    assert_eq!(certs.rotation(), Rotation::Begun);
    let bundle = issue::read_certificates(&certs.ca_file()).unwrap();
    assert_eq!(bundle.len(), 2);
    assert_ne!(bundle[0].subject_cn, bundle[1].subject_cn);
    assert_eq!(mode(&certs.ca_file()), 0o600);
    for id in ids {
        assert!(chains(&certs, id, &certs.ca_file()), "{id} after begin");
    }
    refused(issue::rotate_begin(&dir, 100).map(drop), "rotate reissue");
    refused(issue::rotate_finish(&dir).map(drop), "rotate reissue");

    // 2. reissue: every leaf signed by the new CA, same names; the old leaf still trusted.
    assert_eq!(issue::rotate_reissue(&dir).unwrap(), ids.to_vec());
    assert_eq!(certs.rotation(), Rotation::Reissued);
    for id in ids {
        let leaf = issue::read_certificates(&certs.cert_file(id))
            .unwrap()
            .remove(0);
        assert_eq!(leaf.issuer_cn, bundle[1].subject_cn, "{id}");
        assert_eq!(leaf.subject_cn, id.name());
        assert_eq!(leaf.names(), [id.name(), "127.0.0.1"]);
        assert_eq!(mode(&certs.key_file(id)), 0o600);
        assert!(chains(&certs, id, &certs.ca_file()), "{id} after reissue");
        assert!(
            !chains(&certs, id, &old_ca),
            "{id} still signed by the old CA"
        );
    }
    assert!(chains(&old_agent, Identity::Agent, &certs.ca_file()));
    refused(issue::rotate_begin(&dir, 100).map(drop), "rotate finish");
    refused(issue::rotate_reissue(&dir).map(drop), "rotate finish");
    // New leaves come from the new CA too.
    issue::issue(
        &dir,
        &LeafSpec {
            identity: Identity::Router,
            names: vec![],
            days: 10,
        },
        None,
    )
    .unwrap();
    let router = issue::read_certificates(&certs.cert_file(Identity::Router)).unwrap();
    assert_eq!(router[0].issuer_cn, bundle[1].subject_cn);

    // 3. finish: only the new CA trusted; the old leaf is refused, the new ones are not.
    issue::rotate_finish(&dir).unwrap();
    assert_eq!(certs.rotation(), Rotation::Idle);
    let bundle_after = issue::read_certificates(&certs.ca_file()).unwrap();
    assert_eq!(bundle_after.len(), 1);
    assert_eq!(bundle_after[0].subject_cn, bundle[1].subject_cn);
    for id in ids {
        assert!(chains(&certs, id, &certs.ca_file()), "{id} after finish");
    }
    assert!(!chains(&old_agent, Identity::Agent, &certs.ca_file()));
    // And the next rotation can begin.
    issue::rotate_begin(&dir, 100).unwrap();
}

#[test]
fn show_lists_every_certificate_with_its_expiry() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    issue::ensure(&dir, &[Identity::Agent, Identity::Router], &[]).unwrap();
    let all = issue::show(&dir).unwrap();
    let names: Vec<_> = all
        .iter()
        .map(|s| {
            (
                s.file.file_name().unwrap().to_string_lossy().into_owned(),
                s.info.subject_cn.clone(),
            )
        })
        .collect();
    let ca_cn = all[1].info.subject_cn.clone();
    assert!(ca_cn.starts_with("Hydrant internal CA"), "{ca_cn}");
    let expected = [
        ("agent.pem", "agent"),
        ("ca-signing.pem", ca_cn.as_str()),
        ("ca.pem", ca_cn.as_str()),
        ("router.pem", "router"),
    ]
    .map(|(f, c)| (f.to_owned(), c.to_owned()));
    assert_eq!(names, expected);
    assert!(
        all.iter()
            .all(|s| s.info.days_left(issue::unix_now()) >= 364)
    );
    // A file that is not a certificate is named in the error.
    std::fs::write(dir.join("junk.pem"), "hello").unwrap();
    let err = issue::show(&dir).unwrap_err();
    assert!(err.to_string().contains("junk.pem"), "{err}");
}
