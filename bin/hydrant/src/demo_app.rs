//! `hydrant demo-app`: the app `hydrant up --demo` pushes, and a handy target for trying the
//! platform by hand. It needs no runtime beyond the `hydrant` binary itself.
//!
//! It is an ordinary app from the platform's point of view: it listens on `$PORT`, writes one
//! access line per request to stdout (so `hydrant logs` shows `APP/PROC/WEB` lines beside the
//! router's `RTR` lines) and its errors to stderr. Its endpoints let a newcomer make the
//! platform's signals move: `/status/{code}` answers with any status, `/delay/{ms}` adds latency,
//! `/crash` exits with status 1 (the executor reports the crash), `/log/{n}` prints n lines, and
//! `/` greets with the instance index so round-robin is visible.
//!
//! Bound to a Redis service (`hydrant create-service redis small cache && hydrant bind-service
//! demo cache --restart`), `/` also counts visits in it: the credentials come from
//! `VCAP_SERVICES` exactly as any app would read them, and a tiny RESP client sends `AUTH` and
//! `INCR`. Every reply is read with a deadline and a bounded line length, so a wrong or hostile
//! endpoint costs the request a clear message, never a hang.
//!
//! `/services` knocks on every service bound to it (MySQL, PostgreSQL, RabbitMQ or Redis, by
//! the scheme of its credentials' `uri`) with the first step of that protocol's own handshake —
//! MySQL's server greeting, PostgreSQL's answer to an SSL request, AMQP 0-9-1's
//! `Connection.Start`, Redis's answer to `PING` — and says per service whether the server
//! answered, so reaching each offering through the egress its binding opened is one request.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

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
    /// The first Redis service bound to the app, if any.
    redis: Option<std::sync::Arc<Redis>>,
    /// Every service `/services` knocks on.
    bound: std::sync::Arc<Vec<Bound>>,
}

/// A Redis service's connection details, from `VCAP_SERVICES`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Redis {
    /// The service instance's name (`cache`).
    name: String,
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
}

/// The key the demo counts visits under.
const COUNTER_KEY: &str = "hydrant-demo:visits";
/// How long one Redis exchange may take.
const REDIS_DEADLINE: Duration = Duration::from_secs(2);
/// The longest reply line accepted from Redis.
const MAX_REPLY_LINE: u64 = 512;

/// The longest delay `/delay/{ms}` honours, so a typo cannot park a connection for hours.
const MAX_DELAY: Duration = Duration::from_secs(60);
/// The most lines `/log/{n}` prints per request.
const MAX_LOG_LINES: u32 = 100_000;

pub async fn run(args: DemoAppArgs) -> anyhow::Result<ExitCode> {
    let redis = std::env::var("VCAP_SERVICES")
        .ok()
        .and_then(|v| redis_from_vcap(&v))
        .map(std::sync::Arc::new);
    if let Some(r) = &redis {
        println!(
            "demo app: counting visits in Redis service {:?} at {}:{}",
            r.name, r.host, r.port
        );
    }
    let bound = std::env::var("VCAP_SERVICES")
        .ok()
        .map(|v| bound_from_vcap(&v))
        .unwrap_or_default();
    let demo = Demo {
        index: std::env::var("INSTANCE_INDEX").unwrap_or_else(|_| "0".to_owned()),
        started: Instant::now(),
        redis,
        bound: std::sync::Arc::new(bound),
    };
    let app = axum::Router::new()
        .route("/", get(hello))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/status/{code}", get(status))
        .route("/delay/{ms}", get(delay))
        .route("/crash", get(crash))
        .route("/log/{n}", get(log_lines))
        .route("/services", get(services))
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
    let mut text = format!(
        "Hello from the Hydrant demo app, instance {} (up {} s)\n",
        demo.index,
        demo.started.elapsed().as_secs()
    );
    if let Some(redis) = &demo.redis {
        match tokio::time::timeout(REDIS_DEADLINE, count_visit(redis)).await {
            Ok(Ok(n)) => text.push_str(&format!(
                "visits counted in Redis service {:?}: {n}\n",
                redis.name
            )),
            Ok(Err(err)) => {
                eprintln!("Redis service {:?}: {err}", redis.name);
                text.push_str(&format!("Redis service {:?}: {err}\n", redis.name));
            }
            Err(_) => {
                eprintln!("Redis service {:?}: no answer within 2 s", redis.name);
                text.push_str(&format!(
                    "Redis service {:?}: no answer within 2 s\n",
                    redis.name
                ));
            }
        }
    }
    text
}

