//! Each container's own parent cgroup: made by us with the container's limits, the runtime's
//! cgroup (`<parent>/<id>/c`) made beneath it, read for usage while it runs, and read for the
//! container's end (peak memory, out of memory) after the runtime has removed its own.
//!
//! Why a parent of our own: `runc run` deletes its cgroup when the container exits, so the
//! counters that say what happened would go with it. Limits set on the parent bind the whole
//! subtree, and the parent's counters survive the child.
//!
//! Invariants: every path written is `<hierarchy>/<cgroup_parent>/<id>` with both parts checked
//! to be plain relative names; removing a cgroup first kills whatever still runs in it; cgroup
//! v1 (per-controller hierarchies, also in hybrid mode) and v2 (unified) are told apart by what
//! is mounted, never assumed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::Error;

/// Where cgroup file systems are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The v1 controllers whose limits and counters we set and read on the parent.
const V1_CONTROLLERS: [&str; 4] = ["memory", "pids", "cpu", "cpuacct"];
/// How long removal waits for killed processes to leave a cgroup.
const EMPTY_WAIT: Duration = Duration::from_secs(2);
/// A peak this close to the limit means the limit was reached (the kernel charges in pages and
/// batches, so the recorded peak can sit just under it).
const OOM_SLACK: u64 = 256 * 1024;

/// Which cgroup layout the host has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Layout {
    /// One hierarchy per controller under `/sys/fs/cgroup/<controller>` (also hybrid hosts).
    V1,
    /// The unified hierarchy at `/sys/fs/cgroup`.
    V2,
}

/// The limits of one container, as written to its parent cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CgroupLimits {
    pub(crate) memory_bytes: u64,
    pub(crate) pids: u32,
    pub(crate) cpu_shares: u64,
}

/// What a container's cgroup says now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Memory in use, bytes, without reclaimable page cache (what counts toward an OOM).
    pub memory_bytes: u64,
    /// The most memory the container has used, bytes.
    pub peak_bytes: u64,
    /// CPU time used by every process the container ran, nanoseconds.
    pub cpu_nanos: u64,
    /// Processes (and threads) now in the container.
    pub pids: u64,
}

/// The counters that outlive the runtime's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Final {
    pub(crate) peak_bytes: u64,
    pub(crate) limit_bytes: u64,
    /// The kernel's OOM-kill count, where it keeps one (v2's `memory.events`, v1 `oom_kill`).
    pub(crate) oom_kills: u64,
    pub(crate) cpu_nanos: u64,
}

impl Final {
    /// Whether a container that ended with `exit_code` was killed for memory: SIGKILLed and
    /// either counted by the kernel or at its limit (v1 on some kernels never counts).
    pub(crate) fn out_of_memory(&self, exit_code: Option<i32>) -> bool {
        exit_code == Some(137)
            && (self.oom_kills > 0
                || (self.limit_bytes > 0
                    && self.peak_bytes.saturating_add(OOM_SLACK) >= self.limit_bytes))
    }
}

