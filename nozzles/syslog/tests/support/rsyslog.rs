//! A real rsyslogd for the nozzle's tests, listening with imtcp (octet-counted framing) on a
//! loopback port and writing every message it parsed as one JSON line of its own fields.
//!
//! rsyslogd runs with its own temp config and work directory and loads no input but imtcp, so
//! the machine's syslog setup and `/dev/log` are never touched. Included with `#[path]` by
//! the test files that need it.
#![allow(dead_code, reason = "each test file uses a part")]

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

pub struct Rsyslog {
    child: Child,
    pub port: u16,
    pub out: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn start_rsyslog() -> Rsyslog {
    assert!(
        Path::new(RSYSLOGD).exists(),
        "{RSYSLOGD} is missing: run ./scripts/test, which installs the Debian package rsyslog"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let port = free_port();
    let conf = format!(
        r#"global(workDirectory="{work}" maxMessageSize="64k"
       parser.escapeControlCharactersOnReceive="off" parser.dropTrailingLFOnReception="off")
module(load="imtcp")
template(name="fields" type="string" string="{{\"raw\":\"%rawmsg:::json%\",\"pri\":\"%pri%\",\"host\":\"%hostname:::json%\",\"app\":\"%app-name:::json%\",\"procid\":\"%procid:::json%\",\"msgid\":\"%msgid:::json%\",\"sd\":\"%structured-data:::json%\",\"msg\":\"%msg:::json%\"}}\n")
ruleset(name="drain") {{
  action(type="omfile" file="{out}" template="fields" flushOnTXEnd="on" asyncWriting="off")
}}
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="drain" supportOctetCountedFraming="on")
"#,
        work = dir.path().display(),
        out = out.display(),
    );
    let conf_path = dir.path().join("rsyslog.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new(RSYSLOGD)
        .arg("-n")
        .arg("-f")
        .arg(&conf_path)
        .arg("-i")
        .arg(dir.path().join("rsyslog.pid"))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "rsyslogd did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Rsyslog {
        child,
        port,
        out,
        _dir: dir,
    }
}

pub fn read_records(path: &Path, want: usize) -> Vec<HashMap<String, String>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let complete = text.matches('\n').count();
        if complete >= want {
            // A little more time would reveal duplicates; the caller checks the count.
            return text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "rsyslog wrote {complete} of {want} messages"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every record written so far (complete lines only), without waiting.
pub fn records_now(path: &Path) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