/// The first service in `VCAP_SERVICES` that is Redis: offering label `redis`, a `redis` tag, or
/// a `redis://` URI; its host and port from `host`/`hostname` and `port`, else from the URI.
fn redis_from_vcap(vcap: &str) -> Option<Redis> {
    let services: serde_json::Value = serde_json::from_str(vcap).ok()?;
    let entries = services
        .as_object()?
        .values()
        .filter_map(|v| v.as_array())
        .flatten();
    for entry in entries {
        let creds = entry.get("credentials")?;
        let text = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_owned);
        let uri = text(creds.get("uri")).and_then(|u| reqwest::Url::parse(&u).ok());
        let is_redis = entry.get("label").and_then(|l| l.as_str()) == Some("redis")
            || entry
                .get("tags")
                .and_then(|t| t.as_array())
                .is_some_and(|t| t.iter().any(|t| t.as_str() == Some("redis")))
            || uri.as_ref().is_some_and(|u| u.scheme() == "redis");
        if !is_redis {
            continue;
        }
        let host = text(creds.get("host"))
            .or_else(|| text(creds.get("hostname")))
            .or_else(|| uri.as_ref().and_then(|u| u.host_str().map(str::to_owned)))?;
        let port = creds
            .get("port")
            .and_then(|p| p.as_u64().and_then(|p| u16::try_from(p).ok()))
            .or_else(|| uri.as_ref().and_then(reqwest::Url::port))
            .unwrap_or(6379);
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let username = text(creds.get("username")).or_else(|| {
            uri.as_ref()
                .map(|u| decode(u.username()))
                .filter(|u| !u.is_empty())
        });
        let password = text(creds.get("password"))
            .or_else(|| uri.as_ref().and_then(|u| u.password().map(decode)));
        let name = text(entry.get("name")).unwrap_or_else(|| "redis".to_owned());
        return Some(Redis {
            name,
            host,
            port,
            username,
            password,
        });
    }
    None
}

/// `AUTH` (when the binding has a password) and `INCR` on one fresh connection: the count.
async fn count_visit(redis: &Redis) -> Result<i64, String> {
    let stream = tokio::net::TcpStream::connect((redis.host.as_str(), redis.port))
        .await
        .map_err(|e| format!("cannot connect to {}:{}: {e}", redis.host, redis.port))?;
    let mut stream = BufReader::new(stream);
    if let Some(password) = &redis.password {
        let mut auth = vec!["AUTH"];
        auth.extend(redis.username.as_deref());
        auth.push(password);
        match exchange(&mut stream, &auth).await? {
            Reply::Status(_) => {}
            other => return Err(format!("AUTH refused: {other:?}")),
        }
    }
    match exchange(&mut stream, &["INCR", COUNTER_KEY]).await? {
        Reply::Integer(n) => Ok(n),
        other => Err(format!("INCR answered {other:?}")),
    }
}

/// One RESP reply line: what the demo's two commands can get back.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Status(String),
    Error(String),
    Integer(i64),
}

/// Sends `args` as a RESP array and reads one single-line reply (at most 512 bytes).
async fn exchange(
    stream: &mut BufReader<tokio::net::TcpStream>,
    args: &[&str],
) -> Result<Reply, String> {
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream
        .get_mut()
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending to Redis: {e}"))?;
    let mut line = String::new();
    let read = (&mut *stream)
        .take(MAX_REPLY_LINE)
        .read_line(&mut line)
        .await
        .map_err(|e| format!("reading from Redis: {e}"))?;
    if read == 0 || !line.ends_with("\r\n") {
        return Err("Redis closed the connection or sent an over-long reply".to_owned());
    }
    parse_reply(line.trim_end_matches("\r\n"))
}

