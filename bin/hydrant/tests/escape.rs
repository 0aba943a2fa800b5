//! End to end through the real `hydrant` binary: `hydrant up --isolation container` runs a
//! pushed app in a container, and the app (a Python stdlib server that tries each escape on
//! every request and answers JSON) reads none of the platform's secrets, sees and signals no
//! other instance, reaches none of the platform's ports, and runs as uid 2000 — asked through
//! the router, as a user would reach it. Needs root (CI runs as root).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

#[path = "support/cli.rs"]
mod cli;
#[path = "support/router.rs"]
mod router;

use cli::{Up, wait_for};
use std::process::Stdio;
use std::time::{Duration, Instant};

const ESCAPE_APP: &str = r#"
import json, os, socket, subprocess, urllib.parse, http.server

def attempt(action):
    try:
        return "escaped: " + repr(action())[:100]
    except Exception as error:
        return "blocked: " + type(error).__name__

def other_environs(own):
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                text = open("/proc/%s/environ" % pid, "rb").read()
            except Exception:
                continue
            if b"CF_INSTANCE_GUID=" in text and own.encode() not in text:
                found.append(pid)
    return found

class Escape(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        own = os.environ["CF_INSTANCE_GUID"]
        report = {
            "guid": own,
            "uid": subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip(),
            "environ": other_environs(own),
        }
        for path in query.get("read", []):
            report["read " + path] = attempt(lambda: open(path).read())
        for pid in query.get("kill", []):
            report["kill " + pid] = attempt(lambda: os.kill(int(pid), 9))
        for addr in query.get("connect", []):
            host, port = addr.rsplit(":", 1)
            report["connect " + addr] = attempt(
                lambda: socket.create_connection((host, int(port)), timeout=1).close())
        body = json.dumps(report).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Escape).serve_forever()
"#;

impl Up {
    fn start() -> Self {
        Self::start_in(tempfile::tempdir().unwrap())
    }

    /// `hydrant up --isolation container` on an existing home (after a crash).
    fn start_in(home: tempfile::TempDir) -> Self {
        let extra = ["--isolation", "container"];
        Self::launch(home, &extra, Stdio::null(), Stdio::inherit())
    }

    /// The executor's cgroup parent: this micro cloud's own, named in `endpoints.json`.
    fn cgroup_parent(&self) -> String {
        self.endpoints()["networks"]["executor_cgroup_parent"]
            .as_str()
            .expect("endpoints.json names the executor's cgroup parent")
            .to_owned()
    }

    /// The executor bridge's own address (the first of its subnet): the host, from a container.
    fn gateway(&self) -> String {
        let subnet = self.endpoints()["networks"]["executor_subnet"]
            .as_str()
            .expect("endpoints.json names the executor's subnet")
            .to_owned();
        let base = subnet.split('/').next().unwrap();
        let addr: std::net::Ipv4Addr = base.parse().unwrap();
        std::net::Ipv4Addr::from(u32::from(addr) + 1).to_string()
    }
}

/// Host pids of the processes in instance containers of the micro cloud's executor, by guid.
fn instance_pids(parent: &str) -> Vec<(String, u32)> {
    let parent = format!("/{parent}/");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
            let line = cgroup.lines().find(|l| l.contains(":pids:"))?;
            let rest = line.split(parent.as_str()).nth(1)?;
            Some((rest.split('/').next()?.to_owned(), pid))
        })
        .collect()
}

