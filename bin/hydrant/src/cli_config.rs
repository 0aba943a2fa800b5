//! The CLI's own configuration: where the micro cloud's endpoints are and the token to use.
//!
//! `hydrant up` writes it; `hydrant logs`, `hydrant emit` and later commands read it, so they
//! work with no flags. It lives in `$HYDRANT_HOME/config.json` (default `~/.hydrant`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// What the CLI needs to reach a Hydrant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CliConfig {
    /// The firehose edge's public URL (WebSocket streams and the recent-logs API).
    pub firehose: String,
    /// The local agent's v2 ingress URL (for `hydrant emit`).
    pub agent: String,
    /// The bearer token the CLI presents.
    pub token: String,
    /// The cloud controller's URL (`hydrant target`); absent for a pipeline-only setup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// The router's URL, to print app URLs with the right port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<String>,
    /// Who the token belongs to, for `hydrant target`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// `$HYDRANT_HOME`, or `~/.hydrant`.
pub fn home() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("HYDRANT_HOME") {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").context("neither HYDRANT_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".hydrant"))
}

fn path() -> anyhow::Result<PathBuf> {
    Ok(home()?.join("config.json"))
}

/// Reads the CLI config, with a message that says how to create one.
pub fn load() -> anyhow::Result<CliConfig> {
    let path = path()?;
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no Hydrant to talk to: {} is missing; start one with `hydrant up` \
             (or set HYDRANT_HOME to the directory of a running one)",
            path.display()
        )
    })?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid CLI config", path.display()))
}

/// Writes the CLI config (mode 0600: it holds a token).
pub fn save(config: &CliConfig) -> anyhow::Result<PathBuf> {
    let path = path()?;
    write_private(&path, &serde_json::to_vec_pretty(config)?)?;
    Ok(path)
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