/// Parses one reply line; what it does not understand is quoted with `{:?}`, which escapes
/// control characters, so a hostile endpoint cannot write to the developer's terminal.
fn parse_reply(line: &str) -> Result<Reply, String> {
    match line.split_at_checked(1) {
        Some(("+", rest)) => Ok(Reply::Status(rest.to_owned())),
        Some(("-", rest)) => Ok(Reply::Error(rest.to_owned())),
        Some((":", rest)) => rest
            .parse()
            .map(Reply::Integer)
            .map_err(|_| format!("not a RESP integer: {rest:?}")),
        _ => Err(format!("not a RESP reply: {line:?}")),
    }
}

/// A service protocol the demo can knock on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Mysql,
    Postgres,
    Amqp,
    Redis,
}

impl Protocol {
    fn of_scheme(scheme: &str) -> Option<Self> {
        match scheme {
            "mysql" | "mariadb" => Some(Self::Mysql),
            "postgres" | "postgresql" => Some(Self::Postgres),
            "amqp" => Some(Self::Amqp),
            "redis" => Some(Self::Redis),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Mysql => "MySQL",
            Self::Postgres => "PostgreSQL",
            Self::Amqp => "AMQP",
            Self::Redis => "Redis",
        }
    }
}

/// One bound service `/services` knocks on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bound {
    /// The service instance's name.
    name: String,
    protocol: Protocol,
    host: String,
    port: u16,
}

/// Most services `/services` knocks on.
const MAX_BOUND: usize = 32;

/// Every service in `VCAP_SERVICES` whose credentials' `uri` names a protocol the demo knows;
/// host and port from `hostname`/`host` and `port`, else from the URI.
fn bound_from_vcap(vcap: &str) -> Vec<Bound> {
    let Ok(services) = serde_json::from_str::<serde_json::Value>(vcap) else {
        return Vec::new();
    };
    let Some(offerings) = services.as_object() else {
        return Vec::new();
    };
    let text = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_owned);
    offerings
        .values()
        .filter_map(|v| v.as_array())
        .flatten()
        .filter_map(|entry| {
            let creds = entry.get("credentials")?;
            let uri = reqwest::Url::parse(&text(creds.get("uri"))?).ok()?;
            let protocol = Protocol::of_scheme(uri.scheme())?;
            let host = text(creds.get("hostname"))
                .or_else(|| text(creds.get("host")))
                .or_else(|| uri.host_str().map(str::to_owned))?;
            let port = creds
                .get("port")
                .and_then(|p| p.as_u64().and_then(|p| u16::try_from(p).ok()))
                .or_else(|| uri.port())?;
            Some(Bound {
                name: text(entry.get("name")).unwrap_or_default(),
                protocol,
                host,
                port,
            })
        })
        .take(MAX_BOUND)
        .collect()
}

/// `GET /services`: one line per bound service, knocked on all at once.
async fn services(State(demo): State<Demo>) -> String {
    if demo.bound.is_empty() {
        return "no MySQL, PostgreSQL, RabbitMQ or Redis service is bound\n".to_owned();
    }
    let knocks = demo.bound.iter().map(|b| async move {
        let outcome = match tokio::time::timeout(REDIS_DEADLINE, knock(b)).await {
            Ok(Ok(greeting)) => format!("reached: {greeting}"),
            Ok(Err(e)) => e,
            Err(_) => "no answer within 2 s".to_owned(),
        };
        format!(
            "{} service {:?} at {}:{}: {outcome}\n",
            b.protocol.name(),
            b.name,
            b.host,
            b.port
        )
    });
    let lines = futures_util::future::join_all(knocks).await;
    for line in &lines {
        print!("{line}");
    }
    lines.concat()
}