/// The cgroups of one owner: `<hierarchy>/<parent>/<container id>`.
#[derive(Debug, Clone)]
pub(crate) struct Cgroups {
    layout: Layout,
    root: PathBuf,
    parent: String,
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key value` lines (`memory.stat`, `cpu.stat`, `memory.events`).
fn read_keyed(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn write(path: &Path, value: &str) -> Result<(), Error> {
    std::fs::write(path, value).map_err(|source| Error::Io {
        what: "cannot write cgroup file",
        path: path.to_path_buf(),
        source,
    })
}

/// Diego's CPU shares for an instance of `memory_mb`: proportional to memory between 128 MiB
/// and 8 GiB, out of 1024 (`reference/isolation-services-cells.md` §D.2).
#[must_use]
pub fn cpu_shares_for(memory_mb: u64) -> u64 {
    let weight = 100 * memory_mb.clamp(128, 8192) / 8192;
    (1024 * weight / 100).max(2)
}

/// v1 shares (2..=262144) as a v2 weight (1..=10000), the runtimes' formula.
fn weight_from_shares(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

impl Cgroups {
    /// Finds the host's layout.
    ///
    /// # Errors
    /// [`Error::Host`] when neither a v2 unified hierarchy nor the v1 memory, pids, cpu and
    /// cpuacct hierarchies are mounted.
    pub(crate) fn detect(parent: &str) -> Result<Self, Error> {
        let root = PathBuf::from(CGROUP_ROOT);
        let layout = if root.join("cgroup.controllers").exists() {
            let controllers =
                std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            for wanted in ["memory", "pids", "cpu"] {
                if !controllers.split_whitespace().any(|c| c == wanted) {
                    return Err(Error::Host {
                        reason: format!("the cgroup v2 controller {wanted} is not available"),
                        fix: "boot with every controller enabled, or run `hydrant up --isolation \
                              none` (unisolated)"
                            .to_owned(),
                    });
                }
            }
            Layout::V2
        } else {
            for controller in V1_CONTROLLERS {
                if !root.join(controller).join("cgroup.procs").exists() {
                    return Err(Error::Host {
                        reason: format!(
                            "no cgroup hierarchy for {controller} at {CGROUP_ROOT}/{controller}"
                        ),
                        fix: "mount the cgroup file systems (systemd does at boot), or run \
                              `hydrant up --isolation none` (unisolated)"
                            .to_owned(),
                    });
                }
            }
            Layout::V1
        };
        Ok(Self {
            layout,
            root,
            parent: parent.trim_matches('/').to_owned(),
        })
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The runtime's `cgroupsPath` for container `id`: a child of its parent.
    pub(crate) fn runtime_path(&self, id: &str) -> PathBuf {
        PathBuf::from(format!("/{}/{id}/c", self.parent))
    }

    fn dir(&self, hierarchy: &str, id: &str) -> PathBuf {
        match self.layout {
            Layout::V1 => self.root.join(hierarchy).join(&self.parent).join(id),
            Layout::V2 => self.root.join(&self.parent).join(id),
        }
    }

    fn mkdir(path: &Path) -> Result<(), Error> {
        std::fs::create_dir_all(path).map_err(|source| Error::Io {
            what: "cannot create cgroup",
            path: path.to_path_buf(),
            source,
        })
    }

    /// Makes container `id`'s parent cgroup with `limits`.
    pub(crate) fn create(&self, id: &str, limits: CgroupLimits) -> Result<(), Error> {
        match self.layout {
            Layout::V1 => {
                for controller in V1_CONTROLLERS {
                    Self::mkdir(&self.dir(controller, id))?;
                }
                let memory = self.dir("memory", id);
                write(
                    &memory.join("memory.limit_in_bytes"),
                    &limits.memory_bytes.to_string(),
                )?;
                // Swap would let an app live past its quota; the file exists only with swap
                // accounting on, and failing to write it on a host without swap is harmless.
                let _ = std::fs::write(
                    memory.join("memory.memsw.limit_in_bytes"),
                    limits.memory_bytes.to_string(),
                );
                write(
                    &self.dir("pids", id).join("pids.max"),
                    &limits.pids.to_string(),
                )?;
                write(
                    &self.dir("cpu", id).join("cpu.shares"),
                    &limits.cpu_shares.to_string(),
                )?;
            }
            Layout::V2 => {
                // Controllers must be enabled on every level down to the container's parent so
                // the runtime's child gets them.
                let mut level = self.root.clone();
                let mut parts: Vec<&str> = self.parent.split('/').collect();
                parts.push(id);
                for part in parts {
                    let _ =
                        std::fs::write(level.join("cgroup.subtree_control"), "+memory +pids +cpu");
                    level = level.join(part);
                    Self::mkdir(&level)?;
                }
                let _ = std::fs::write(level.join("cgroup.subtree_control"), "+memory +pids +cpu");
                write(&level.join("memory.max"), &limits.memory_bytes.to_string())?;
                let _ = std::fs::write(level.join("memory.swap.max"), "0");
                write(&level.join("pids.max"), &limits.pids.to_string())?;
                write(
                    &level.join("cpu.weight"),
                    &weight_from_shares(limits.cpu_shares).to_string(),
                )?;
            }
        }
        Ok(())
    }

    /// What container `id` uses now.
    pub(crate) fn usage(&self, id: &str) -> Usage {
        match self.layout {
            Layout::V1 => {
                let memory = self.dir("memory", id);
                let used = read_u64(&memory.join("memory.usage_in_bytes")).unwrap_or(0);
                let inactive =
                    read_keyed(&memory.join("memory.stat"), "total_inactive_file").unwrap_or(0);
                Usage {
                    memory_bytes: used.saturating_sub(inactive),
                    peak_bytes: read_u64(&memory.join("memory.max_usage_in_bytes")).unwrap_or(0),
                    cpu_nanos: read_u64(&self.dir("cpuacct", id).join("cpuacct.usage"))
                        .unwrap_or(0),
                    pids: read_u64(&self.dir("pids", id).join("pids.current")).unwrap_or(0),
                }
            }
            Layout::V2 => {
                let dir = self.dir("", id);
                let used = read_u64(&dir.join("memory.current")).unwrap_or(0);
                let inactive = read_keyed(&dir.join("memory.stat"), "inactive_file").unwrap_or(0);
                Usage {
                    memory_bytes: used.saturating_sub(inactive),
                    peak_bytes: read_u64(&dir.join("memory.peak")).unwrap_or(used),
                    cpu_nanos: read_keyed(&dir.join("cpu.stat"), "usage_usec")
                        .unwrap_or(0)
                        .saturating_mul(1000),
                    pids: read_u64(&dir.join("pids.current")).unwrap_or(0),
                }
            }
        }
    }

    /// The counters that tell how container `id` ended.
    pub(crate) fn final_counters(&self, id: &str) -> Final {
        let usage = self.usage(id);
        match self.layout {
            Layout::V1 => {
                let memory = self.dir("memory", id);
                Final {
                    peak_bytes: usage.peak_bytes,
                    limit_bytes: read_u64(&memory.join("memory.limit_in_bytes")).unwrap_or(0),
                    oom_kills: read_keyed(&memory.join("memory.oom_control"), "oom_kill")
                        .unwrap_or(0),
                    cpu_nanos: usage.cpu_nanos,
                }
            }
            Layout::V2 => {
                let dir = self.dir("", id);
                Final {
                    peak_bytes: usage.peak_bytes,
                    limit_bytes: read_u64(&dir.join("memory.max")).unwrap_or(0),
                    oom_kills: read_keyed(&dir.join("memory.events"), "oom_kill").unwrap_or(0),
                    cpu_nanos: usage.cpu_nanos,
                }
            }
        }
    }

    /// Every hierarchy directory that may hold our cgroups: each v1 controller the runtime
    /// touches (it makes the path in all of them), or the one unified root.
    fn hierarchies(&self) -> Vec<PathBuf> {
        match self.layout {
            Layout::V2 => vec![self.root.clone()],
            Layout::V1 => std::fs::read_dir(&self.root)
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| p.join("cgroup.procs").exists())
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Kills everything in container `id`'s cgroups and removes them, in every hierarchy.
    /// Returns what could not be removed.
    pub(crate) fn remove(&self, id: &str) -> Vec<String> {
        let mut failures = Vec::new();
        for hierarchy in self.hierarchies() {
            let dir = hierarchy.join(&self.parent).join(id);
            if dir.exists()
                && let Err(e) = remove_tree(&dir)
            {
                failures.push(format!("{}: {e}", dir.display()));
            }
        }
        failures
    }

    /// Removes the parent itself in every hierarchy, where it is empty (an owner stopping for
    /// good). Returns what could not be removed; a parent that still holds cgroups stays.
    pub(crate) fn remove_parent(&self) -> Vec<String> {
        let mut failures = Vec::new();
        for hierarchy in self.hierarchies() {
            let dir = hierarchy.join(&self.parent);
            if dir.exists()
                && let Err(e) = std::fs::remove_dir(&dir)
            {
                failures.push(format!("{}: {e}", dir.display()));
            }
        }
        failures
    }

    /// The container ids that have a cgroup under the parent in any hierarchy.
    pub(crate) fn list(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .hierarchies()
            .into_iter()
            .filter_map(|h| std::fs::read_dir(h.join(&self.parent)).ok())
            .flat_map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect::<Vec<_>>()
            })
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

/// Processes listed in a cgroup (not its children).
fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Removes a cgroup and its children, deepest first, killing whatever runs in them.
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    let children: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    for child in children {
        remove_tree(&child)?;
    }
    let deadline = Instant::now() + EMPTY_WAIT;
    loop {
        for pid in procs(dir) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            // EBUSY: killed processes are still on their way out.
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_diego() {
        assert_eq!(cpu_shares_for(1024), 122);
        assert_eq!(cpu_shares_for(8192), 1024);
        assert_eq!(cpu_shares_for(64 * 1024), 1024);
        assert_eq!(cpu_shares_for(64), cpu_shares_for(128));
        assert_eq!(weight_from_shares(2), 1);
        assert_eq!(weight_from_shares(262_144), 10_000);
    }

    #[test]
    fn oom_needs_a_sigkill_and_the_limit() {
        let at_limit = Final {
            peak_bytes: 64 << 20,
            limit_bytes: 64 << 20,
            oom_kills: 0,
            cpu_nanos: 0,
        };
        assert!(at_limit.out_of_memory(Some(137)));
        assert!(!at_limit.out_of_memory(Some(1)));
        let low = Final {
            peak_bytes: 10 << 20,
            ..at_limit
        };
        assert!(!low.out_of_memory(Some(137)));
        let counted = Final {
            oom_kills: 1,
            ..low
        };
        assert!(counted.out_of_memory(Some(137)));
    }
}
