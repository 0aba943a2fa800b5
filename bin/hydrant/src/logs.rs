//! `hydrant logs SOURCE [--recent] [--json]`: Cloud Foundry's `cf logs`, on Hydrant's firehose.
//!
//! Without `--recent` it prints the recent lines and then follows the live stream with no gap and
//! no duplicates (the client opens the stream before reading history, then de-duplicates the
//! overlap). Loss shows as a visible marker line; payload bytes are always escaped. An
//! `https://` edge is trusted through `--ca-file` (or `HYDRANT_CA_FILE`), else the system's
//! roots.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use hydrant_firehose_client::render::{self, RenderOptions, TimeZone};
use hydrant_firehose_client::{
    ClientConfig, EnvelopeView, Kind, RecentQuery, StreamEvent, follow_with_recent_query, recent,
};

use crate::cli_config::{self, CliConfig};

/// Arguments of `hydrant logs`.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The source id (app name or GUID) whose logs to show.
    source: String,
    /// Print the cached recent lines, oldest first, and exit.
    #[arg(long)]
    recent: bool,
    /// One JSON envelope (protojson shape) per line instead of text.
    #[arg(long)]
    json: bool,
    /// How many recent lines to show (at most 1000).
    #[arg(long, default_value_t = 100)]
    lines: u32,
    /// Also show the source's metrics (counters, gauges, timers, events), not only logs.
    #[arg(long)]
    all: bool,
    /// Print timestamps in UTC instead of local time.
    #[arg(long)]
    utc: bool,
    /// The CA bundle (PEM) that issued an `https://`/`wss://` firehose edge's certificate, e.g.
    /// the platform's `ca.pem`; without it the system's roots are trusted.
    #[arg(long, env = "HYDRANT_CA_FILE", value_name = "PEM")]
    ca_file: Option<std::path::PathBuf>,
}

/// The stream to read: an app's or a service instance's name resolves to its GUID (the source
/// id its envelopes carry) and a token scoped to it; anything else is read as a raw source id
/// with the CLI's token.
async fn resolve_source(cli: CliConfig, source: &str) -> anyhow::Result<(ClientConfig, String)> {
    let raw = ClientConfig {
        url: cli.firehose.clone(),
        token: cli.token.clone(),
        token_source: crate::session::stream_token_source(cli.token.clone(), None),
        ..ClientConfig::default()
    };
    if cli.api.is_none() {
        return Ok((raw, source.to_owned()));
    }
    let session = crate::apps::Session::load()?;
    match session.client.app_by_name(source, None).await {
        Ok(app) => {
            remember_app(source, &app.guid);
            let mut config = session.app_stream_config(&app).await?;
            config.token_source =
                crate::session::stream_token_source(config.token.clone(), Some(app.guid.clone()));
            Ok((config, app.guid))
        }
        // Not an app name: a service instance's (its own logs and gauges, source id = its
        // guid), a GUID, or a platform source such as `doppler`.
        Err(hydrant_api::Error::Api { status: 404, .. }) => {
            match crate::services_cli::instance_stream(&session, source).await? {
                Some((config, guid)) => Ok((config, guid)),
                None => Ok((raw, source.to_owned())),
            }
        }
        // The controller is down, but logs still flow: use the GUID this CLI saw for the name
        // last time (the firehose verifies the CLI's token by itself).
        Err(hydrant_api::Error::Transport { .. }) => {
            let guid = recall_app(source);
            eprintln!(
                "warning: the cloud controller is unreachable; reading {} from the firehose directly",
                match &guid {
                    Some(g) => format!("{} (app {g}, as last seen)", render::escape_text(source)),
                    None => format!("{} as a source id", render::escape_text(source)),
                }
            );
            Ok((raw, guid.unwrap_or_else(|| source.to_owned())))
        }
        Err(e) => Err(e.into()),
    }
}

/// `$HYDRANT_HOME/apps.json`: app name → GUID, as last resolved, so `hydrant logs NAME` keeps
/// working while the cloud controller is down. Best effort: a failure to read or write it
/// only costs that convenience.
fn apps_cache() -> Option<std::path::PathBuf> {
    cli_config::home().ok().map(|h| h.join("apps.json"))
}

