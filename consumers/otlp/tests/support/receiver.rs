//! A local OTLP/gRPC receiver for the tests: the generated `LogsService` and `MetricsService`
//! servers on a loopback port, answering as a script says and checking every request against
//! the parts of the OTLP contract a real collector enforces or relies on.
//!
//! What it checks (a violation is recorded and answered INVALID_ARGUMENT, so the test sees
//! it): every resource has `service.name`; attribute keys are unique in every list; every log
//! record has a time, a body and a known severity; every metric has a name and data of one
//! kind; sums are monotonic with a temporality; histograms have one more bucket than bounds,
//! bounds strictly increasing, and bucket counts that add up to the count.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::metric;
use opentelemetry_proto::tonic::resource::v1::Resource;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::{Code, Request, Response, Status};

/// How the receiver answers one export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Take everything.
    Ok,
    /// Fail the call with this code (nothing is kept).
    Fail(Code),
    /// Take the request but report this many records/points rejected in `partial_success`.
    Partial(i64),
}

#[derive(Debug, Default)]
struct State {
    logs: Vec<ExportLogsServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
    /// Answers for the next calls (either service), then `default`.
    script: VecDeque<Answer>,
    default_logs: Option<Answer>,
    default_metrics: Option<Answer>,
    calls: usize,
    /// The `authorization` metadata of every call.
    authorization: Vec<Option<String>>,
    violations: Vec<String>,
    /// How long each call takes before it is answered (a slow collector).
    delay: std::time::Duration,
}

/// The receiver's shared state; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Receiver {
    state: Arc<Mutex<State>>,
}

