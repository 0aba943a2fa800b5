//! `hydrant autoscale NAME --policy FILE | --show | --off`: sets, shows or removes an app's
//! autoscaling policy, and shows the autoscaler's recent decisions from the audit events.
//!
//! Flow: the file → `ScalingPolicy::parse` here (the same validator the cloud controller runs,
//! so a bad field is named before anything is sent) → `PUT /v3/apps/{guid}/autoscaling_policy`.
//!
//! Invariant: text from the server (app names, event reasons) is escaped before printing.

use std::path::PathBuf;
use std::process::ExitCode;

use hydrant_api::EventFilter;
use hydrant_api::policy::{ScalingPolicy, ScheduleKind};
use hydrant_firehose_client::render::escape_text;

use crate::apps::Session;
use crate::exit;

/// How many recent decisions `--show` prints.
const SHOWN_DECISIONS: usize = 10;
/// Largest policy file read.
const MAX_POLICY_BYTES: u64 = 1 << 20;

/// `hydrant autoscale`.
#[derive(Debug, clap::Args)]
pub struct AutoscaleArgs {
    /// The app.
    name: String,
    /// Set the policy from this JSON file (app-autoscaler's format).
    #[arg(long, conflicts_with_all = ["show", "off"])]
    policy: Option<PathBuf>,
    /// Show the policy and the autoscaler's recent decisions.
    #[arg(long, conflicts_with = "off")]
    show: bool,
    /// Remove the policy: the app is no longer autoscaled.
    #[arg(long)]
    off: bool,
}

/// Which limits the policy sets right now, and where they come from.
fn in_force_now(policy: &ScalingPolicy) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let limits = policy.limits_at(now);
    let source = match (limits.schedule, &policy.schedules) {
        (Some((ScheduleKind::Recurring, i)), Some(s)) => format!(
            "schedules.recurring_schedule[{i}] ({})",
            escape_text(&s.timezone)
        ),
        (Some((ScheduleKind::SpecificDate, i)), Some(s)) => {
            format!(
                "schedules.specific_date[{i}] ({})",
                escape_text(&s.timezone)
            )
        }
        (_, Some(s)) => format!(
            "the policy; no schedule is active now in {}",
            escape_text(&s.timezone)
        ),
        (_, None) => "the policy".to_owned(),
    };
    format!(
        "In force now: {}..{} instances, from {source}.",
        limits.min, limits.max
    )
}

/// Runs `hydrant autoscale`.
///
/// # Errors
/// An unreadable or invalid policy file, or an API error.
pub async fn run(args: AutoscaleArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = &args.policy {
        let size = std::fs::metadata(path)
            .map_err(|e| exit::usage(format!("cannot read {}: {e}", path.display())))?
            .len();
        if size > MAX_POLICY_BYTES {
            return Err(exit::usage(format!(
                "{} is {size} bytes; a policy is at most {MAX_POLICY_BYTES}",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| exit::usage(format!("cannot read {}: {e}", path.display())))?;
        let policy = ScalingPolicy::parse(&text)
            .map_err(|e| exit::usage(format!("{}: {e}", path.display())))?;
        let session = Session::load()?;
        let app = session.app(&args.name).await?;
        session
            .client
            .set_autoscaling_policy(&app.guid, &policy)
            .await?;
        println!(
            "Autoscaling {} between {} and {} instances with {} rule(s).",
            escape_text(&app.name),
            policy.instance_min_count,
            policy.instance_max_count,
            policy.scaling_rules.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let session = Session::load()?;
    let app = session.app(&args.name).await?;
    if args.off {
        match session.client.delete_autoscaling_policy(&app.guid).await {
            Ok(()) => println!("Autoscaling is off for {}.", escape_text(&app.name)),
            Err(hydrant_api::Error::Api { status: 404, .. }) => {
                println!("{} had no autoscaling policy.", escape_text(&app.name));
            }
            Err(e) => return Err(e.into()),
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !args.show {
        return Err(exit::usage(
            "give --policy FILE, --show or --off (see `hydrant autoscale --help`)".to_owned(),
        ));
    }
    match session.client.autoscaling_policy(&app.guid).await {
        Ok(policy) => {
            println!("{}", serde_json::to_string_pretty(&policy)?);
            println!("\n{}", in_force_now(&policy));
        }
        Err(hydrant_api::Error::Api { status: 404, .. }) => {
            println!("{} has no autoscaling policy.", escape_text(&app.name));
        }
        Err(e) => return Err(e.into()),
    }
    let events = session
        .client
        .audit_events(&EventFilter {
            target_guid: Some(app.guid.clone()),
            types: Some("audit.app.autoscale".to_owned()),
        })
        .await?;
    if events.is_empty() {
        println!("\nNo autoscaling decisions yet.");
    } else {
        println!("\nRecent decisions (newest last):");
        let skip = events.len().saturating_sub(SHOWN_DECISIONS);
        for event in events.iter().skip(skip) {
            let reason = event.data["reason"].as_str().unwrap_or("");
            println!("  [{}] {}", event.created_at, escape_text(reason));
        }
    }
    Ok(ExitCode::SUCCESS)
}
