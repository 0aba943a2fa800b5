//! `hydrant top`: the terminal console (`hydrant-top`), started from the CLI config that
//! `hydrant up` or `hydrant login` wrote.
//!
//! Only option plumbing lives here: where the API and the firehose are, the token, and the
//! flags. The console decides on its own whether the token may read the whole firehose
//! (operator) or only its apps' streams (developer), unless a flag says which.

use std::process::ExitCode;
use std::time::Duration;

use crate::cli_config;

/// `hydrant top [--app TEXT] [--refresh MS] [--operator | --developer]`.
#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Only apps whose name contains TEXT (an initial `/` filter; in developer mode also the
    /// apps streamed).
    #[arg(long, value_name = "TEXT")]
    app: Option<String>,
    /// How often the screen is recomputed and redrawn, in milliseconds (100 to 60000).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    refresh: u64,
    /// Read the whole firehose (needs the firehose scope): every app and the pipeline.
    #[arg(long, conflicts_with = "developer")]
    operator: bool,
    /// Read only your own apps' streams (no admin rights needed).
    #[arg(long)]
    developer: bool,
}

/// Runs the console until `q`.
pub async fn run(args: TopArgs) -> anyhow::Result<ExitCode> {
    let cli = cli_config::load()?;
    let source = crate::session::stream_token_source(cli.token.clone(), None);
    let mut options = hydrant_top::Options::new(cli.api, cli.token, cli.firehose);
    options.token_source = source;
    options.app_filter = args.app.filter(|a| !a.is_empty());
    options.refresh = Duration::from_millis(args.refresh);
    options.mode = if args.operator {
        hydrant_top::Mode::Operator
    } else if args.developer {
        hydrant_top::Mode::Developer
    } else {
        hydrant_top::Mode::Auto
    };
    hydrant_top::run(options).await?;
    Ok(ExitCode::SUCCESS)
}