fn remember_app(name: &str, guid: &str) {
    let Some(path) = apps_cache() else { return };
    let mut map: std::collections::BTreeMap<String, String> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if map.get(name).map(String::as_str) == Some(guid) {
        return;
    }
    // Bounded: a CLI that has seen very many apps forgets the map rather than grow it forever.
    if map.len() >= 10_000 {
        map.clear();
    }
    map.insert(name.to_owned(), guid.to_owned());
    if let Ok(bytes) = serde_json::to_vec(&map) {
        let _ = cli_config::write_private(&path, &bytes);
    }
}

fn recall_app(name: &str) -> Option<String> {
    let bytes = std::fs::read(apps_cache()?).ok()?;
    let map: std::collections::BTreeMap<String, String> = serde_json::from_slice(&bytes).ok()?;
    map.get(name).cloned()
}

/// Exit code when the output pipe closed (e.g. `hydrant logs app | head`): not an error.
fn broken_pipe(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe
}

pub async fn run(args: LogsArgs) -> anyhow::Result<ExitCode> {
    if args.lines == 0 || args.lines > 1000 {
        anyhow::bail!("--lines must be between 1 and 1000 (the log cache's read limit)");
    }
    let cli = cli_config::load()?;
    let name = args.source.clone();
    let (mut config, source) = resolve_source(cli, &args.source).await?;
    if let Some(ca) = &args.ca_file {
        // Read at each (re)connection; a missing file is said on the first one.
        config.ca_file = ca.display().to_string();
    }
    let args = LogsArgs { source, ..args };
    let opts = RenderOptions {
        color: !args.json && std::io::stdout().is_terminal(),
        tz: if args.utc {
            TimeZone::Utc
        } else {
            TimeZone::Local
        },
    };
    let mut query = RecentQuery::logs(args.lines);
    if args.all {
        query.envelope_types.clear();
    }
    let show = |view: &EnvelopeView<'_>| args.all || view.kind == Kind::Log;
    let stdout = std::io::stdout();
    let mut out = String::new();

    if args.recent {
        let mut envelopes = recent(&config, &args.source, &query).await?;
        // The newest N were asked for newest-first; print them oldest first.
        envelopes.sort_by_key(|e| e.timestamp);
        for envelope in &envelopes {
            let bytes = hydrant_envelope::wire::encode(envelope);
            let Ok(view) = EnvelopeView::parse(&bytes) else {
                continue;
            };
            if !show(&view) {
                continue;
            }
            if args.json {
                render::render_json(&view, &mut out)?;
            } else {
                render::render(&view, &opts, &mut out);
            }
        }
        if let Err(e) = stdout.lock().write_all(out.as_bytes()) {
            if broken_pipe(&e) {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(e.into());
        }
        return Ok(ExitCode::SUCCESS);
    }

    let mut follow = follow_with_recent_query(config, &args.source, query)?;
    if !args.json {
        eprintln!("Retrieving logs for {}...", render::escape_text(&name));
    }
    while let Some(event) = follow.next().await {
        out.clear();
        match &event {
            StreamEvent::Batch(batch) => {
                for view in batch.iter() {
                    if !show(&view) {
                        continue;
                    }
                    if args.json {
                        render::render_json(&view, &mut out)?;
                    } else {
                        render::render(&view, &opts, &mut out);
                    }
                }
            }
            StreamEvent::Gap(gap) => {
                if args.json {
                    render::render_gap_json(gap, &mut out);
                } else {
                    // The stream is one app's: the line says how many of its own were lost.
                    render::render_app_gap(gap, hydrant_envelope::now_nanos(), &opts, &mut out);
                }
            }
            StreamEvent::Disconnected { reason, retry_in } if retry_in.is_zero() => {
                eprintln!("{}; reconnecting now", render::escape_text(reason));
            }
            StreamEvent::Disconnected { reason, retry_in } => {
                eprintln!(
                    "lost the log stream ({}); reconnecting in {:.1} s",
                    render::escape_text(reason),
                    retry_in.as_secs_f64()
                );
            }
            StreamEvent::Closed { code, reason } => {
                eprintln!(
                    "the firehose closed the log stream ({code}: {}); reconnecting",
                    render::escape_text(reason)
                );
            }
            StreamEvent::RecentFailed(e) => {
                eprintln!("could not read recent logs ({e}); following the live stream only");
            }
            StreamEvent::Fatal(e) => {
                anyhow::bail!("{e}");
            }
            _ => {}
        }
        if !out.is_empty() {
            let mut lock = stdout.lock();
            if let Err(e) = lock.write_all(out.as_bytes()).and_then(|()| lock.flush()) {
                if broken_pipe(&e) {
                    return Ok(ExitCode::SUCCESS);
                }
                return Err(e.into());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
