//! The tests' side of the real rsyslogd (`hydrant_nozzle_syslog::rsyslogd`): started with the
//! JSON-fields template, its records read back with deadlines. Included with `#[path]` by the
//! test files that need it.
#![allow(dead_code, reason = "each test file uses a part")]

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use hydrant_nozzle_syslog::rsyslogd::{FIELDS_TEMPLATE, Rsyslogd};

pub type Rsyslog = Rsyslogd;

pub fn free_port() -> u16 {
    hydrant_nozzle_syslog::rsyslogd::free_port().unwrap()
}

/// rsyslogd writing one JSON line of its own parse of each message.
pub fn start_rsyslog() -> Rsyslog {
    Rsyslogd::start(FIELDS_TEMPLATE)
        .unwrap_or_else(|e| panic!("{e} (./scripts/test installs the Debian package rsyslog)"))
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
