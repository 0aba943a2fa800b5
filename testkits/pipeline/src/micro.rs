//! [`MicroCloud`]: a real `hydrant up --ephemeral-ports` in a temporary home, for end-to-end
//! tests of the binary (the CLI, `hydrant top`, the web dashboard).
//!
//! Invariants: every wait has a deadline and names what it waited for; the micro cloud gets
//! SIGTERM (so its executor stops the app instances it started, which live in their own process
//! groups) before anything harsher; signals go through `nix`, never the `kill` binary, whose
//! procps-ng 4.0.2 misparses negative ids.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running `hydrant up` and the `HYDRANT_HOME` its CLI config was written to.
#[derive(Debug)]
pub struct MicroCloud {
    bin: PathBuf,
    child: Child,
    home: tempfile::TempDir,
}

impl MicroCloud {
    /// Starts `BIN up --ephemeral-ports` with `extra` arguments (e.g. `--demo`) in a fresh home
    /// and waits (60 s at most) until it has written its endpoints and the CLI config.
    pub fn start(bin: impl AsRef<Path>, extra: &[&str]) -> Self {
        let home = tempfile::tempdir().expect("a temporary HYDRANT_HOME");
        let child = Command::new(bin.as_ref())
            .args(["up", "--ephemeral-ports", "--data-dir"])
            .arg(home.path().join("data"))
            .args(extra)
            .env("HYDRANT_HOME", home.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("hydrant up starts");
        let cloud = Self {
            bin: bin.as_ref().to_owned(),
            child,
            home,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(cloud.endpoints_path().exists() && cloud.home().join("config.json").exists()) {
            assert!(
                Instant::now() < deadline,
                "hydrant up wrote no endpoints.json within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cloud
    }

    /// The `HYDRANT_HOME` the CLI commands run with.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// Where `hydrant up` wrote the address of every role.
    pub fn endpoints_path(&self) -> PathBuf {
        self.home.path().join("data/endpoints.json")
    }

    /// `endpoints.json`, parsed.
    pub fn endpoints(&self) -> serde_json::Value {
        let bytes = std::fs::read(self.endpoints_path()).expect("endpoints.json is readable");
        serde_json::from_slice(&bytes).expect("endpoints.json is JSON")
    }

    /// The CLI config `hydrant up` wrote (API URL, token, firehose URL).
    pub fn cli_config(&self) -> serde_json::Value {
        let bytes = std::fs::read(self.home().join("config.json")).expect("config.json");
        serde_json::from_slice(&bytes).expect("config.json is JSON")
    }

    /// A CLI command against this micro cloud, waited for.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("the hydrant CLI runs")
    }

    /// A CLI command against this micro cloud, not yet started (for a pseudo-terminal, a
    /// long-running `hydrant logs`, …).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args).env("HYDRANT_HOME", self.home.path());
        cmd
    }
}

impl Drop for MicroCloud {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            if let Ok(pid) = i32::try_from(self.child.id())
                && pid > 1
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
