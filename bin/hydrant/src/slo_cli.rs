//! `hydrant slo NAME`: an app's service level objectives. `--set FILE` replaces them with the
//! JSON in FILE (validated here first, then by the cloud controller); without it the command
//! prints each SLO with what the SLO alerter knows now: the SLI, the budget left, the burn
//! rate per window and the alerts firing.
//!
//! Flow: CLI → cloud controller (`PUT`/`GET /v3/apps/{guid}/slos`) for the spec; the alerter's
//! status comes from its admin listener, whose URL the cloud controller lists under
//! `endpoints.slo` in `GET /v3/info` (`hydrant up` puts it there).
//!
//! Invariant: every text that came from the server or a file is escaped before it reaches the
//! terminal; a webhook URL is never printed whole (it may hold a credential).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use hydrant_api::slo::{AppSloStatus, AppSlos, SloSet, SloStatus};
use hydrant_firehose_client::render::escape_text;

use crate::apps::Session;
use crate::exit;

/// `hydrant slo NAME [--set FILE] [--json]`.
#[derive(Debug, clap::Args)]
pub struct SloArgs {
    /// The app.
    pub name: String,
    /// Replace the app's SLOs with the JSON in FILE (`{"slos": [...]}`; an empty list removes
    /// them). Example: {"slos":[{"name":"availability","sli":{"type":"availability"},
    /// "objective":99.9}]}
    #[arg(long, value_name = "FILE")]
    pub set: Option<PathBuf>,
    /// Print the spec and status as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `hydrant slo`.
///
/// # Errors
/// The app is unknown, the file is unreadable or invalid, or the API refused.
pub async fn run(args: SloArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let app = session.app(&args.name).await?;
    if let Some(file) = &args.set {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let set: SloSet = serde_json::from_str(&text).map_err(|e| {
            exit::usage(format!(
                "{} is not an SLO set: {e}",
                escape_text(&file.display().to_string())
            ))
        })?;
        set.validate().map_err(|e| {
            exit::usage(format!(
                "{}: {}",
                file.display(),
                escape_text(&e.to_string())
            ))
        })?;
        let stored = session.client.set_slos(&app.guid, &set).await?;
        eprintln!(
            "Set {} SLO(s) on {}",
            stored.slos.len(),
            escape_text(&app.name)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let spec = session.client.app_slos(&app.guid).await?;
    let status = alerter_status(&session, &app.guid).await;
    if args.json {
        let value = serde_json::json!({
            "spec": redacted(&spec),
            "status": status.as_ref().ok(),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    if spec.slos.is_empty() {
        println!(
            "{} has no SLOs; set them with `hydrant slo {} --set FILE`",
            escape_text(&app.name),
            escape_text(&app.name)
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let Err(why) = &status {
        println!("(no live status: {})", escape_text(why));
    } else if let Ok(s) = &status
        && !s.stream_connected
    {
        println!("(the SLO alerter is not hearing the firehose now; figures may be stale)");
    }
    for slo in &spec.slos {
        let live = status
            .as_ref()
            .ok()
            .and_then(|s| s.slos.iter().find(|x| x.name == slo.name));
        let sli = match &slo.sli {
            hydrant_api::slo::Sli::Availability {
                count_router_errors,
            } => format!(
                "availability (non-5xx{})",
                if *count_router_errors {
                    ", router errors count"
                } else {
                    ", router errors excluded"
                }
            ),
            hydrant_api::slo::Sli::Latency { threshold_ms } => {
                format!("latency (faster than {threshold_ms} ms)")
            }
        };
        println!(
            "{}: {} objective {}% over {} days, min {} requests{}",
            escape_text(&slo.name),
            sli,
            slo.objective,
            slo.period_days,
            slo.min_requests,
            if slo.webhook_url.is_some() {
                ", webhook set"
            } else {
                ""
            }
        );
        match live {
            Some(s) => print_status(s),
            None => println!("  not evaluated yet"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(s: &SloStatus) {
    let pct = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}%"));
    println!(
        "  SLI now (1h) {}   period {} over {} requests",
        pct(s.sli_1h),
        pct(s.sli_period),
        s.period_requests
    );
    println!("  error budget left {:.1}%", s.budget_remaining * 100.0);
    let rates: Vec<String> = s
        .burn_rates
        .iter()
        .map(|w| match w.rate {
            Some(r) => format!("{} {r:.2}x", escape_text(&w.window)),
            None => format!("{} -", escape_text(&w.window)),
        })
        .collect();
    println!("  burn rates: {}", rates.join("  "));
    if s.alerts.is_empty() {
        println!("  alerts: none firing");
    }
    for a in &s.alerts {
        let ago = hydrant_auth::now_secs()
            .max(0)
            .unsigned_abs()
            .saturating_sub(a.since);
        println!(
            "  ALERT {} firing for {}s ({})",
            escape_text(&a.severity.to_uppercase()),
            ago,
            escape_text(&a.rule)
        );
    }
}

/// The spec with webhook URLs cut to their host.
fn redacted(spec: &AppSlos) -> AppSlos {
    let mut spec = spec.clone();
    for slo in &mut spec.slos {
        if let Some(url) = &slo.webhook_url {
            slo.webhook_url = Some(redact(url));
        }
    }
    spec
}

/// The scheme and host of a URL, without user info, path or query.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".to_owned();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    format!("{scheme}://{host}/…")
}

/// The alerter's status of one app, or why there is none.
async fn alerter_status(session: &Session, app_guid: &str) -> Result<AppSloStatus, String> {
    let info = session
        .client
        .info()
        .await
        .map_err(|e| format!("cannot reach the API: {e}"))?;
    let Some(base) = info.endpoints.get("slo") else {
        return Err("the platform runs no SLO alerter (no `slo` endpoint)".to_owned());
    };
    let url = format!("{}/v1/slos/{app_guid}", base.trim_end_matches('/'));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    // The status is the app's data: the alerter wants a token that may read its logs, which
    // the app's log token is (an admin's own token would do too).
    let token = match session.client.log_token(app_guid).await {
        Ok(t) => Some(t.token),
        Err(_) => session.client.token().map(str::to_owned),
    };
    let mut request = http.get(&url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|_| "the SLO alerter is unreachable".to_owned())?;
    if response.status().as_u16() == 404 {
        return Err("the SLO alerter has not evaluated this app yet".to_owned());
    }
    if !response.status().is_success() {
        return Err(format!("the SLO alerter answered {}", response.status()));
    }
    response
        .json::<AppSloStatus>()
        .await
        .map_err(|e| format!("the SLO alerter's answer does not decode: {e}"))
}
