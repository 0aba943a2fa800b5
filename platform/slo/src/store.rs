//! The state directory: one JSON file per app (`apps/<app guid>.json`) holding its minute
//! counts, day ledger and firing alerts, so a restarted alerter keeps the error budget and
//! does not re-announce alerts it already announced.
//!
//! Flow: start-up → [`load_all`] → [`crate::engine::Engine::restore`]; every
//! `flush_interval_secs` and at shutdown → [`flush`] (each file written to a temporary name
//! and renamed, so a crash leaves the old file or the new one, never half of one).
//!
//! Invariants: only app guids made of letters, digits, `-` and `_` name files, so a guid can
//! never point outside the directory; a file larger than [`MAX_STATE_BYTES`] or one that does
//! not parse is skipped and counted, never trusted; files of apps whose SLOs were removed are
//! deleted once the SLOs have been fetched at least once.

use std::path::{Path, PathBuf};
use std::time::Instant;

use hydrant_emitter::Counter;
use hydrant_windows::Windows;

use crate::engine::{AppState, Engine, STATE_VERSION};

/// Largest state file read back, bytes: 3 days of minutes plus 90 days is well under 2 MiB.
pub const MAX_STATE_BYTES: u64 = 8 << 20;

/// Whether `guid` may name a file.
#[must_use]
pub fn safe_name(guid: &str) -> bool {
    !guid.is_empty()
        && guid.len() <= 128
        && guid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn path_of(dir: &Path, guid: &str) -> PathBuf {
    dir.join(format!("{guid}.json"))
}

/// Reads every state file in `dir` into `engine` and `windows`; returns how many were used.
/// Unusable files are counted in `bad` and left in place for a person to look at.
pub fn load_all(
    dir: &Path,
    engine: &mut Engine,
    windows: &mut Windows,
    now: Instant,
    bad: &Counter,
) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut loaded = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(guid) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        if !safe_name(guid) {
            continue;
        }
        match read(&path) {
            Ok(state) => {
                if let Err(e) = engine.restore(guid, state, windows, now) {
                    tracing::warn!(app = guid, error = %e, "restored the ledger but not the minutes");
                }
                loaded += 1;
            }
            Err(why) => {
                bad.inc();
                tracing::warn!(file = %path.display(), "skipping an unusable state file: {why}");
            }
        }
    }
    loaded
}

fn read(path: &Path) -> Result<AppState, String> {
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if len > MAX_STATE_BYTES {
        return Err(format!("{len} bytes is more than {MAX_STATE_BYTES}"));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let state: AppState = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if state.version != STATE_VERSION {
        return Err(format!("layout version {} is unknown", state.version));
    }
    Ok(state)
}

/// Writes the state of every app with SLOs, and removes files of apps without. Returns how
/// many files failed to write (each logged).
pub fn flush(dir: &Path, engine: &Engine, windows: &Windows) -> usize {
    let mut failed = 0;
    let mut keep = std::collections::HashSet::new();
    for guid in engine.apps() {
        if !safe_name(guid) {
            continue;
        }
        keep.insert(guid.to_owned());
        let Some(state) = engine.snapshot(guid, windows) else {
            continue;
        };
        if let Err(e) = write(dir, guid, &state) {
            failed += 1;
            tracing::warn!(app = guid, error = %e, "cannot write SLO state");
        }
    }
    if engine.specs_loaded()
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        for entry in entries.flatten() {
            let path = entry.path();
            let stale = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .is_some_and(|g| safe_name(g) && !keep.contains(g));
            if stale {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    failed
}

fn write(dir: &Path, guid: &str, state: &AppState) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(state).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!(".{guid}.json.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path_of(dir, guid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_guids_name_files() {
        assert!(safe_name("3f2a-11_x"));
        assert!(!safe_name("../etc/passwd"));
        assert!(!safe_name("a/b"));
        assert!(!safe_name(""));
        assert!(!safe_name(&"a".repeat(129)));
    }
}
