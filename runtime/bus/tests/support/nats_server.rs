//! A real `nats-server` child process for tests: started on a free loopback port, waited for
//! by connecting (never by sleeping), restartable on the same port, killed on drop.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a freshly spawned server may take to accept connections.
const READY_DEADLINE: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub struct NatsServer {
    port: u16,
    child: Option<Child>,
    log: PathBuf,
    /// A config file to run with (`-c`), instead of plain `-a 127.0.0.1 -p PORT`.
    config: Option<PathBuf>,
}

impl NatsServer {
    /// Starts a server on a free port and waits until it speaks NATS.
    pub fn start() -> Self {
        let port = free_port();
        let log = std::env::temp_dir().join(format!(
            "hydrant-bus-nats-{}-{port}.log",
            std::process::id()
        ));
        let mut server = Self {
            port,
            child: None,
            log,
            config: None,
        };
        server.spawn();
        server
    }

    /// Starts a server on a free port with the config `make(port)` returns (written to
    /// `dir/nats.conf`), and waits until it speaks NATS.
    #[allow(dead_code, reason = "not every test binary runs a configured server")]
    pub fn start_with_config(dir: &std::path::Path, make: impl FnOnce(u16) -> String) -> Self {
        let port = free_port();
        let config = dir.join("nats.conf");
        std::fs::write(&config, make(port)).unwrap();
        let mut server = Self {
            port,
            child: None,
            log: dir.join("nats.log"),
            config: Some(config),
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL: no lame-duck goodbye, like a crash) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Asks the server to re-read its config and the files it names (certificates, CA
    /// bundle), as an operator's `nats-server --signal reload` does; existing connections stay.
    #[allow(dead_code, reason = "not every test binary reloads")]
    pub fn reload(&self) {
        let pid = self.child.as_ref().map(Child::id).unwrap();
        let status = Command::new(binary())
            .arg("--signal")
            .arg(format!("reload={pid}"))
            .status()
            .unwrap();
        assert!(
            status.success(),
            "nats-server --signal reload={pid}: {status}"
        );
    }

    /// Starts the server again on the same port and waits until it is ready.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = Command::new(binary());
        match &self.config {
            Some(config) => command.arg("-c").arg(config),
            None => command.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nats-server: {e}"));
        self.child = Some(child);
        self.wait_ready();
    }

    /// Ready means a TCP client on the port receives the server's `INFO` line.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "nats-server on port {} exited with {status}; log:\n{}",
                    self.port,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                let mut line = String::new();
                if BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("INFO ")
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "nats-server on port {} not ready within {READY_DEADLINE:?}; log:\n{}",
                self.port,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// `$NATS_SERVER`, else `nats-server` on `PATH`, else Debian's `/usr/sbin/nats-server`.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    for dir in on_path.into_iter().chain([
        "/usr/sbin".into(),
        "/usr/bin".into(),
        "/usr/local/bin".into(),
    ]) {
        let candidate = dir.join("nats-server");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "nats-server not found: these tests drive a real server. \
         Install it with `apt-get install nats-server` (scripts/test does) or set NATS_SERVER."
    );
}

/// A port nothing listens on right now. The OS hands out ephemeral ports in sequence, so the
/// moment between closing this listener and the server binding it is safe in practice.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
