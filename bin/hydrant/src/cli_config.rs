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
    /// The bearer token the CLI presents (it expires; see `refresh_token`).
    pub token: String,
    /// Renews `token` at the cloud controller when it is near expiry (as `cf` does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The cloud controller's URL (`hydrant target`); absent for a pipeline-only setup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// The router's URL, to print app URLs with the right port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<String>,
    /// Who the token belongs to, for `hydrant target`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The certificate `hydrant emit` presents to an agent that requires mutual TLS (`hydrant
    /// up` writes its `nozzle` leaf here); absent: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_tls: Option<hydrant_tls::TlsFiles>,
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

/// Renew the access token when less than this is left.
const REFRESH_AHEAD_SECS: i64 = 120;

/// Renews the saved access token with the saved refresh token when it expires within two
/// minutes, so commands never start with a token about to die. Best effort: without a refresh
/// token, an API or a network, the old token is kept and the command's own call says what is
/// wrong.
pub async fn refresh_if_needed() {
    let Ok(mut config) = load() else {
        return;
    };
    let (Some(api), Some(refresh)) = (config.api.clone(), config.refresh_token.clone()) else {
        return;
    };
    let near = hydrant_auth::peek_claims(&config.token).map_or(true, |c| {
        c.exp - hydrant_auth::now_secs() < REFRESH_AHEAD_SECS
    });
    if !near {
        return;
    }
    match hydrant_api::Client::new(&api, None).refresh(&refresh).await {
        Ok(fresh) => {
            config.token = fresh.access_token;
            if let Some(r) = fresh.refresh_token {
                config.refresh_token = Some(r);
            }
            if let Err(e) = save(&config) {
                tracing::warn!(error = %e, "cannot save the renewed token");
            }
        }
        Err(e) => tracing::debug!(error = %e, "token refresh failed; keeping the old token"),
    }
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