/// A running server; dropping or [`Server::kill`] takes the port down at once.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    /// Takes the receiver down abruptly, like a crash: listener and connections close.
    pub async fn kill(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves on `addr` (`127.0.0.1:0` for any port).
    pub async fn serve(&self, addr: SocketAddr) -> Server {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = tonic::transport::Server::builder()
            .add_service(LogsServiceServer::new(self.clone()))
            .add_service(MetricsServiceServer::new(self.clone()));
        let task = tokio::spawn(async move {
            let _ = router
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        Server { addr, task }
    }

    /// The next calls answer these, in order.
    pub fn script(&self, answers: &[Answer]) {
        self.lock().script.extend(answers.iter().copied());
    }

    /// Every logs export (after the script) answers `answer`.
    pub fn logs_answer(&self, answer: Answer) {
        self.lock().default_logs = Some(answer);
    }

    /// Every call from now on takes `delay` before it is answered.
    pub fn slow_down(&self, delay: std::time::Duration) {
        self.lock().delay = delay;
    }

    async fn pause(&self) {
        let delay = self.lock().delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    pub fn log_requests(&self) -> Vec<ExportLogsServiceRequest> {
        self.lock().logs.clone()
    }

    pub fn metric_requests(&self) -> Vec<ExportMetricsServiceRequest> {
        self.lock().metrics.clone()
    }

    pub fn calls(&self) -> usize {
        self.lock().calls
    }

    pub fn authorization(&self) -> Vec<Option<String>> {
        self.lock().authorization.clone()
    }

    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Records the call and decides the answer; `problems` are contract violations found.
    fn answer<T>(
        &self,
        request: &Request<T>,
        default: Option<Answer>,
        problems: Vec<String>,
    ) -> Answer {
        let mut s = self.lock();
        s.calls += 1;
        s.authorization.push(
            request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        );
        if !problems.is_empty() {
            s.violations.extend(problems);
            return Answer::Fail(Code::InvalidArgument);
        }
        s.script.pop_front().or(default).unwrap_or(Answer::Ok)
    }
}

fn unique_keys(what: &str, attrs: &[KeyValue], problems: &mut Vec<String>) {
    let mut seen = HashSet::new();
    for kv in attrs {
        if !seen.insert(kv.key.as_str()) {
            problems.push(format!("{what}: attribute {} repeated", kv.key));
        }
        if kv.value.as_ref().and_then(|v| v.value.as_ref()).is_none() {
            problems.push(format!("{what}: attribute {} has no value", kv.key));
        }
    }
}

fn check_resource(resource: Option<&Resource>, problems: &mut Vec<String>) {
    let Some(resource) = resource else {
        problems.push("a resource is missing".to_owned());
        return;
    };
    unique_keys("resource", &resource.attributes, problems);
    if !resource
        .attributes
        .iter()
        .any(|kv| kv.key == "service.name")
    {
        problems.push("a resource has no service.name".to_owned());
    }
}

fn check_logs(request: &ExportLogsServiceRequest) -> Vec<String> {
    let mut problems = Vec::new();
    for rl in &request.resource_logs {
        check_resource(rl.resource.as_ref(), &mut problems);
        for sl in &rl.scope_logs {
            for r in &sl.log_records {
                unique_keys("log record", &r.attributes, &mut problems);
                if r.time_unix_nano == 0 {
                    problems.push("a log record has no time".to_owned());
                }
                if r.body.is_none() {
                    problems.push("a log record has no body".to_owned());
                }
                if !(1..=24).contains(&r.severity_number) {
                    problems.push(format!("severity {} out of range", r.severity_number));
                }
            }
        }
    }
    problems
}

fn check_metrics(request: &ExportMetricsServiceRequest) -> Vec<String> {
    let mut problems = Vec::new();
    for rm in &request.resource_metrics {
        check_resource(rm.resource.as_ref(), &mut problems);
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                if m.name.is_empty() {
                    problems.push("a metric has no name".to_owned());
                }
                match &m.data {
                    Some(metric::Data::Sum(s)) => {
                        if !s.is_monotonic || s.aggregation_temporality == 0 {
                            problems.push(format!("sum {} not monotonic/temporal", m.name));
                        }
                        for p in &s.data_points {
                            unique_keys(&m.name, &p.attributes, &mut problems);
                        }
                    }
                    Some(metric::Data::Gauge(g)) => {
                        for p in &g.data_points {
                            unique_keys(&m.name, &p.attributes, &mut problems);
                        }
                    }
                    Some(metric::Data::Histogram(h)) => {
                        if h.aggregation_temporality == 0 {
                            problems.push(format!("histogram {} has no temporality", m.name));
                        }
                        for p in &h.data_points {
                            unique_keys(&m.name, &p.attributes, &mut problems);
                            if p.bucket_counts.len() != p.explicit_bounds.len() + 1 {
                                problems.push(format!("{}: bucket count mismatch", m.name));
                            }
                            if p.explicit_bounds.windows(2).any(|w| w[0] >= w[1]) {
                                problems.push(format!("{}: bounds not increasing", m.name));
                            }
                            if p.bucket_counts.iter().sum::<u64>() != p.count {
                                problems.push(format!("{}: buckets do not add up", m.name));
                            }
                        }
                    }
                    other => problems.push(format!("{}: unexpected data {other:?}", m.name)),
                }
            }
        }
    }
    problems
}

/// What a scripted answer does to a call: `Err` fails it, `Ok(Some(n))` takes it but reports
/// `n` records rejected, `Ok(None)` takes everything.
fn scripted(answer: Answer) -> Result<Option<i64>, Status> {
    match answer {
        Answer::Fail(code) => Err(Status::new(code, "scripted failure")),
        Answer::Ok => Ok(None),
        Answer::Partial(n) => Ok(Some(n)),
    }
}

const PARTIAL: &str = "scripted partial rejection";

#[tonic::async_trait]
impl LogsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        self.pause().await;
        let default = self.lock().default_logs;
        let rejected = scripted(self.answer(&request, default, check_logs(request.get_ref())))?;
        self.lock().logs.push(request.into_inner());
        let partial_success = rejected.map(|n| ExportLogsPartialSuccess {
            rejected_log_records: n,
            error_message: PARTIAL.to_owned(),
        });
        Ok(Response::new(ExportLogsServiceResponse { partial_success }))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.pause().await;
        let default = self.lock().default_metrics;
        let check = check_metrics(request.get_ref());
        let rejected = scripted(self.answer(&request, default, check))?;
        self.lock().metrics.push(request.into_inner());
        let partial_success = rejected.map(|n| ExportMetricsPartialSuccess {
            rejected_data_points: n,
            error_message: PARTIAL.to_owned(),
        });
        Ok(Response::new(ExportMetricsServiceResponse {
            partial_success,
        }))
    }
}
