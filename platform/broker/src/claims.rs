//! Host-wide claims on service node ports: a lock file per port (`flock`) that a broker holds
//! from the moment it picks the port until it exits, in one directory every broker on the host
//! shares.
//!
//! Why: a port pool is per broker, but ports are per host. Two brokers side by side (micro
//! clouds in parallel test runs, a second `hydrant run broker`) whose nodes listen on different
//! addresses would each find a port free — RabbitMQ's Erlang distribution and epmd listen on
//! loopback whatever AMQP listens on — and a RabbitMQ node takes seconds to bind, so both
//! brokers picked the same ports and one node died three times at start ("could not bind to
//! distribution port"). A bind check alone cannot close that window; a claim does.
//!
//! Invariant: a port is handed to a node only while this broker holds its claim; a claim goes
//! with the process however it ends (the kernel drops `flock`s), so a SIGKILLed broker never
//! leaves a port claimed. Best effort where the directory cannot be made: the bind check
//! still applies, with one warning saying why claims are off.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Mutex;

/// Where brokers on this host claim ports: one directory for all of them.
#[must_use]
pub fn default_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        PathBuf::from("/run/hydrant-broker/ports")
    } else {
        std::env::temp_dir().join(format!(
            "hydrant-broker-ports-{}",
            nix::unistd::geteuid().as_raw()
        ))
    }
}

/// The ports this broker holds claims on.
#[derive(Debug)]
pub struct Claims {
    dir: Option<PathBuf>,
    held: Mutex<HashMap<u16, File>>,
}

impl Claims {
    /// Claims in `dir` (created when missing); without a usable directory, every claim
    /// succeeds (a warning says so once).
    #[must_use]
    pub fn open(dir: PathBuf) -> Self {
        let dir = match std::fs::create_dir_all(&dir) {
            Ok(()) => Some(dir),
            Err(e) => {
                tracing::warn!(dir = %dir.display(),
                    "service node ports are not claimed host-wide (another broker on this host may pick the same ones): {e}");
                None
            }
        };
        Self {
            dir,
            held: Mutex::new(HashMap::new()),
        }
    }

    /// Claims `port` for this broker: true when it holds the claim now (it may already have),
    /// false when another process on the host holds it.
    pub fn claim(&self, port: u16) -> bool {
        let Some(dir) = &self.dir else {
            return true;
        };
        let mut held = hydrant_runtime::lock(&self.held);
        if held.contains_key(&port) {
            return true;
        }
        let path = dir.join(port.to_string());
        // Read-only is enough for `flock`, and works on a file another user created.
        let file = File::open(&path).or_else(|_| {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
        });
        let Ok(file) = file else {
            // An unusable lock file must not make the port unusable: the bind check holds.
            return true;
        };
        match file.try_lock() {
            Ok(()) => {
                held.insert(port, file);
                true
            }
            Err(_) => false,
        }
    }

    /// Whether this broker holds `port`'s claim.
    #[must_use]
    pub fn holds(&self, port: u16) -> bool {
        self.dir.is_none() || hydrant_runtime::lock(&self.held).contains_key(&port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_claimed_by_one_broker_is_refused_to_another_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let a = Claims::open(dir.path().to_path_buf());
        let b = Claims::open(dir.path().to_path_buf());
        assert!(a.claim(42_001));
        assert!(a.claim(42_001), "claiming again what it holds");
        assert!(!b.claim(42_001), "another broker's port");
        assert!(b.claim(42_002));
        assert!(a.holds(42_001) && !b.holds(42_001));
        drop(a);
        assert!(b.claim(42_001), "a claim goes with its broker");
    }
}