/// The first step of the protocol's own handshake; what the server said, escaped.
async fn knock(b: &Bound) -> Result<String, String> {
    let mut stream = tokio::net::TcpStream::connect((b.host.as_str(), b.port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let read = |e: std::io::Error| format!("no greeting: {e}");
    match b.protocol {
        Protocol::Mysql => {
            // A 4-byte packet header, then protocol version 10 and the server's version.
            let mut head = [0u8; 4];
            stream.read_exact(&mut head).await.map_err(read)?;
            let len = usize::from(head[0]) | usize::from(head[1]) << 8 | usize::from(head[2]) << 16;
            let mut payload = vec![0u8; len.min(256)];
            stream.read_exact(&mut payload).await.map_err(read)?;
            match payload.first() {
                Some(10) => {
                    let version: Vec<u8> = payload[1..]
                        .iter()
                        .take_while(|c| **c != 0)
                        .copied()
                        .collect();
                    Ok(format!(
                        "MySQL protocol 10, server {:?}",
                        String::from_utf8_lossy(&version)
                    ))
                }
                Some(0xff) => Err(format!(
                    "the server refused: {:?}",
                    String::from_utf8_lossy(payload.get(3..).unwrap_or_default())
                )),
                _ => Err(format!("not a MySQL greeting: {payload:?}")),
            }
        }
        Protocol::Postgres => {
            // SSLRequest: length 8, code 80877103; a server answers one byte, S or N.
            stream
                .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
                .await
                .map_err(read)?;
            let mut answer = [0u8; 1];
            stream.read_exact(&mut answer).await.map_err(read)?;
            match answer[0] {
                b'S' | b'N' => Ok(format!(
                    "PostgreSQL answered the SSL request with {:?}",
                    char::from(answer[0])
                )),
                other => Err(format!("not a PostgreSQL answer: {other:#04x}")),
            }
        }
        Protocol::Amqp => {
            // The protocol header; the server opens with a Connection.Start method frame
            // (type 1, channel 0, class 10, method 10).
            stream.write_all(b"AMQP\0\0\x09\x01").await.map_err(read)?;
            let mut frame = [0u8; 11];
            stream.read_exact(&mut frame).await.map_err(read)?;
            if frame[0] == 1 && frame[1..3] == [0, 0] && frame[7..11] == [0, 10, 0, 10] {
                Ok("AMQP 0-9-1 Connection.Start".to_owned())
            } else {
                Err(format!("not an AMQP 0-9-1 greeting: {frame:?}"))
            }
        }
        Protocol::Redis => {
            stream.write_all(b"PING\r\n").await.map_err(read)?;
            let mut line = String::new();
            BufReader::new(stream)
                .take(MAX_REPLY_LINE)
                .read_line(&mut line)
                .await
                .map_err(read)?;
            match parse_reply(line.trim_end_matches("\r\n"))? {
                // Without AUTH a protected server answers NOAUTH: still a Redis server.
                Reply::Status(s) | Reply::Error(s) => Ok(format!("Redis answered PING: {s:?}")),
                Reply::Integer(n) => Err(format!("not a PING answer: {n}")),
            }
        }
    }
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
        "not found: try /, /status/500, /delay/200, /log/10, /services or /crash\n",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_redis_service_is_found_by_label_tag_or_uri() {
        let vcap = r#"{
          "postgresql": [{"name": "db", "label": "postgresql", "tags": [],
                          "credentials": {"uri": "postgres://u:p@10.0.0.9:5432/d"}}],
          "redis": [{"name": "cache", "label": "redis", "tags": ["redis"],
                     "credentials": {"host": "10.0.0.7", "port": 41000, "username": "b1",
                                     "password": "s3cret", "uri": "redis://b1:s3cret@10.0.0.7:41000"}}]
        }"#;
        let found = redis_from_vcap(vcap).unwrap();
        assert_eq!(
            found,
            Redis {
                name: "cache".into(),
                host: "10.0.0.7".into(),
                port: 41000,
                username: Some("b1".into()),
                password: Some("s3cret".into()),
            }
        );
        let provided = r#"{"user-provided": [{"name": "mine", "label": "user-provided",
            "credentials": {"uri": "redis://:p%40ss@cache.example.com:6380"}}]}"#;
        let found = redis_from_vcap(provided).unwrap();
        assert_eq!(
            (
                found.host.as_str(),
                found.port,
                found.username,
                found.password.as_deref()
            ),
            ("cache.example.com", 6380, None, Some("p@ss"))
        );
        assert_eq!(redis_from_vcap(r#"{"postgresql": []}"#), None);
        assert_eq!(redis_from_vcap("not json"), None);
    }

    #[test]
    fn every_known_protocol_is_found_by_its_uri_scheme() {
        let vcap = r#"{
          "mysql": [{"name": "db", "credentials": {"hostname": "10.0.0.5", "port": 3306,
                     "uri": "mysql://u:p@10.0.0.5:3306/d?reconnect=true"}}],
          "postgresql": [{"name": "pg", "credentials": {"uri": "postgres://u:p@10.0.0.9:5433/d"}}],
          "rabbitmq": [{"name": "mq", "credentials": {"hostname": "10.0.0.6",
                        "uri": "amqp://u:p@10.0.0.6:5672/v"}}],
          "user-provided": [{"name": "web", "credentials": {"uri": "https://example.com"}}]
        }"#;
        let mut found = bound_from_vcap(vcap);
        found.sort_by(|a, b| a.name.cmp(&b.name));
        let seen: Vec<(&str, Protocol, &str, u16)> = found
            .iter()
            .map(|b| (b.name.as_str(), b.protocol, b.host.as_str(), b.port))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("db", Protocol::Mysql, "10.0.0.5", 3306),
                ("mq", Protocol::Amqp, "10.0.0.6", 5672),
                ("pg", Protocol::Postgres, "10.0.0.9", 5433),
            ]
        );
        assert!(bound_from_vcap("not json").is_empty());
    }

    #[tokio::test]
    async fn knocks_read_each_protocols_greeting_and_refuse_anything_else() {
        use tokio::io::AsyncReadExt as _;
        // A loopback server that answers the first bytes it reads with `answer`.
        async fn server(answer: &'static [u8]) -> u16 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            tokio::spawn(async move {
                while let Ok((mut s, _)) = listener.accept().await {
                    let mut buf = [0u8; 16];
                    // MySQL speaks first: answer at once unless the client sends something.
                    let _ = tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await;
                    let _ = s.write_all(answer).await;
                }
            });
            port
        }
        let bound = |protocol, port| Bound {
            name: "x".into(),
            protocol,
            host: "127.0.0.1".into(),
            port,
        };
        let greeting = b"\x0d\x00\x00\x00\x0a10.11-Maria\x00";
        let port = server(greeting).await;
        let said = knock(&bound(Protocol::Mysql, port)).await.unwrap();
        assert!(said.contains("10.11-Maria"), "{said}");
        let port = server(b"N").await;
        assert!(knock(&bound(Protocol::Postgres, port)).await.is_ok());
        let port = server(b"\x01\x00\x00\x00\x00\x01\x00\x00\x0a\x00\x0a").await;
        assert!(knock(&bound(Protocol::Amqp, port)).await.is_ok());
        let port = server(b"-NOAUTH Authentication required.\r\n").await;
        assert!(knock(&bound(Protocol::Redis, port)).await.is_ok());
        // A server of another kind is not taken for the one the binding names.
        let port = server(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        for protocol in [Protocol::Mysql, Protocol::Postgres, Protocol::Amqp] {
            let e = knock(&bound(protocol, port)).await.unwrap_err();
            assert!(!e.contains('\r'), "escaped: {e}");
        }
    }

    #[test]
    fn replies_parse_and_hostile_ones_are_refused_escaped() {
        assert_eq!(parse_reply("+OK"), Ok(Reply::Status("OK".into())));
        assert_eq!(parse_reply(":42"), Ok(Reply::Integer(42)));
        assert_eq!(
            parse_reply("-WRONGPASS invalid"),
            Ok(Reply::Error("WRONGPASS invalid".into()))
        );
        assert!(parse_reply(":4x").is_err());
        assert!(parse_reply("").is_err());
        let hostile = parse_reply("\u{1b}[2J").unwrap_err();
        assert!(!hostile.contains('\u{1b}'), "{hostile}");
        assert!(hostile.contains("\\u{1b}[2J"), "{hostile}");
    }
}
