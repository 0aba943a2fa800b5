//! The `[executor.containers]` config section (and the staging side's, which reuses it): which
//! OCI runtime runs containers, under which cgroup they are made, and where bundles live.
//!
//! Invariant: a config that passes [`Config::validate`] after [`Config::with_defaults`] names
//! a runtime, a relative cgroup parent of plain path components and a state directory, so no
//! value can make the platform write outside its own cgroup subtree.

use std::path::PathBuf;

use serde::Deserialize;

use crate::Error;

/// Default pids limit per container: Cloud Foundry's `diego.pid_limit`.
pub const DEFAULT_PIDS: u32 = 2048;
/// Default size of a container's `/tmp` tmpfs, MiB.
pub const DEFAULT_TMP_MB: u64 = 64;

/// Container settings of one owner (an executor, or the stager).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The OCI runtime: a path, or a program name looked up on `PATH`. Default `"runc"`
    /// (Debian package `runc`).
    pub runtime: String,
    /// The cgroup (relative to each hierarchy's root) under which every container's cgroup is
    /// made; leftovers under it are removed at start. Default `""`, which the owner fills in as
    /// `hydrant/<executor id>`.
    pub cgroup_parent: String,
    /// Where bundles, the runtime's state and the stack root filesystem live. Default `""`,
    /// which the owner fills in as `<data_dir>/containers`.
    pub state_dir: PathBuf,
    /// Processes and threads a container may hold at once. Default 2048 (Cloud Foundry's
    /// `diego.pid_limit`).
    pub pids_limit: u32,
    /// Size of each container's `/tmp` (a tmpfs, counted against its memory), MiB. Default 64.
    pub tmp_mb: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            runtime: "runc".to_owned(),
            cgroup_parent: String::new(),
            state_dir: PathBuf::new(),
            pids_limit: DEFAULT_PIDS,
            tmp_mb: DEFAULT_TMP_MB,
        }
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> Error {
    Error::Config {
        field,
        message: message.into(),
    }
}

impl Config {
    /// Fills the fields left empty with the owner's defaults.
    #[must_use]
    pub fn with_defaults(mut self, cgroup_parent: &str, state_dir: PathBuf) -> Self {
        if self.cgroup_parent.is_empty() {
            cgroup_parent.clone_into(&mut self.cgroup_parent);
        }
        if self.state_dir.as_os_str().is_empty() {
            self.state_dir = state_dir;
        }
        self
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad field and what to write instead.
    pub fn validate(&self) -> Result<(), Error> {
        if self.runtime.trim().is_empty() {
            return Err(invalid(
                "runtime",
                "write the OCI runtime to use, e.g. \"runc\" or \"/usr/sbin/runc\"",
            ));
        }
        let parent_ok = self.cgroup_parent.is_empty()
            || self.cgroup_parent.split('/').all(|part| {
                !part.is_empty()
                    && part != "."
                    && part != ".."
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            });
        if !parent_ok {
            return Err(invalid(
                "cgroup_parent",
                format!(
                    "{:?} must be a relative path of letters, digits, '-', '_' or '.', e.g. \
                     \"hydrant/cell-1\"",
                    self.cgroup_parent
                ),
            ));
        }
        if self.pids_limit < 16 {
            return Err(invalid(
                "pids_limit",
                "must be at least 16 (a shell and its children need a few)",
            ));
        }
        if self.tmp_mb == 0 || self.tmp_mb > 1024 * 1024 {
            return Err(invalid("tmp_mb", "must be between 1 and 1048576 (MiB)"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_only_empty_fields() {
        let filled = Config::default().with_defaults("hydrant/0", PathBuf::from("d/containers"));
        assert_eq!(filled.cgroup_parent, "hydrant/0");
        assert_eq!(filled.state_dir, PathBuf::from("d/containers"));
        filled.validate().unwrap();
        let own = Config {
            cgroup_parent: "mine".into(),
            ..Config::default()
        }
        .with_defaults("hydrant/0", PathBuf::from("x"));
        assert_eq!(own.cgroup_parent, "mine");
    }

    #[test]
    fn a_parent_cannot_climb_out() {
        for bad in ["../x", "/abs", "a//b", "a/./b", "a b"] {
            let config = Config {
                cgroup_parent: bad.into(),
                ..Config::default()
            };
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains("cgroup_parent"), "{bad}: {err}");
        }
    }
}
