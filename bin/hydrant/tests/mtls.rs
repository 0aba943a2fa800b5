//! Mutual TLS on every internal pipeline port of a live micro cloud (agent, doppler, firehose
//! edge, run as `hydrant up` runs them: with certificates made at first start).
//!
//! - The auth matrix: for every internal gRPC endpoint (agent ingress; doppler ingress, egress
//!   and log cache reads on its one port), each of {no certificate, a certificate from another
//!   CA, a valid certificate of the wrong identity, the right identity} gets exactly the
//!   expected answer: a TLS alert at the handshake, `PERMISSION_DENIED` before any data, or
//!   service; zero unexpected allows.
//! - An envelope sent to the agent without a client certificate is refused and counted.
//! - The cloud controller's internal API (its own listener, mutual TLS, identities checked
//!   per endpoint) in a platform micro cloud: each endpoint the platform's roles call answers
//!   each of {no certificate, another CA, an identity the listener refuses, a let-in identity
//!   that is not the endpoint's, the endpoint's own identity} exactly, refusals counted by
//!   identity and reason; and the roles (health manager, SLO alerter, syslog nozzle,
//!   autoscaler) reach it with their own certificates.
//! - Stock Loggregator v2 client stubs (the `tonic-prost-build` code generated from the
//!   upstream protos in `proto/`, which `contracts/envelope`'s bootstrap test regenerates and
//!   compares) holding our certificates: one with `agent` sends to the agent, one with
//!   `trafficcontroller` reads that envelope back from doppler egress.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hydrant_envelope::{logcache_v1, v2};
use hydrant_microcloud::{MicroCloud, Options};
use hydrant_tls::local::{LocalCa, Validity, write_private};
use hydrant_tls::{ClientTls, Connector, Identity, Material, TlsFiles};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// What a client was told.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// The handshake ended with this TLS alert (as rustls names it).
    Alert(&'static str),
    /// The handshake passed; the service refused the identity before any data.
    Denied,
    /// Served.
    Allowed,
    /// An HTTP answer with this status (the internal API, past its handshake).
    Status(u16),
}

/// Which certificate a client presents.
#[derive(Debug, Clone, Copy)]
enum Case {
    NoCertificate,
    OtherCa(Identity),
    Holding(Identity),
}

struct Rig {
    cloud: MicroCloud,
    shutdown: CancellationToken,
    certs: PathBuf,
    /// Leaves from a CA the platform does not trust (their bundle trusts ours, so only the
    /// server can refuse them).
    foreign: tempfile::TempDir,
    foreign_ca: LocalCa,
    _data: tempfile::TempDir,
}

impl Rig {
    async fn start() -> Self {
        Self::start_with(false).await
    }

    /// A TLS micro cloud; with `platform`, the platform roles too (unisolated apps).
    async fn start_with(platform: bool) -> Self {
        let data = tempfile::tempdir().unwrap();
        let shutdown = CancellationToken::new();
        let cloud = MicroCloud::start(
            Options {
                data_dir: Some(data.path().to_path_buf()),
                tls: true,
                platform,
                ..Options::pipeline()
            },
            shutdown.clone(),
        )
        .await
        .unwrap();
        let certs = cloud
            .certs
            .clone()
            .expect("a TLS micro cloud has a certificate directory");
        Self {
            cloud,
            shutdown,
            certs,
            foreign: tempfile::tempdir().unwrap(),
            foreign_ca: LocalCa::new("hydrantCA").unwrap(),
            _data: data,
        }
    }

    fn client(&self, case: Case, server: Identity) -> ClientTls {
        match case {
            Case::NoCertificate => {
                ClientTls::without_certificate(&self.certs.join("ca.pem"), server).unwrap()
            }
            Case::Holding(identity) => {
                let material = Material::load(&TlsFiles::in_dir(&self.certs, identity)).unwrap();
                ClientTls::new(material, server).unwrap()
            }
            Case::OtherCa(identity) => {
                let dir = self.foreign.path();
                self.foreign_ca
                    .write_leaf(dir, identity.name(), Validity::Days(30))
                    .unwrap();
                let ours = std::fs::read(self.certs.join("ca.pem")).unwrap();
                write_private(&dir.join("ca.pem"), &ours).unwrap();
                let material = Material::load(&TlsFiles::in_dir(dir, identity)).unwrap();
                ClientTls::new(material, server).unwrap()
            }
        }
    }
}

/// Every message in an error's source chain, for finding the TLS alert inside tonic's.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = format!("{error:?}");
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(&format!(" <- {e:?}"));
        source = e.source();
    }
    text
}

