//! A throwaway PostgreSQL server for the cloud controller's CCDB tests: `initdb` into a temp
//! directory and `postgres` on a loopback port, as an unprivileged user (PostgreSQL refuses to
//! run as root: as root the server runs as uid/gid 65534 through `setpriv`; as anyone else, as
//! that user). Dropping it stops the server (SIGTERM, then SIGKILL after a deadline) and
//! removes the directory, also when the test failed.

// Each test binary uses part of the harness (and allows unwrap, expect and panic itself).
#![allow(dead_code, reason = "each test binary uses part of the shared harness")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The unprivileged uid and gid the server runs as when the tests run as root.
const NOBODY: u32 = 65534;

/// A running PostgreSQL server.
#[derive(Debug)]
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    child: Option<Child>,
    // Last: removed after the server stopped.
    dir: tempfile::TempDir,
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("run id -u");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// The newest installed PostgreSQL's `bin` directory.
fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().unwrap_or_else(|| {
        panic!(
            "these tests need PostgreSQL's server (initdb, postgres) under /usr/lib/postgresql: \
             install the Debian package postgresql (scripts/test does)"
        )
    })
}

/// `program args…` as the server's user.
fn as_server_user(program: &Path, args: &[&str]) -> Command {
    if is_root() {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={NOBODY}"))
            .arg(format!("--regid={NOBODY}"))
            .arg("--clear-groups")
            .arg("--")
            .arg(program)
            .args(args);
        cmd
    } else {
        let mut cmd = Command::new(program);
        cmd.args(args);
        cmd
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Postgres {
    /// Initialises a cluster and starts it; blocks until it accepts connections. Call it off
    /// the async runtime (`spawn_blocking`): it connects with the blocking client.
    pub fn start() -> Self {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("hydrant-ccdb-")
            .tempdir()
            .unwrap();
        if is_root() {
            std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
        }
        let data = dir.path().join("data");
        let data_arg = data.display().to_string();
        let out = as_server_user(
            &bin.join("initdb"),
            &[
                "-D",
                &data_arg,
                "-U",
                "hydrant",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ],
        )
        .output()
        .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut server = Self {
            port: free_port(),
            bin,
            child: None,
            dir,
        };
        server.run();
        server
    }

    /// Starts the server on its data directory and port (again, after [`Self::kill`]).
    pub fn run(&mut self) {
        let data_arg = self.dir.path().join("data").display().to_string();
        let socket_dir = self.dir.path().display().to_string();
        let port = self.port.to_string();
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        let child = as_server_user(
            &self.bin.join("postgres"),
            &[
                "-D",
                &data_arg,
                "-p",
                &port,
                "-k",
                &socket_dir,
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=50",
            ],
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if postgres::Client::connect(&self.url("postgres"), postgres::NoTls).is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("postgres exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not accept connections within 30 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A URL for database `db` (the password is ignored: the cluster trusts loopback; it is
    /// there so the tests see it masked).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://hydrant:not-a-secret@127.0.0.1:{}/{db}",
            self.port
        )
    }

    /// Creates database `name`; blocking.
    pub fn create_db(&self, name: &str) -> String {
        let mut client = postgres::Client::connect(&self.url("postgres"), postgres::NoTls).unwrap();
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        self.url(name)
    }

    /// Stops the server now (fast shutdown, SIGINT: every session cut off), as a database
    /// lost to the controllers; [`Self::run`] brings it back on the same data and port.
    pub fn halt(&mut self) {
        self.stop("-INT");
    }

    fn stop(&mut self, signal: &str) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop("-TERM");
    }
}
