//! Mutual TLS at one endpoint, end to end over loopback: who gets in, who is refused at the
//! handshake and with which alert, what is counted, and reloading a reissued leaf and a new CA
//! without a restart while an established connection keeps working.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hydrant_tls::local::{LocalCa, Validity, write_private};
use hydrant_tls::{ClientTls, Identity, Material, Reason, ServerTls, Tally, TlsFiles, grpc};
use rustls::AlertDescription;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::StreamExt;

const FAST: Duration = Duration::from_millis(100);

/// An echo server behind `incoming`, letting in `allowed`.
async fn echo_server(material: Arc<Material>, allowed: &[Identity]) -> (String, Arc<Tally>) {
    let tally = Arc::new(Tally::default());
    let tls = ServerTls::new(material, "test.echo", allowed, tally.clone()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut incoming = grpc::incoming(listener, tls);
    tokio::spawn(async move {
        while let Some(Ok(mut conn)) = incoming.next().await {
            tokio::spawn(async move {
                let identity = conn
                    .peer()
                    .identity
                    .map(|i| i.name().to_owned())
                    .unwrap_or_default();
                let mut buf = [0u8; 4];
                while conn.read_exact(&mut buf).await.is_ok() {
                    let reply = format!("{}:{identity};", String::from_utf8_lossy(&buf));
                    if conn.write_all(reply.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, tally)
}

/// What the server answered a client: its echo, or the alert that ended the handshake.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Echo(String),
    Alert(AlertDescription),
    Other(String),
}

/// A connection that passed the handshake.
type Conn = tokio_rustls::client::TlsStream<TcpStream>;

async fn dial(addr: &str, config: Arc<rustls::ClientConfig>, server: &str) -> Result<Conn, Answer> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(server.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(answer_of)
}

fn answer_of(e: std::io::Error) -> Answer {
    match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::AlertReceived(alert)) => Answer::Alert(*alert),
        _ => Answer::Other(e.to_string()),
    }
}

async fn ping(conn: &mut Conn) -> Answer {
    // Under TLS 1.3 the client finishes its half first; a refusal arrives as an alert on the
    // first read, before any application data.
    if let Err(e) = conn.write_all(b"ping").await {
        return answer_of(e);
    }
    let mut reply = vec![0u8; 64];
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut reply)).await {
            Ok(Ok(0)) => return Answer::Other("closed".to_owned()),
            Ok(Ok(n)) => {
                got.extend_from_slice(&reply[..n]);
                if got.ends_with(b";") {
                    return Answer::Echo(String::from_utf8_lossy(&got).into_owned());
                }
            }
            Ok(Err(e)) => return answer_of(e),
            Err(_) => return Answer::Other("no answer".to_owned()),
        }
    }
}

async fn ask(addr: &str, config: Arc<rustls::ClientConfig>, server: &str) -> Answer {
    match dial(addr, config, server).await {
        Ok(mut conn) => ping(&mut conn).await,
        Err(answer) => answer,
    }
}

/// Writes a leaf and the bundle for `name` into `dir` and loads them.
fn material(
    dir: &Path,
    ca: &LocalCa,
    bundle: &str,
    name: &str,
    validity: Validity,
) -> Arc<Material> {
    ca.write_leaf(dir, name, validity).unwrap();
    let files = TlsFiles {
        ca_file: dir.join(format!("{name}-ca.pem")),
        cert_file: dir.join(format!("{name}.pem")),
        key_file: dir.join(format!("{name}.key")),
    };
    write_private(&files.ca_file, bundle.as_bytes()).unwrap();
    Material::load_with_interval(&files, FAST).unwrap()
}

fn client(material: Arc<Material>, server: Identity) -> Arc<rustls::ClientConfig> {
    ClientTls::new(material, server).unwrap().config()
}

/// A client that trusts `ca` but presents no certificate.
fn anonymous(ca: &LocalCa) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let der = rustls_pki_types::CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap();
    roots.add(der).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(hydrant_tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

use rustls_pki_types::pem::PemObject;

#[tokio::test]
async fn each_certificate_case_gets_its_answer_at_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::new("hydrantCA").unwrap();
    let other = LocalCa::new("otherCA").unwrap();
    let server = material(dir.path(), &ca, ca.pem(), "doppler", Validity::Days(30));
    let (addr, tally) = echo_server(server.clone(), &[Identity::Agent]).await;

    let right = material(dir.path(), &ca, ca.pem(), "agent", Validity::Days(30));
    let wrong = material(dir.path(), &ca, ca.pem(), "nozzle", Validity::Days(30));
    let expired = material(dir.path(), &ca, ca.pem(), "executor", Validity::Expired);
    let foreign_dir = tempfile::tempdir().unwrap();
    // Another CA's `agent`: the right name, the wrong issuer. It trusts our CA, so only the
    // server's check can refuse it.
    let foreign = material(
        foreign_dir.path(),
        &other,
        ca.pem(),
        "agent",
        Validity::Days(30),
    );

    let cases = [
        (
            "no certificate",
            anonymous(&ca),
            Answer::Alert(AlertDescription::CertificateRequired),
        ),
        (
            "another CA",
            client(foreign, Identity::Doppler),
            Answer::Alert(AlertDescription::UnknownCA),
        ),
        (
            "wrong identity",
            client(wrong, Identity::Doppler),
            Answer::Alert(AlertDescription::AccessDenied),
        ),
        (
            "expired",
            client(expired, Identity::Doppler),
            Answer::Alert(AlertDescription::CertificateExpired),
        ),
        (
            "right identity",
            client(right.clone(), Identity::Doppler),
            Answer::Echo("ping:agent;".to_owned()),
        ),
    ];
    for (case, config, expected) in cases {
        assert_eq!(ask(&addr, config, "doppler").await, expected, "{case}");
    }
    assert_eq!(tally.get(Reason::NoCertificate), 1);
    assert_eq!(tally.get(Reason::UnknownCa), 1);
    assert_eq!(tally.get(Reason::IdentityNotAllowed), 1);
    assert_eq!(tally.get(Reason::Expired), 1);

    // The client checks the server's name too: a doppler is not a traffic controller.
    let refused = ask(
        &addr,
        client(right, Identity::TrafficController),
        "trafficcontroller",
    )
    .await;
    assert!(
        matches!(refused, Answer::Other(ref e) if e.contains("certificate")),
        "{refused:?}"
    );

    let days = server.days_to_expiry().unwrap();
    assert!((28.0..=31.0).contains(&days), "{days}");
    assert_eq!(server.identity(), Some(Identity::Doppler));
}

#[tokio::test]
async fn tls12_with_loggregator_suites_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::new("hydrantCA").unwrap();
    let server = material(dir.path(), &ca, ca.pem(), "doppler", Validity::Days(30));
    let (addr, _) = echo_server(server, &[Identity::Agent]).await;
    ca.write_leaf(dir.path(), "agent", Validity::Days(30))
        .unwrap();
    // A TLS 1.2-only client offering one GCM suite, as Loggregator's
    // `WithInternalServiceDefaults` does (with the ECDSA twin of its RSA suites: our keys are
    // ECDSA), built from plain rustls without Hydrant's client code.
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites =
        vec![rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384];
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    let chain = rustls_pki_types::CertificateDer::pem_file_iter(dir.path().join("agent.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(dir.path().join("agent.key")).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let mut conn = dial(&addr, Arc::new(config), "doppler").await.unwrap();
    assert_eq!(
        conn.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(
        ping(&mut conn).await,
        Answer::Echo("ping:agent;".to_owned())
    );
}

/// Waits until `check` holds, polling, or fails after 10 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_reissued_leaf_and_a_new_ca_take_effect_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let old = LocalCa::new("hydrantCA").unwrap();
    let new = LocalCa::new("hydrantCA-2").unwrap();
    let server = material(dir.path(), &old, old.pem(), "doppler", Validity::Days(30));
    let (addr, _) = echo_server(server, &[Identity::Agent]).await;

    let old_agent = material(dir.path(), &old, old.pem(), "agent", Validity::Days(30));
    let mut established = dial(
        &addr,
        client(old_agent.clone(), Identity::Doppler),
        "doppler",
    )
    .await
    .unwrap();
    assert_eq!(
        ping(&mut established).await,
        Answer::Echo("ping:agent;".to_owned())
    );

    // A leaf from the new CA is refused while only the old CA is trusted.
    let new_dir = tempfile::tempdir().unwrap();
    let both = format!("{}{}", old.pem(), new.pem());
    let new_agent = material(new_dir.path(), &new, &both, "agent", Validity::Days(30));
    assert_eq!(
        ask(
            &addr,
            client(new_agent.clone(), Identity::Doppler),
            "doppler"
        )
        .await,
        Answer::Alert(AlertDescription::UnknownCA)
    );

    // Rotation: both CAs in the server's bundle, and its leaf reissued by the new CA.
    write_private(&dir.path().join("doppler-ca.pem"), both.as_bytes()).unwrap();
    new.write_leaf(dir.path(), "doppler", Validity::Days(90))
        .unwrap();
    // Once reloaded, a client trusting only the new CA accepts the server (it presents the
    // reissued leaf) and the server accepts that client's new-CA leaf.
    let only_new_dir = tempfile::tempdir().unwrap();
    let only_new = material(
        only_new_dir.path(),
        &new,
        new.pem(),
        "agent",
        Validity::Days(30),
    );
    eventually("the reissued leaf and the new CA to be in use", || {
        let config = client(only_new.clone(), Identity::Doppler);
        let addr = addr.clone();
        async move { ask(&addr, config, "doppler").await == Answer::Echo("ping:agent;".to_owned()) }
    })
    .await;
    assert_eq!(
        ask(&addr, client(new_agent, Identity::Doppler), "doppler").await,
        Answer::Echo("ping:agent;".to_owned())
    );
    // The old CA's leaves are still trusted during the rotation, once their holders trust the
    // new CA too (until then they refuse the reissued server leaf themselves).
    write_private(&dir.path().join("agent-ca.pem"), both.as_bytes()).unwrap();
    eventually("an old-CA client to get in", || {
        let config = client(old_agent.clone(), Identity::Doppler);
        let addr = addr.clone();
        async move { ask(&addr, config, "doppler").await == Answer::Echo("ping:agent;".to_owned()) }
    })
    .await;
    // And the connection made before the reload never noticed.
    assert_eq!(
        ping(&mut established).await,
        Answer::Echo("ping:agent;".to_owned())
    );
}