/// Classifies a failure: an alert at the handshake, or a refusal by the service.
fn answer_of(text: &str, status: Option<&tonic::Status>) -> Answer {
    if let Some(s) = status
        && s.code() == tonic::Code::PermissionDenied
    {
        return Answer::Denied;
    }
    for alert in [
        "CertificateRequired",
        "UnknownCA",
        "AccessDenied",
        "BadCertificate",
    ] {
        if text.contains(alert) {
            return Answer::Alert(alert);
        }
    }
    panic!("neither an alert nor a refusal: {text}");
}

/// Connects to `url` as `client`. The handshake is probed first: under TLS 1.3 the server's
/// alert reaches the client on its first read, which a gRPC client reports only as a broken
/// connection.
async fn connect(url: &str, client: ClientTls) -> Result<Channel, Answer> {
    let addr = url.trim_start_matches("http://");
    if let Err(e) = hydrant_tls::grpc::probe(addr, &client).await {
        return Err(answer_of(&chain(&e), None));
    }
    let endpoint = Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect_timeout(Duration::from_secs(5));
    endpoint
        .connect_with_connector(Connector::new(client))
        .await
        .map_err(|e| answer_of(&chain(&e), None))
}

fn status_answer(status: &tonic::Status) -> Answer {
    answer_of(&chain(status), Some(status))
}

fn log(source_id: &str, text: &str) -> v2::Envelope {
    v2::Envelope {
        timestamp: hydrant_envelope::now_nanos(),
        source_id: source_id.to_owned(),
        instance_id: "0".to_owned(),
        tags: HashMap::from([("source_type".to_owned(), "APP/PROC/WEB".to_owned())]),
        message: Some(v2::envelope::Message::Log(v2::Log {
            payload: text.as_bytes().to_vec().into(),
            r#type: v2::log::Type::Out as i32,
        })),
        ..v2::Envelope::default()
    }
}

