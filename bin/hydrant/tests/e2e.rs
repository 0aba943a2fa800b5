//! End to end through the real `hydrant` binary: `hydrant up` starts the micro cloud, then the CLI
//! sends log lines with `hydrant emit` and reads them back with `hydrant logs` — the path a
//! developer takes on day one, over real sockets between real roles.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

#[path = "support/cli.rs"]
mod cli;

use cli::{Up, term, text, wait_for};
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_hydrant");

impl Up {
    fn start() -> Self {
        Self::start_in(tempfile::tempdir().unwrap())
    }

    /// `hydrant up` on an existing home (and so data dir), e.g. after a crash.
    fn start_in(home: tempfile::TempDir) -> Self {
        Self::start_with(home, &[])
    }

    /// `hydrant up` with extra flags.
    fn start_with(home: tempfile::TempDir, extra: &[&str]) -> Self {
        Self::start_with_stderr(home, extra, Stdio::inherit())
    }

    /// `hydrant up` with extra flags and its stderr sent to `stderr`.
    fn start_with_stderr(home: tempfile::TempDir, extra: &[&str], stderr: Stdio) -> Self {
        Self::launch(home, extra, Stdio::piped(), stderr)
    }

    fn cli_spawn(&self, args: &[&str]) -> Child {
        Command::new(BIN)
            .args(args)
            .env("HYDRANT_HOME", self.home.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    }

    /// The processes of this micro cloud's app instances, as a user checks them in a container
    /// world: every `cgroup.procs` under the executor's cgroup parent (named in
    /// `endpoints.json`), in the pids hierarchy (cgroup v1) or the unified one (v2).
    fn instance_pids(&self) -> Vec<i32> {
        let parent = self.endpoints()["networks"]["executor_cgroup_parent"]
            .as_str()
            .expect("endpoints.json names the executor's cgroup parent (containers are on)")
            .to_owned();
        let root = Path::new("/sys/fs/cgroup");
        let base = if root.join("cgroup.controllers").exists() {
            root.join(&parent)
        } else {
            root.join("pids").join(&parent)
        };
        let mut pids = Vec::new();
        let mut dirs = vec![base];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(entry.path());
                }
            }
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        pids
    }

    fn stop(mut self) -> std::process::ExitStatus {
        // SIGTERM, as an init system would send; Ctrl-C takes the same path.
        term(self.child.id());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "hydrant up did not stop within 20 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn http_status(base: &str, path: &str, token: Option<&str>) -> u16 {
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The body of a GET on a loopback admin endpoint, with a bearer token.
fn http_get_with_token(addr: &str, path: &str, token: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

fn is_cf_line(line: &str, index: &str, stream: &str) -> bool {
    // "   2024-10-03T07:53:50.57+0000 [APP/PROC/WEB/0] OUT message"
    line.starts_with("   ") && line.contains(&format!("[APP/PROC/WEB/{index}] {stream} "))
}

#[test]
fn up_emit_logs_recent_and_follow() {
    let up = Up::start();
    let endpoints = up.endpoints();
    let firehose = endpoints["firehose"].as_str().unwrap().to_owned();
    assert!(endpoints["token"].as_str().unwrap().len() > 20);

    // Every role answers its health check.
    for (role, url) in endpoints["admin"].as_object().unwrap() {
        assert_eq!(
            http_status(url.as_str().unwrap(), "/healthz", None),
            200,
            "{role} /healthz"
        );
    }
    // The firehose needs a token.
    assert_eq!(http_status(&firehose, "/api/v1/read/e2e-app", None), 401);
    assert_eq!(
        http_status(&firehose, "/api/v1/read/e2e-app", Some("not-a-token")),
        401
    );

    // A payload with an escape sequence and a bell: it must reach the terminal escaped.
    let out = up.cli(&[
        "emit",
        "e2e-app",
        "--message",
        "hello \u{1b}[2Jworld\u{7}",
        "--count",
        "3",
    ]);
    assert!(
        out.status.success(),
        "emit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut recent = String::new();
    wait_for(Duration::from_secs(20), "3 recent lines", || {
        let out = up.cli(&["logs", "e2e-app", "--recent"]);
        recent = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success() && recent.lines().filter(|l| l.contains("hello")).count() == 3
    });
    let lines: Vec<&str> = recent.lines().filter(|l| l.contains("hello")).collect();
    for (i, line) in lines.iter().enumerate() {
        assert!(
            is_cf_line(line, "0", "OUT"),
            "not Cloud Foundry's format: {line:?}"
        );
        assert!(
            line.ends_with(&format!("{}", i + 1)),
            "recent lines not oldest first: {lines:?}"
        );
        assert!(
            !line.contains('\u{1b}') && !line.contains('\u{7}'),
            "raw control bytes: {line:?}"
        );
        assert!(
            line.contains("\\e[2J"),
            "escape sequence not shown escaped: {line:?}"
        );
    }

    // --json gives one protojson object per line.
    let out = up.cli(&["logs", "e2e-app", "--recent", "--json"]);
    let first: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["source_id"], "e2e-app");
    assert_eq!(first["tags"]["source_type"], "APP/PROC/WEB");

    // Follow: the recent lines first, then new ones, each exactly once.
    let mut follow = cli::Killed(up.cli_spawn(&["logs", "e2e-app"]));
    let rx = cli::lines(follow.0.stdout.take().unwrap(), 10_000);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen
        .iter()
        .filter(|l: &&String| l.contains("hello"))
        .count()
        < 3
    {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap();
        seen.push(line);
    }
    let out = up.cli(&[
        "emit",
        "e2e-app",
        "--message",
        "live",
        "--count",
        "5",
        "--err",
        "--instance",
        "1",
    ]);
    assert!(out.status.success());
    while seen.iter().filter(|l| l.contains("live")).count() < 5 {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("live lines did not arrive; saw {seen:?}"));
        seen.push(line);
    }
    drop(follow);
    let live: Vec<&String> = seen.iter().filter(|l| l.contains("live")).collect();
    assert_eq!(live.len(), 5);
    assert!(live.iter().all(|l| is_cf_line(l, "1", "ERR")), "{live:?}");
    assert_eq!(
        seen.iter().filter(|l| l.contains("hello")).count(),
        3,
        "duplicates: {seen:?}"
    );

    // Unknown command input gets a clear error and a failing exit code.
    let out = up.cli(&["emit", "e2e-app", "--message", "x", "--count", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--count"));

    assert!(up.stop().success(), "hydrant up did not exit cleanly");
}

#[test]
fn commands_without_a_running_cloud_say_what_to_do() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["logs", "some-app", "--recent"])
        .env("HYDRANT_HOME", home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hydrant up"), "unhelpful error: {err}");
    let _ = Path::new(".");
}

/// One HTTP/1.1 request through the router: `(status, head in lower case, body)`.
fn via_router(router: &str, host: &str, path: &str) -> (u16, String, String) {
    let addr = router.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

#[test]
fn push_route_scale_logs_and_events() {
    let up = Up::start();
    let endpoints = up.endpoints();
    let router = endpoints["router"].as_str().unwrap().to_owned();
    let app_dir = cli::demo_app();
    let app_path = app_dir.path().to_str().unwrap();

    // Push: staged from the Procfile, started, and reachable through the router by Host.
    let out = up.cli(&["push", "web", "-p", app_path]);
    assert!(out.status.success(), "push failed: {}", text(&out));
    let pushed = text(&out);
    assert!(
        pushed.contains("Procfile detected"),
        "no staging lines: {pushed}"
    );
    assert!(
        pushed.contains("http://web.apps.localhost:"),
        "no route printed: {pushed}"
    );
    let (status, head, body) = via_router(&router, "web.apps.localhost", "/");
    assert_eq!(status, 200, "{head}{body}");
    assert!(body.contains("instance 0"), "{body}");
    assert!(head.contains("x-vcap-request-id:"), "{head}");
    // Host matching ignores case and the port.
    let (status, _, _) = via_router(&router, "WEB.apps.localhost:80", "/");
    assert_eq!(status, 200);

    // The app's stream has the router's access line and the app's own line for a request.
    let (status, _, _) = via_router(&router, "web.apps.localhost", "/delay/1");
    assert_eq!(status, 200);
    let mut recent = String::new();
    wait_for(Duration::from_secs(20), "RTR and APP lines", || {
        let out = up.cli(&["logs", "web", "--recent", "--lines", "1000"]);
        recent = String::from_utf8_lossy(&out.stdout).into_owned();
        recent.contains("[RTR/0] OUT") && recent.contains("[APP/PROC/WEB/0] OUT GET /delay/1")
    });
    assert!(recent.contains("[STG/0] OUT"), "{recent}");
    assert!(recent.contains("[CELL/0] OUT"), "{recent}");
    let rtr = recent
        .lines()
        .find(|l| l.contains("[RTR/0]") && l.contains("/delay/1"))
        .unwrap();
    assert!(rtr.contains("\"GET /delay/1 HTTP/1.1\" 200"), "{rtr}");

    // Re-pushing an unchanged app uploads nothing.
    let out = up.cli(&["push", "web", "-p", app_path]);
    assert!(out.status.success(), "re-push failed: {}", text(&out));
    assert!(text(&out).contains("0 of 1 files"), "{}", text(&out));

    // Scale to 3: the router spreads requests over every instance.
    let out = up.cli(&["scale", "web", "-i", "3"]);
    assert!(out.status.success(), "scale failed: {}", text(&out));
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let (status, _, body) = via_router(&router, "web.apps.localhost", "/");
        assert_eq!(status, 200, "{body}");
        let index = body
            .split("instance ")
            .nth(1)
            .unwrap()
            .chars()
            .next()
            .unwrap();
        seen.insert(index);
    }
    assert_eq!(seen.len(), 3, "round-robin reached only {seen:?}");
    let out = up.cli(&["app", "web", "--json"]);
    let app: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(app["instances"].as_array().unwrap().len(), 3);

    // A crash becomes an audit event with the exit status.
    let (status, _, _) = via_router(&router, "web.apps.localhost", "/crash");
    assert_eq!(status, 200);
    wait_for(Duration::from_secs(20), "the crash event", || {
        let out = up.cli(&["events", "web", "--json"]);
        let events: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        events.as_array().is_some_and(|list| {
            list.iter()
                .any(|e| e["type"] == "audit.app.process.crash" && e["data"]["exit_status"] == 1)
        })
    });
    let out = up.cli(&["events", "web"]);
    let events = text(&out);
    for kind in ["audit.app.create", "audit.app.start", "audit.app.scale"] {
        assert!(events.contains(kind), "{kind} missing from {events}");
    }

    // Router-made errors are marked and say what happened.
    let (status, head, body) = via_router(&router, "nope.apps.localhost", "/");
    assert_eq!(status, 404);
    assert!(
        head.contains("x-hydrant-router-error: unknown_route"),
        "{head}"
    );
    assert!(body.contains("nope.apps.localhost"), "{body}");

    // Listing commands speak JSON for scripts.
    let out = up.cli(&["apps", "--json"]);
    let apps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(apps[0]["name"], "web");
    let out = up.cli(&["routes", "--json"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("web.apps.localhost"));

    // Stopping the app takes its route away: the router answers for it, marked.
    let out = up.cli(&["stop", "web"]);
    assert!(out.status.success(), "stop failed: {}", text(&out));
    wait_for(Duration::from_secs(20), "the route to go", || {
        let (status, head, _) = via_router(&router, "web.apps.localhost", "/");
        status != 200 && head.contains("x-hydrant-router-error")
    });

    assert!(up.stop().success(), "hydrant up did not exit cleanly");
}

#[test]
fn bad_pushes_and_crashing_apps_get_clear_errors_and_exit_codes() {
    let up = Up::start();

    // A directory that does not exist, and an empty one: bad input, exit 2.
    let out = up.cli(&["push", "ghost", "-p", "/nonexistent/app/dir"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no such directory"), "{}", text(&out));
    let empty = tempfile::tempdir().unwrap();
    let out = up.cli(&["push", "empty", "-p", empty.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("empty"), "{}", text(&out));

    // A bad size, and an app that does not exist.
    let out = up.cli(&["scale", "ghost", "-m", "12X"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("256M or 1G"), "{}", text(&out));
    let out = up.cli(&["scale", "ghost", "-i", "2"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("hydrant apps"), "{}", text(&out));

    // A directory with nothing runnable: staging fails and says what to add.
    let junk = tempfile::tempdir().unwrap();
    std::fs::write(junk.path().join("notes.txt"), "not an app\n").unwrap();
    let out = up.cli(&["push", "junk", "-p", junk.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("Procfile"), "{}", text(&out));

    // An app that crashes at start: push fails, naming the crash and where to look.
    let app = cli::demo_app();
    let out = up.cli(&[
        "push",
        "crasher",
        "-p",
        app.path().to_str().unwrap(),
        "-c",
        "echo about to fail >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("crashed"), "{}", text(&out));
    let mut recent = String::new();
    wait_for(Duration::from_secs(20), "the crasher's stderr line", || {
        let out = up.cli(&["logs", "crasher", "--recent"]);
        recent = String::from_utf8_lossy(&out.stdout).into_owned();
        recent.contains("[APP/PROC/WEB/0] ERR about to fail")
    });

    assert!(up.stop().success(), "hydrant up did not exit cleanly");
}

#[test]
fn a_flooding_app_hits_its_log_rate_limit_and_other_apps_are_unaffected() {
    let up = Up::start();
    let router = up.endpoint("router");
    let app = cli::demo_app();
    let dir = app.path().to_str().unwrap();
    let out = up.cli(&["push", "quiet", "-p", dir]);
    assert!(out.status.success(), "{}", text(&out));
    // 1 KB lines as fast as `yes` writes them (tens of MB/s), while serving HTTP.
    let out = up.cli(&[
        "push",
        "flood",
        "-p",
        dir,
        "-c",
        "yes \"$(head -c 1000 /dev/zero | tr '\\0' x)\" & exec \"$HYDRANT_BIN\" demo-app",
    ]);
    assert!(out.status.success(), "{}", text(&out));

    // The flooder's own stream says it hit the limit.
    wait_for(Duration::from_secs(20), "the rate-limit notice", || {
        let out = up.cli(&["logs", "flood", "--recent", "--lines", "1000"]);
        String::from_utf8_lossy(&out.stdout).contains("exceeded log rate limit")
    });
    // The quiet app keeps serving, and its request lines still arrive, during the flood.
    for i in 0..10 {
        let (status, _, _) = via_router(&router, "quiet.apps.localhost", &format!("/delay/{i}"));
        assert_eq!(status, 200);
    }
    wait_for(Duration::from_secs(20), "the quiet app's lines", || {
        let out = up.cli(&["logs", "quiet", "--recent", "--lines", "1000"]);
        let logs = String::from_utf8_lossy(&out.stdout).into_owned();
        (0..10).all(|i| logs.contains(&format!("GET /delay/{i} 200")))
    });
    // The drops are counted at the agent.
    let agent_admin = up.endpoints()["admin"]["agent"]
        .as_str()
        .unwrap()
        .to_owned();
    let addr = agent_admin.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut metrics = String::new();
    s.read_to_string(&mut metrics).unwrap();
    let limited: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("agent_dropped_total") && l.contains("rate_limited"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(limited > 0.0, "no rate-limit drops counted:\n{metrics}");

    assert!(up.stop().success(), "hydrant up did not exit cleanly");
}

#[test]
fn instances_left_by_a_killed_micro_cloud_are_stopped_by_the_next_one() {
    let mut up = Up::start();
    let _app = up.push_demo("orphan");
    let pids = up.instance_pids();
    assert!(
        !pids.is_empty(),
        "the instance's container has no processes"
    );
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    };
    let any_alive = || pids.iter().any(|p| alive(*p));
    assert!(any_alive());

    // SIGKILL: the executor gets no chance to stop its instances.
    up.child.kill().unwrap();
    up.child.wait().unwrap();
    assert!(
        any_alive(),
        "the instance's container should have outlived its killed parent"
    );

    let home = std::mem::replace(&mut up.home, tempfile::tempdir().unwrap());
    drop(up);
    let up = Up::start_in(home);
    wait_for(
        Duration::from_secs(20),
        "the orphaned instance's container to be killed",
        || !any_alive(),
    );
    assert!(up.stop().success());
}

#[test]
fn the_health_manager_restarts_a_killed_instance_at_once_and_says_so() {
    let up = Up::start();
    let router = up.endpoint("router");
    let _app = up.push_demo("phoenix");
    // A crash: every process in the instance's container dies at once.
    let pids = up.instance_pids();
    assert!(
        !pids.is_empty(),
        "the instance's container has no processes"
    );
    let killed = Instant::now();
    for pid in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }

    // The restart is visible in the app's own stream, and the app serves again.
    let mut recent = String::new();
    wait_for(Duration::from_secs(20), "an HM restart line", || {
        let out = up.cli(&["logs", "phoenix", "--recent", "--lines", "1000"]);
        recent = String::from_utf8_lossy(&out.stdout).into_owned();
        recent.contains("[HM/") && recent.contains("Restarting instance 0")
    });
    eprintln!("HM restart line seen {:?} after the kill", killed.elapsed());
    wait_for(Duration::from_secs(20), "the app to serve again", || {
        via_router(&router, "phoenix.apps.localhost", "/").0 == 200
    });
    eprintln!("serving again {:?} after the kill", killed.elapsed());
    let out = up.cli(&["events", "phoenix"]);
    let events = text(&out);
    assert!(events.contains("audit.app.process.crash"), "{events}");
    assert!(events.contains("audit.app.process.restart"), "{events}");

    assert!(up.stop().success(), "hydrant up did not exit cleanly");
}

#[test]
fn an_availability_slo_pages_when_the_app_returns_500s() {
    let up = Up::start();
    let router = up.endpoint("router");
    let app = up.push_demo("shop");
    let spec = app.path().join("slo.json");
    std::fs::write(
        &spec,
        r#"{"slos":[{"name":"availability","sli":{"type":"availability"},"objective":99.9,"min_requests":20}]}"#,
    )
    .unwrap();
    let out = up.cli(&["slo", "shop", "--set", spec.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));

    // A total outage: every request answers 500.
    for _ in 0..40 {
        assert_eq!(
            via_router(&router, "shop.apps.localhost", "/status/500").0,
            500
        );
    }
    let started = Instant::now();
    let mut status = serde_json::Value::Null;
    wait_for(Duration::from_secs(60), "a page alert", || {
        let out = up.cli(&["slo", "shop", "--json"]);
        status = serde_json::from_slice(&out.stdout).unwrap_or_default();
        status["status"]["slos"][0]["alerts"]
            .as_array()
            .is_some_and(|a| a.iter().any(|alert| alert["severity"] == "page"))
    });
    eprintln!("paged {:?} after the outage began", started.elapsed());
    let slo = &status["status"]["slos"][0];
    assert!(slo["budget_remaining"].as_f64().unwrap() < 0.0, "{slo}");
    assert!(slo["sli_1h"].as_f64().unwrap() < 1.0, "{slo}");
    // The alert is in the app's own stream too.
    wait_for(Duration::from_secs(20), "the SLO line", || {
        let out = up.cli(&["logs", "shop", "--recent", "--lines", "1000"]);
        String::from_utf8_lossy(&out.stdout).contains("PAGE FIRING")
    });

    assert!(up.stop().success(), "hydrant up did not exit cleanly");
}

#[test]
fn an_app_drain_is_served_by_the_platform_and_reports_its_status() {
    use hydrant_nozzle_syslog::rsyslogd::{FIELDS_TEMPLATE, Rsyslogd};

    let rsyslog = Rsyslogd::start(FIELDS_TEMPLATE)
        .unwrap_or_else(|e| panic!("{e} (./scripts/test installs the Debian package rsyslog)"));
    let drain = format!("syslog://drainer:hunter2@127.0.0.1:{}", rsyslog.port);
    // The micro cloud's user is its operator: a drain to a local rsyslog is allowed.
    let up = Up::start();
    let app_dir = tempfile::tempdir().unwrap();
    std::fs::write(app_dir.path().join("index.html"), "<h1>drained</h1>").unwrap();
    let out = up.cli(&["push", "site", "-p", app_dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "push failed: {}", text(&out));
    let out = up.cli(&["app", "site", "--json"]);
    let app: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let guid = app["app"]["guid"].as_str().unwrap().to_owned();

    let out = up.cli(&["drain", "site", &drain]);
    assert!(out.status.success(), "drain failed: {}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("drainer:****@127.0.0.1") && !said.contains("hunter2"),
        "{said}"
    );

    // The nozzle picks the binding up within its poll interval; lines sent before that reach
    // the firehose but not the drain, so keep sending until the drain has some, then count a
    // marked batch exactly.
    wait_for(Duration::from_secs(30), "the drain to start", || {
        let out = up.cli(&["emit", &guid, "-m", "warm-up"]);
        assert!(out.status.success(), "{}", text(&out));
        std::fs::read_to_string(&rsyslog.out).is_ok_and(|t| t.contains("warm-up"))
    });
    let out = up.cli(&["emit", &guid, "-m", "drained-line", "-n", "200"]);
    assert!(out.status.success(), "{}", text(&out));
    let marked = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&rsyslog.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| {
                r["msg"]
                    .as_str()
                    .is_some_and(|m| m.contains("drained-line"))
            })
            .collect()
    };
    wait_for(
        Duration::from_secs(30),
        "200 marked lines in rsyslog",
        || marked().len() >= 200,
    );
    let records = marked();
    assert_eq!(records.len(), 200, "no duplicates");
    // HOSTNAME is space.app, APP-NAME the app's guid, as Cloud Foundry's drains write them.
    for r in &records {
        assert_eq!(r["app"], guid.as_str(), "{r}");
        assert!(r["host"].as_str().unwrap().ends_with(".site"), "{r}");
        assert_eq!(r["procid"], "[APP/PROC/WEB/0]", "{r}");
    }

    // The developer sees the drain's health, reported by the nozzle.
    wait_for(Duration::from_secs(20), "a status with sent lines", || {
        let out = up.cli(&["drain", "site", "--status", "--json"]);
        let drains: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        drains[0]["status"]["sent"].as_u64().unwrap_or(0) >= 200
    });
    let out = up.cli(&["drain", "site", "--status"]);
    let table = text(&out);
    assert!(
        table.contains("ok") && table.contains("drainer:****@"),
        "{table}"
    );
    assert!(!table.contains("hunter2"), "{table}");
    let out = up.cli(&["drains"]);
    assert!(text(&out).contains("site"), "{}", text(&out));

    // Unbinding stops the drain: later lines do not arrive.
    let out = up.cli(&["undrain", "site", &drain]);
    assert!(out.status.success(), "undrain failed: {}", text(&out));
    let out = up.cli(&["undrain", "site", &drain]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let admin = up.endpoints()["admin"]["nozzle-syslog"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .to_owned();
    // `/drains` is the operator's page: the admin token opens it (and without one it says
    // nothing, which must not pass for "dropped").
    let token = up.endpoints()["token"].as_str().unwrap().to_owned();
    wait_for(
        Duration::from_secs(20),
        "the nozzle to drop the binding",
        || {
            let page = http_get_with_token(&admin, "/drains", &token);
            page.starts_with('[') && !page.contains(&guid)
        },
    );
    let before = std::fs::read_to_string(&rsyslog.out).unwrap();
    let out = up.cli(&["emit", &guid, "-m", "after-undrain", "-n", "50"]);
    assert!(out.status.success());
    // Lines sent after the drain stopped go nowhere near it; a line that was routed would have
    // arrived well within the time the marked batch above took.
    let out = up.cli(&["logs", "site", "--recent"]);
    assert!(
        text(&out).contains("after-undrain"),
        "the lines reached the platform"
    );
    let after = std::fs::read_to_string(&rsyslog.out).unwrap();
    assert_eq!(before.len(), after.len(), "nothing more reached the drain");
    assert!(up.stop().success());
}

#[test]
fn drains_to_private_addresses_are_refused_when_the_operator_says_so() {
    let up = Up::start_with(tempfile::tempdir().unwrap(), &["--refuse-private-drains"]);
    let app_dir = tempfile::tempdir().unwrap();
    std::fs::write(app_dir.path().join("index.html"), "<h1>x</h1>").unwrap();
    let out = up.cli(&["push", "site", "-p", app_dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "push failed: {}", text(&out));
    let out = up.cli(&["drain", "site", "syslog://u:hunter2@127.0.0.1:514"]);
    assert!(!out.status.success());
    let said = text(&out);
    assert!(said.contains("allow_private_drains"), "{said}");
    assert!(!said.contains("hunter2"), "{said}");
    let out = up.cli(&["drain", "site", "ftp://example.com"]);
    assert!(text(&out).contains("not supported"), "{}", text(&out));
    let out = up.cli(&["drains", "site"]);
    assert!(text(&out).contains("No drains"), "{}", text(&out));
}

#[test]
fn up_says_why_it_cannot_make_containers_and_how_to_fix_it() {
    // No `runc` on PATH (and, run without root, no root either): `hydrant up` must stop with the
    // reason and the fixes, not run apps unisolated behind the user's back.
    let home = tempfile::tempdir().unwrap();
    let empty_path = tempfile::tempdir().unwrap();
    let stderr_path = home.path().join("stderr");
    let mut child = Command::new(BIN)
        .args(["up", "--ephemeral-ports", "--data-dir"])
        .arg(home.path().join("data"))
        .env("HYDRANT_HOME", home.path())
        .env("PATH", empty_path.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let mut status = None;
    wait_for(Duration::from_secs(30), "hydrant up to give up", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(!status.unwrap().success(), "{stderr}");
    assert!(stderr.contains("--isolation none"), "{stderr}");
    // Refused before anything starts: no platform came up, so nothing tells a user it is up.
    assert!(
        !home.path().join("data").join("endpoints.json").exists(),
        "endpoints.json written by a platform that cannot isolate apps: {stderr}"
    );
    if nix::unistd::geteuid().is_root() {
        assert!(stderr.contains("apt-get install runc"), "{stderr}");
    } else {
        assert!(stderr.contains("root"), "{stderr}");
    }
}

/// Started by an unprivileged user, `hydrant up` refuses before anything starts and says what
/// on this kernel blocks rootless containers (cgroup v1 here; an undelegated cgroup on v2), with
/// the ways out.
#[test]
fn up_as_an_unprivileged_user_says_what_blocks_rootless_containers() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test switches to the unprivileged user nobody with setpriv, which needs root: run \
         it as root, as CI does"
    );
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(home.path(), Some(65_534), Some(65_534)).unwrap();
    let stderr_path = home.path().join("stderr");
    let mut child = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            BIN,
        ])
        .args(["up", "--ephemeral-ports", "--data-dir"])
        .arg(home.path().join("data"))
        .env("HYDRANT_HOME", home.path())
        .env("HOME", home.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("setpriv (Debian package util-linux) must be installed");
    let mut status = None;
    wait_for(Duration::from_secs(30), "hydrant up to give up", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(!status.unwrap().success(), "{stderr}");
    for expected in [
        "runs as uid 65534",
        "rootless containers (a user namespace mapping uid 65534 to 2000 inside)",
        "--isolation none",
    ] {
        assert!(stderr.contains(expected), "{expected:?} missing: {stderr}");
    }
    let blocker = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "not delegated to uid 65534"
    } else {
        "cgroup v1"
    };
    assert!(stderr.contains(blocker), "{blocker:?} missing: {stderr}");
    assert!(
        !home.path().join("data").join("endpoints.json").exists(),
        "endpoints.json written by a platform that cannot isolate apps: {stderr}"
    );
}

/// Never silently unisolated: `hydrant up --isolation none` warns when it starts, every push
/// prints the warning (its staging runs unisolated), every start says so in the CELL lines,
/// and `hydrant app` says so beside instances that have no kernel limits.
#[test]
fn isolation_none_runs_apps_unisolated_and_says_so_on_every_push() {
    let home = tempfile::tempdir().unwrap();
    let stderr_path = home.path().join("up.stderr");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let up = Up::start_with_stderr(home, &["--isolation", "none"], stderr.into());
    let started = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(
        started.contains("WARNING: apps run WITHOUT isolation"),
        "no warning at start: {started}"
    );
    // No container networks of its own: nothing to name.
    assert!(up.endpoints().get("networks").is_none());
    let app = cli::demo_app();
    for push in ["first", "second"] {
        let out = up.cli(&["push", "bare", "-p", app.path().to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("WITHOUT isolation"),
            "the {push} push did not warn: {}",
            text(&out)
        );
    }
    let mut recent = String::new();
    wait_for(Duration::from_secs(20), "the unisolated warnings", || {
        let out = up.cli(&["logs", "bare", "--recent", "--lines", "1000"]);
        recent = String::from_utf8_lossy(&out.stdout).into_owned();
        recent.contains("running WITHOUT isolation")
    });
    let mut shown = String::new();
    wait_for(Duration::from_secs(30), "hydrant app to say so", || {
        shown = text(&up.cli(&["app", "bare"]));
        shown.contains("WITHOUT isolation") && shown.contains("(no limit)")
    });
    assert!(up.stop().success(), "hydrant up did not exit cleanly");
}

/// `hydrant app` shows each instance's container limits beside its usage, all from the
/// kernel's cgroup, and the app's stop grace; a grace outside 1-300 s is refused before
/// anything is pushed.
#[test]
fn hydrant_app_shows_each_instances_container_limits_usage_and_stop_grace() {
    let up = Up::start();
    let app = cli::demo_app();
    let path = app.path().to_str().unwrap();
    let out = up.cli(&["push", "limited", "-p", path, "--stop-timeout", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("between 1 and 300"), "{}", text(&out));
    let out = up.cli(&[
        "push",
        "limited",
        "-p",
        path,
        "-m",
        "128M",
        "--stop-timeout",
        "20",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let mut app = serde_json::Value::Null;
    wait_for(
        Duration::from_secs(30),
        "the instance's container metrics",
        || {
            let out = up.cli(&["app", "limited", "--json"]);
            app = serde_json::from_slice(&out.stdout).unwrap_or_default();
            // The first sample can come before runc has made the processes.
            app["instances"][0]["usage"]["pids"]
                .as_f64()
                .is_some_and(|p| p >= 1.0)
        },
    );
    let usage = &app["instances"][0]["usage"];
    assert_eq!(app["app"]["stop_timeout_secs"], 20, "{app}");
    assert_eq!(usage["isolation"], "container", "{usage}");
    assert_eq!(usage["pids_limit"], 2048.0, "{usage}");
    // Diego's shares for 128 MiB: 1024 x (100 x 128 / 8192) / 100.
    assert_eq!(usage["cpu_shares"], 10.0, "{usage}");
    assert_eq!(usage["memory_quota"], 128.0 * 1024.0 * 1024.0, "{usage}");
    assert!(usage["pids"].as_f64().unwrap() >= 1.0, "{usage}");
    assert!(usage["memory"].as_f64().unwrap() > 0.0, "{usage}");
    let shown = text(&up.cli(&["app", "limited"]));
    for expected in [
        "stop grace:  20 s",
        "of 2048",
        "10 of 1024",
        "pids",
        "cpu shares",
    ] {
        assert!(shown.contains(expected), "{expected:?} missing: {shown}");
    }
    assert!(!shown.contains("WITHOUT isolation"), "{shown}");
    assert!(up.stop().success(), "hydrant up did not exit cleanly");
}

/// Tokens expire, and the user does not notice: `hydrant up` saves a refresh token beside the
/// access token, and the CLI renews an access token that is expired or about to expire before
/// the command runs. `endpoints.json` says when its admin token expires.
#[test]
fn the_cli_renews_its_access_token_with_the_saved_refresh_token() {
    let up = Up::start();
    let endpoints = up.endpoints();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let expires = endpoints["token_expires_at"].as_i64().unwrap();
    assert!(
        expires > now && expires <= now + 8 * 3600 + 60,
        "the admin token expires within 8 h: {expires} vs now {now}"
    );
    assert!(endpoints["refresh_token"].is_string(), "{endpoints}");

    // An unusable access token in the CLI config: renewed before `hydrant apps` runs.
    let path = up.home.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["token"] = "expired.access.token".into();
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    let out = up.cli(&["apps"]);
    assert!(out.status.success(), "{}", text(&out));
    let renewed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_ne!(renewed["token"], "expired.access.token");
    assert_eq!(renewed["token"].as_str().unwrap().split('.').count(), 3);

    // Without the refresh token the same command fails and says to log in.
    config["refresh_token"] = serde_json::Value::Null;
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    let out = up.cli(&["apps"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("log in"), "{}", text(&out));
}
