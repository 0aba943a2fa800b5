//! The lines the cloud controller writes into apps' log streams: `STG` (staging) and `API`
//! (lifecycle changes), as Cloud Foundry's cloud controller does.
//!
//! They travel like any other log line: through the role's [`Emitter`] to the local agent, so
//! `hydrant logs NAME` shows them beside the app's own output. Invariant: writing a line never
//! blocks; with no agent configured the line is counted as dropped
//! (`cloudcontroller.dropped{reason="no_agent"}`), never silently lost.

use hydrant_emitter::{Counter, Emitter, Registry};

/// Where app log lines go.
#[derive(Debug, Clone)]
pub(crate) struct AppLogs {
    emitter: Option<Emitter>,
    no_agent: Counter,
    lines: Counter,
}

impl AppLogs {
    pub(crate) fn new(emitter: Option<Emitter>, registry: &Registry) -> Self {
        Self {
            emitter,
            no_agent: registry.counter(
                "cloudcontroller.dropped",
                "app log lines (STG, API) the cloud controller could not send, by reason",
                &[("reason", "no_agent")],
            ),
            lines: registry.counter(
                "cloudcontroller.app_log_lines",
                "STG and API lines written into apps' log streams",
                &[],
            ),
        }
    }

    /// A staging line.
    pub(crate) fn stg(&self, app_guid: &str, text: &str, is_err: bool) {
        self.line(app_guid, "STG", text, is_err);
    }

    /// A lifecycle line.
    pub(crate) fn api(&self, app_guid: &str, text: &str) {
        self.line(app_guid, "API", text, false);
    }

    fn line(&self, app_guid: &str, source_type: &str, text: &str, is_err: bool) {
        self.lines.inc();
        match &self.emitter {
            Some(emitter) => emitter.log(app_guid, "0", source_type, text.as_bytes(), is_err),
            None => self.no_agent.inc(),
        }
    }
}