/// The v2 `Send` of one log envelope.
async fn send(url: &str, client: ClientTls) -> Answer {
    let channel = match connect(url, client).await {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    let batch = v2::EnvelopeBatch {
        batch: vec![log("mtls-matrix", "hello")],
    };
    match v2::ingress_client::IngressClient::new(channel)
        .send(batch)
        .await
    {
        Ok(_) => Answer::Allowed,
        Err(status) => status_answer(&status),
    }
}

fn firehose_of(source_id: &str) -> v2::EgressBatchRequest {
    v2::EgressBatchRequest {
        selectors: vec![v2::Selector {
            source_id: source_id.to_owned(),
            message: Some(v2::selector::Message::Log(v2::LogSelector {})),
        }],
        ..v2::EgressBatchRequest::default()
    }
}

/// Opens a v2 `BatchedReceiver` stream.
async fn subscribe(url: &str, client: ClientTls) -> Answer {
    let channel = match connect(url, client).await {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    match v2::egress_client::EgressClient::new(channel)
        .batched_receiver(firehose_of("mtls-matrix"))
        .await
    {
        Ok(_) => Answer::Allowed,
        Err(status) => status_answer(&status),
    }
}

/// A log cache `Read`.
async fn read(url: &str, client: ClientTls) -> Answer {
    let channel = match connect(url, client).await {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    let request = logcache_v1::ReadRequest {
        source_id: "mtls-matrix".to_owned(),
        ..logcache_v1::ReadRequest::default()
    };
    match logcache_v1::egress_client::EgressClient::new(channel)
        .read(request)
        .await
    {
        Ok(_) => Answer::Allowed,
        Err(status) => status_answer(&status),
    }
}

#[derive(Debug, Clone, Copy)]
enum Call {
    Send,
    Subscribe,
    Read,
}

async fn call(call: Call, url: &str, client: ClientTls) -> Answer {
    match call {
        Call::Send => send(url, client).await,
        Call::Subscribe => subscribe(url, client).await,
        Call::Read => read(url, client).await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_internal_port_answers_each_certificate_case_exactly() {
    use Answer::{Alert, Allowed, Denied};
    use Identity::{Agent, Doppler, Executor, Nats, Nozzle, TrafficController};
    let rig = Rig::start().await;
    let agent = rig.cloud.agent_url.clone();
    let doppler = rig.cloud.doppler_url.clone();
    let none = Case::NoCertificate;
    let held = Case::Holding;
    let foreign = Case::OtherCa;

    // (endpoint, call, url, server identity, case, expected)
    let matrix: Vec<(&str, Call, &str, Identity, Case, Answer)> = vec![
        // The agent accepts every emitting role, not the NATS server.
        (
            "agent.ingress",
            Call::Send,
            &agent,
            Agent,
            none,
            Alert("CertificateRequired"),
        ),
        (
            "agent.ingress",
            Call::Send,
            &agent,
            Agent,
            foreign(Executor),
            Alert("UnknownCA"),
        ),
        (
            "agent.ingress",
            Call::Send,
            &agent,
            Agent,
            held(Nats),
            Alert("AccessDenied"),
        ),
        (
            "agent.ingress",
            Call::Send,
            &agent,
            Agent,
            held(Executor),
            Allowed,
        ),
        (
            "agent.ingress",
            Call::Send,
            &agent,
            Agent,
            held(Nozzle),
            Allowed,
        ),
        // The doppler's ingress accepts agents only.
        (
            "doppler.ingress",
            Call::Send,
            &doppler,
            Doppler,
            none,
            Alert("CertificateRequired"),
        ),
        (
            "doppler.ingress",
            Call::Send,
            &doppler,
            Doppler,
            foreign(Agent),
            Alert("UnknownCA"),
        ),
        (
            "doppler.ingress",
            Call::Send,
            &doppler,
            Doppler,
            held(Executor),
            Alert("AccessDenied"),
        ),
        (
            "doppler.ingress",
            Call::Send,
            &doppler,
            Doppler,
            held(TrafficController),
            Denied,
        ),
        (
            "doppler.ingress",
            Call::Send,
            &doppler,
            Doppler,
            held(Agent),
            Allowed,
        ),
        // Egress and log cache reads accept the traffic controller only.
        (
            "doppler.egress",
            Call::Subscribe,
            &doppler,
            Doppler,
            none,
            Alert("CertificateRequired"),
        ),
        (
            "doppler.egress",
            Call::Subscribe,
            &doppler,
            Doppler,
            foreign(TrafficController),
            Alert("UnknownCA"),
        ),
        (
            "doppler.egress",
            Call::Subscribe,
            &doppler,
            Doppler,
            held(Nozzle),
            Alert("AccessDenied"),
        ),
        (
            "doppler.egress",
            Call::Subscribe,
            &doppler,
            Doppler,
            held(Agent),
            Denied,
        ),
        (
            "doppler.egress",
            Call::Subscribe,
            &doppler,
            Doppler,
            held(TrafficController),
            Allowed,
        ),
        (
            "doppler.logcache",
            Call::Read,
            &doppler,
            Doppler,
            none,
            Alert("CertificateRequired"),
        ),
        (
            "doppler.logcache",
            Call::Read,
            &doppler,
            Doppler,
            foreign(TrafficController),
            Alert("UnknownCA"),
        ),
        (
            "doppler.logcache",
            Call::Read,
            &doppler,
            Doppler,
            held(Nozzle),
            Alert("AccessDenied"),
        ),
        (
            "doppler.logcache",
            Call::Read,
            &doppler,
            Doppler,
            held(Agent),
            Denied,
        ),
        (
            "doppler.logcache",
            Call::Read,
            &doppler,
            Doppler,
            held(TrafficController),
            Allowed,
        ),
    ];
    let mut wrong = Vec::new();
    let mut unexpected_allows = 0;
    for (endpoint, what, url, server, case, expected) in &matrix {
        let got = call(*what, url, rig.client(*case, *server)).await;
        if got == Answer::Allowed && *expected != Answer::Allowed {
            unexpected_allows += 1;
        }
        if got != *expected {
            wrong.push(format!(
                "{endpoint} {case:?}: expected {expected:?}, got {got:?}"
            ));
        }
    }
    assert_eq!(unexpected_allows, 0, "unexpected allows: {wrong:#?}");
    assert!(wrong.is_empty(), "{wrong:#?}");

    // The anonymous sender above was refused and counted, by reason, on the agent's metrics.
    let registry = rig.cloud.registry("agent").unwrap();
    let refused = |reason: &str| {
        registry.counter_sum(
            "tls.refused",
            &[("endpoint", "agent.ingress"), ("reason", reason)],
        )
    };
    assert_eq!(refused("no_certificate"), 1);
    assert_eq!(refused("unknown_ca"), 1);
    assert_eq!(refused("identity_not_allowed"), 1);
    let doppler_registry = rig.cloud.registry("doppler").unwrap();
    assert_eq!(
        doppler_registry.counter_sum(
            "tls.refused",
            &[
                ("endpoint", "doppler.egress"),
                ("reason", "identity_not_allowed")
            ]
        ),
        1,
        "the agent calling egress is counted at the egress gate"
    );
    // Each TLS role reports how long its own certificate has left, in seconds.
    for (key, identity) in [("agent", "agent"), ("doppler", "doppler")] {
        let text = rig.cloud.registry(key).unwrap().render_prometheus();
        let line = text
            .lines()
            .find(|l| l.starts_with("tls_cert_expiry_seconds{") && l.contains(identity))
            .unwrap_or_else(|| panic!("{key} has no expiry gauge:\n{text}"));
        let seconds: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(seconds > 30.0 * 86_400.0, "{line}");
    }
    rig.shutdown.cancel();
    rig.cloud.stopped().await;
}

/// One call to the internal API as `client`: the HTTP status and body, or the TLS alert that
/// ended the handshake.
async fn internal(
    client: ClientTls,
    method: reqwest::Method,
    url: &str,
    token: &str,
) -> (Answer, String) {
    let mut request = reqwest::Client::new()
        .request(method.clone(), url)
        .bearer_auth(token);
    if method == reqwest::Method::POST {
        // A scale's body, or a restart's (which takes only optional fields).
        let body = if url.ends_with("/scale") {
            serde_json::json!({ "instances": 1 })
        } else {
            serde_json::json!({})
        };
        request = request.json(&body);
    }
    let transport = hydrant_runtime::MtlsTransport::from_client(&client);
    match transport.execute(request.build().unwrap()).await {
        Ok(response) => {
            let status = response.status().as_u16();
            (
                Answer::Status(status),
                response.text().await.unwrap_or_default(),
            )
        }
        Err(text) => (answer_of(&text, None), text),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_internal_api_answers_each_certificate_case_exactly() {
    use Answer::{Alert, Status};
    use Identity::{Agent, Autoscaler, Executor, HealthManager, Nozzle, Slo};
    use reqwest::Method;
    let rig = Rig::start_with(true).await;
    let base = rig
        .cloud
        .internal_api_url
        .clone()
        .expect("a TLS platform micro cloud serves the internal API");
    let token = rig.cloud.token.clone();
    // (endpoint, method, path, its own identity, a let-in identity that is not it, its own
    // identity's answer: the handler's, as on the public API with the same token)
    let endpoints: Vec<(&str, Method, &str, Identity, Identity, Answer)> = vec![
        (
            "droplet download",
            Method::GET,
            "/internal/droplets/no-such-droplet?token=not-a-token",
            Executor,
            Nozzle,
            Status(401),
        ),
        (
            "drain targets",
            Method::GET,
            "/v3/drain_targets",
            Nozzle,
            Autoscaler,
            Status(200),
        ),
        (
            "autoscaling policies",
            Method::GET,
            "/v3/autoscaling_policies",
            Autoscaler,
            Nozzle,
            Status(200),
        ),
        (
            "scale",
            Method::POST,
            "/v3/apps/no-such-app/processes/web/actions/scale",
            Autoscaler,
            HealthManager,
            Status(404),
        ),
        (
            "apps (desired state)",
            Method::GET,
            "/v3/apps",
            HealthManager,
            Slo,
            Status(200),
        ),
        (
            "instance restart",
            Method::POST,
            "/v3/apps/no-such-app/instances/0/actions/restart",
            HealthManager,
            Executor,
            Status(404),
        ),
        ("slos", Method::GET, "/v3/slos", Slo, Executor, Status(200)),
    ];
    let mut wrong = Vec::new();
    let mut unexpected_allows = 0;
    for (endpoint, method, path, own, other, served) in &endpoints {
        let url = format!("{base}{path}");
        let cases = [
            (Case::NoCertificate, Alert("CertificateRequired")),
            (Case::OtherCa(*own), Alert("UnknownCA")),
            // The agent calls nothing here: refused at the handshake.
            (Case::Holding(Agent), Alert("AccessDenied")),
            (Case::Holding(*other), Status(403)),
            (Case::Holding(*own), served.clone()),
        ];
        for (case, expected) in cases {
            let client = rig.client(case, Identity::CloudController);
            let (got, body) = internal(client, method.clone(), &url, &token).await;
            let refused = matches!(got, Alert(_) | Status(401 | 403));
            if !refused && !matches!(case, Case::Holding(i) if i == *own) {
                unexpected_allows += 1;
            }
            if got != expected {
                wrong.push(format!(
                    "{endpoint} {case:?}: expected {expected:?}, got {got:?}: {body}"
                ));
            }
            if let (Case::Holding(i), Status(403)) = (case, &got) {
                assert!(
                    body.contains(&format!("identity {i} may not call")),
                    "a 403 names the identity: {body}"
                );
            }
        }
    }
    // A path no role calls here is not served, whoever asks; the public API still is, with a
    // token and no certificate.
    let (got, _) = internal(
        rig.client(Case::Holding(Executor), Identity::CloudController),
        Method::GET,
        &format!("{base}/v3/users"),
        &token,
    )
    .await;
    assert_eq!(
        got,
        Status(404),
        "the internal API serves only the roles' endpoints"
    );
    let public = reqwest::Client::new()
        .get(format!("{}/v3/apps", rig.cloud.api_url.clone().unwrap()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 200, "the public API keeps bearer tokens");
    assert_eq!(unexpected_allows, 0, "unexpected allows: {wrong:#?}");
    assert!(wrong.is_empty(), "{wrong:#?}");

    // Every refusal counted, by the identity the certificate named and why.
    let registry = rig.cloud.registry("cloudcontroller").unwrap();
    let refused =
        |tags: &[(&str, &str)]| registry.counter_sum("cloudcontroller.internal_refused", tags);
    let n = endpoints.len() as u64;
    assert_eq!(
        refused(&[("identity", "none"), ("reason", "no_certificate")]),
        n
    );
    assert_eq!(refused(&[("reason", "unknown_ca")]), n);
    assert_eq!(
        refused(&[("identity", "agent"), ("reason", "identity_not_allowed")]),
        n
    );
    assert_eq!(refused(&[("reason", "endpoint_not_allowed")]), n);
    assert_eq!(
        refused(&[("identity", "nozzle"), ("reason", "endpoint_not_allowed")]),
        2,
        "the nozzle asked for a droplet and for policies"
    );
    assert_eq!(
        refused(&[("identity", "executor"), ("reason", "no_such_endpoint")]),
        1
    );

    // The platform's roles reach the internal API with their own certificates, and nothing
    // they call is refused.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for identity in ["healthmanager", "slo", "nozzle", "autoscaler"] {
        let calls =
            || registry.counter_sum("cloudcontroller.internal_calls", &[("identity", identity)]);
        while calls() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{identity} never called the internal API"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    rig.shutdown.cancel();
    rig.cloud.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_v2_clients_with_our_certificates_send_and_read_over_mtls() {
    let rig = Rig::start().await;
    // A reader holding the traffic controller's certificate subscribes to doppler egress.
    let channel = connect(
        &rig.cloud.doppler_url,
        rig.client(
            Case::Holding(Identity::TrafficController),
            Identity::Doppler,
        ),
    )
    .await
    .unwrap();
    let mut stream = v2::egress_client::EgressClient::new(channel)
        .batched_receiver(firehose_of("stock-client"))
        .await
        .unwrap()
        .into_inner();

    // A sender holding the agent's certificate sends through the agent (which forwards over
    // its own mutual TLS to the doppler).
    let channel = connect(
        &rig.cloud.agent_url,
        rig.client(Case::Holding(Identity::Agent), Identity::Agent),
    )
    .await
    .unwrap();
    let mut sender = v2::ingress_client::IngressClient::new(channel);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let received = loop {
        sender
            .send(v2::EnvelopeBatch {
                batch: vec![log("stock-client", "over mtls")],
            })
            .await
            .unwrap();
        let next = tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
        if let Ok(batch) = next {
            let batch = batch.unwrap().expect("the stream stays open");
            if let Some(e) = batch
                .batch
                .into_iter()
                .find(|e| e.source_id == "stock-client")
            {
                break e;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the envelope never came back through doppler egress"
        );
    };
    let Some(v2::envelope::Message::Log(line)) = received.message else {
        panic!("not a log: {received:?}");
    };
    assert_eq!(&line.payload[..], b"over mtls");
    rig.shutdown.cancel();
    rig.cloud.stopped().await;
}

#[test]
fn the_certificate_directory_is_complete_and_private() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let rig = Rig::start().await;
        for identity in Identity::ALL {
            let files = TlsFiles::in_dir(&rig.certs, identity);
            let material = Material::load(&files).unwrap();
            assert_eq!(material.identity(), Some(identity));
            assert!(material.days_to_expiry().unwrap() > 30.0);
            assert_private(&files.key_file);
        }
        rig.shutdown.cancel();
        rig.cloud.stopped().await;
    });
}

fn assert_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", path.display());
}