#[test]
fn a_pushed_app_cannot_escape_its_container() {
    // Up::start fails the test naming the reason when not root.
    let up = Up::start();
    let endpoints = up.endpoints();
    let router = endpoints["router"].as_str().unwrap().to_owned();
    let data = up.home.path().join("data");
    let app = tempfile::tempdir().unwrap();
    std::fs::write(app.path().join("escape.py"), ESCAPE_APP).unwrap();
    std::fs::write(app.path().join("Procfile"), "web: exec python3 escape.py\n").unwrap();
    let out = up.cli(&["push", "escape", "-p", app.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "push failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = up.cli(&["scale", "escape", "-i", "2"]);
    assert!(out.status.success());
    wait_for(
        Duration::from_secs(60),
        "two instances in containers",
        || {
            let mut guids: Vec<String> = instance_pids(&up.cgroup_parent())
                .into_iter()
                .map(|(g, _)| g)
                .collect();
            guids.sort();
            guids.dedup();
            guids.len() >= 2
        },
    );

    let port = |url: &str| {
        url.rsplit(':')
            .next()
            .unwrap()
            .trim_end_matches('/')
            .to_owned()
    };
    let mut ports: Vec<String> = ["agent", "doppler", "firehose", "api", "router"]
        .iter()
        .map(|k| port(endpoints[*k].as_str().unwrap()))
        .collect();
    for (_, admin) in endpoints["admin"].as_object().unwrap() {
        ports.push(port(admin.as_str().unwrap()));
    }
    let mut query = vec![
        format!(
            "read={}",
            data.join("cloudcontroller/token_keys/active").display()
        ),
        format!("read={}", data.join("endpoints.json").display()),
        "read=/etc/shadow".to_owned(),
    ];
    for port in &ports {
        query.push(format!("connect=127.0.0.1:{port}"));
        // The bridge's own address (the pool's gateway): the host, seen from inside.
        query.push(format!("connect={}:{port}", up.gateway()));
    }
    // Ask until one instance answers; then try to kill every process of the other.
    let (status, body) = router::get_within(
        Duration::from_secs(30),
        &router,
        "escape.apps.localhost",
        &format!("/?{}", query.join("&")),
    );
    assert_eq!(status, 200, "{body}");
    let first: serde_json::Value = serde_json::from_str(&body).unwrap();
    let own = first["guid"].as_str().unwrap().to_owned();
    let others: Vec<u32> = instance_pids(&up.cgroup_parent())
        .into_iter()
        .filter(|(guid, _)| *guid != own)
        .map(|(_, pid)| pid)
        .collect();
    assert!(!others.is_empty());
    for pid in &others {
        query.push(format!("kill={pid}"));
    }
    let path = format!("/?{}", query.join("&"));
    let report: serde_json::Value = loop {
        let (status, body) = router::get_within(
            Duration::from_secs(30),
            &router,
            "escape.apps.localhost",
            &path,
        );
        assert_eq!(status, 200, "{body}");
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        if report["guid"] == own.as_str() {
            break report;
        }
    };
    assert_eq!(report["uid"], "2000", "{report:#}");
    assert_eq!(report["environ"], serde_json::json!([]), "{report:#}");
    for (what, outcome) in report.as_object().unwrap() {
        if ["guid", "uid", "environ"].contains(&what.as_str()) {
            continue;
        }
        let outcome = outcome.as_str().unwrap();
        assert!(
            outcome.starts_with("blocked")
                || (what == "read /etc/shadow" && outcome == "escaped: ''"),
            "{what}: {outcome}\n{report:#}"
        );
    }
    // The other instance still serves.
    let alive: Vec<u32> = instance_pids(&up.cgroup_parent())
        .into_iter()
        .filter(|(guid, _)| *guid != own)
        .map(|(_, pid)| pid)
        .collect();
    assert!(
        others.iter().all(|p| alive.contains(p)),
        "{others:?} vs {alive:?}"
    );
}

#[test]
fn containers_of_a_killed_micro_cloud_are_removed_at_its_next_start() {
    // Up::start fails the test naming the reason when not root.
    let mut up = Up::start();
    let data = up.home.path().join("data");
    let app = tempfile::tempdir().unwrap();
    std::fs::write(app.path().join("escape.py"), ESCAPE_APP).unwrap();
    std::fs::write(app.path().join("Procfile"), "web: exec python3 escape.py\n").unwrap();
    let out = up.cli(&["push", "left", "-p", app.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = cli::runc_containers(&data);
    assert_eq!(before.len(), 1, "{before:?}");
    let old_pids: Vec<u32> = instance_pids(&up.cgroup_parent())
        .into_iter()
        .filter(|(guid, _)| *guid == before[0])
        .map(|(_, pid)| pid)
        .collect();
    assert!(!old_pids.is_empty());

    // SIGKILL: the executor cannot stop anything; the container outlives it.
    up.child.kill().unwrap();
    up.child.wait().unwrap();
    assert_eq!(
        cli::runc_containers(&data),
        before,
        "the container should outlive a SIGKILL"
    );
    let home = std::mem::replace(&mut up.home, tempfile::tempdir().unwrap());
    drop(up);

    // The next start removes it (and the health manager starts the app afresh). The executor
    // cleans up in steps (the runtime's container, then its cgroups, then its bundle) while
    // endpoints.json may already be there, so the wait covers every step and names what is left.
    let up = Up::start_in(home);
    let leftovers = || {
        let mut left = Vec::new();
        if cli::runc_containers(&data).contains(&before[0]) {
            left.push("the runtime's container".to_owned());
        }
        for hierarchy in ["memory", "pids", "cpu"] {
            let dir = std::path::Path::new("/sys/fs/cgroup")
                .join(hierarchy)
                .join(up.cgroup_parent())
                .join(&before[0]);
            if dir.exists() {
                left.push(dir.display().to_string());
            }
        }
        if std::fs::read_dir(data.join("executor/containers/bundles"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy() == before[0])
        {
            left.push("its bundle".to_owned());
        }
        left
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = leftovers();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind 60 s after the next start: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let alive: Vec<u32> = instance_pids(&up.cgroup_parent())
        .into_iter()
        .filter(|(guid, _)| *guid == before[0])
        .map(|(_, pid)| pid)
        .collect();
    assert!(alive.is_empty(), "{alive:?} outlived the restart");
    drop(up);
}

#[test]
fn an_app_past_its_memory_is_oom_killed_and_its_peak_shows_in_events() {
    // Up::start fails the test naming the reason when not root.
    let up = Up::start();
    let app = tempfile::tempdir().unwrap();
    std::fs::write(
        app.path().join("hog.py"),
        "chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 20))\n",
    )
    .unwrap();
    std::fs::write(app.path().join("Procfile"), "web: exec python3 hog.py\n").unwrap();
    // The push itself may report the crash; what matters is what the platform recorded.
    let _ = up.cli(&[
        "push",
        "hog",
        "-m",
        "64M",
        "-p",
        app.path().to_str().unwrap(),
    ]);
    let mut events = String::new();
    wait_for(Duration::from_secs(60), "an OOM crash event", || {
        let out = up.cli(&["events", "hog"]);
        events = String::from_utf8_lossy(&out.stdout).into_owned();
        events.contains("out of memory")
    });
    assert!(events.contains("audit.app.process.crash"), "{events}");
    assert!(
        events.contains("Exited with status 137 (out of memory); peak memory"),
        "{events}"
    );
    // The health manager restarts it on the crash schedule (the first restarts are
    // immediate), and the restarted instance is OOM-killed again.
    wait_for(
        Duration::from_secs(60),
        "a restart and a second OOM crash",
        || {
            let out = up.cli(&["events", "hog"]);
            events = String::from_utf8_lossy(&out.stdout).into_owned();
            events.contains("audit.app.process.restart")
                && events.matches("(out of memory)").count() >= 2
        },
    );
}
