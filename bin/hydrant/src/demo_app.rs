//! `hydrant demo-app`: the app `hydrant up --demo` pushes, and a handy target for trying the
//! platform by hand. It needs no runtime beyond the `hydrant` binary itself.
//!
//! It is an ordinary app from the platform's point of view: it listens on `$PORT`, writes one
//! access line per request to stdout (so `hydrant logs` shows `APP/PROC/WEB` lines beside the
//! router's `RTR` lines) and its errors to stderr. Its endpoints let a newcomer make the
//! platform's signals move: `/status/{code}` answers with any status, `/delay/{ms}` adds latency,
//! `/crash` exits with status 1 (the executor reports the crash), `/log/{n}` prints n lines, and
//! `/` greets with the instance index so round-robin is visible.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

/// Arguments of `hydrant demo-app`.
#[derive(Debug, clap::Args)]
pub struct DemoAppArgs {
    /// Port to listen on; the platform sets `PORT`.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    port: u16,
    /// Address to bind; the platform sets `VCAP_APP_HOST` (`0.0.0.0`: in a container the app
    /// is reached on its own address).
    #[arg(long, env = "VCAP_APP_HOST", default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
}

#[derive(Debug, Clone)]
struct Demo {
    index: String,
    started: Instant,
}

/// The longest delay `/delay/{ms}` honours, so a typo cannot park a connection for hours.
const MAX_DELAY: Duration = Duration::from_secs(60);
/// The most lines `/log/{n}` prints per request.
const MAX_LOG_LINES: u32 = 100_000;

pub async fn run(args: DemoAppArgs) -> anyhow::Result<ExitCode> {
    let demo = Demo {
        index: std::env::var("INSTANCE_INDEX").unwrap_or_else(|_| "0".to_owned()),
        started: Instant::now(),
    };
    let app = axum::Router::new()
        .route("/", get(hello))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/status/{code}", get(status))
        .route("/delay/{ms}", get(delay))
        .route("/crash", get(crash))
        .route("/log/{n}", get(log_lines))
        .fallback(not_found)
        .with_state(demo)
        .layer(axum::middleware::from_fn(access_line));
    let addr = SocketAddr::new(args.bind, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}: is PORT already in use?"))?;
    println!("demo app listening on {addr}");
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = async {
                match term.as_mut() {
                    Some(t) => { t.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
        println!("demo app stopping: got the stop signal");
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("the demo app's server failed")?;
    Ok(ExitCode::SUCCESS)
}

/// One stdout line per request, like an app framework's access log.
async fn access_line(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let start = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let line = format!(
        "{method} {path} {status} {:.1}ms",
        start.elapsed().as_secs_f64() * 1000.0
    );
    if status >= 500 {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
    response
}

async fn hello(State(demo): State<Demo>) -> String {
    format!(
        "Hello from the Hydrant demo app, instance {} (up {} s)\n",
        demo.index,
        demo.started.elapsed().as_secs()
    )
}

async fn status(Path(code): Path<u16>) -> impl IntoResponse {
    match StatusCode::from_u16(code) {
        Ok(code) => (code, format!("status {}\n", code.as_u16())),
        Err(_) => (
            StatusCode::BAD_REQUEST,
            format!("{code} is not an HTTP status: use 100-999\n"),
        ),
    }
}

async fn delay(Path(ms): Path<u64>) -> String {
    let wait = Duration::from_millis(ms).min(MAX_DELAY);
    tokio::time::sleep(wait).await;
    format!("waited {} ms\n", wait.as_millis())
}

async fn crash(State(demo): State<Demo>) -> &'static str {
    eprintln!(
        "instance {} crashing on request (exit status 1)",
        demo.index
    );
    // Answer first so the caller sees why the connection then goes away.
    tokio::spawn(async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::process::exit(1);
    });
    "crashing\n"
}

async fn log_lines(Path(n): Path<u32>) -> String {
    let n = n.min(MAX_LOG_LINES);
    for i in 1..=n {
        println!("demo log line {i} of {n}");
    }
    format!("printed {n} lines\n")
}

async fn not_found() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "not found: try /, /status/500, /delay/200, /log/10 or /crash\n",
    )
}
