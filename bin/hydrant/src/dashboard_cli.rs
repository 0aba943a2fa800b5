//! `hydrant dashboard [--open]`: the web dashboard's URL for the targeted cloud controller,
//! with the CLI's token in the fragment, printed (and with `--open` handed to `xdg-open`).
//!
//! The cloud controller serves the page at `/dashboard` on the API's origin; the page reads the
//! token from `#token=…`, which browsers never send to a server, then drops it from the
//! address bar. Invariant: the URL is built only from the CLI config, every byte of the token
//! outside the unreserved set is percent-encoded (so the page's form decoding cannot change
//! it), and text from the config is escaped before it reaches the terminal.

use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use hydrant_firehose_client::render::escape_text;

use crate::cli_config::{self, CliConfig};
use crate::exit;

/// Where the cloud controller serves the page.
const DASHBOARD_PATH: &str = "/dashboard";

/// How long `--open` waits to hear whether `xdg-open` failed before leaving it be.
const OPENER_GRACE: Duration = Duration::from_secs(3);

/// `hydrant dashboard [--open]`.
#[derive(Debug, clap::Args)]
pub struct DashboardArgs {
    /// Also open the URL in a browser with `xdg-open` (the token is then on `xdg-open`'s
    /// command line for as long as it runs).
    #[arg(long)]
    pub open: bool,
}

/// Runs `hydrant dashboard`.
///
/// # Errors
/// There is no CLI config, or it names no cloud controller.
pub fn run(args: &DashboardArgs) -> anyhow::Result<ExitCode> {
    let config = cli_config::load()?;
    let url = dashboard_url(&config)?;
    println!("{}", escape_text(&url));
    if args.open {
        match open(&url) {
            Ok(()) => eprintln!("opened the dashboard in your browser"),
            Err(why) => eprintln!("could not open a browser ({why}); open the URL above yourself"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `API/dashboard#token=TOKEN` for the config's cloud controller.
fn dashboard_url(config: &CliConfig) -> anyhow::Result<String> {
    let Some(api) = config.api.as_deref() else {
        return Err(exit::unreachable(
            "no cloud controller targeted, and the dashboard is served by it: run \
             `hydrant up`, or `hydrant target URL` then `hydrant login`",
        ));
    };
    let api = api.trim_end_matches('/');
    if !(api.starts_with("http://") || api.starts_with("https://")) {
        return Err(exit::usage(format!(
            "the targeted API {} is not an http(s):// URL; fix it with `hydrant target URL`",
            escape_text(api)
        )));
    }
    Ok(format!(
        "{api}{DASHBOARD_PATH}#token={}",
        percent_encode(&config.token)
    ))
}

/// Every byte but RFC 3986's unreserved ones (`A-Z a-z 0-9 - . _ ~`).
const NOT_UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes every byte outside RFC 3986's unreserved set.
fn percent_encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, NOT_UNRESERVED).to_string()
}

/// Starts `xdg-open URL` and reports a failure it shows within [`OPENER_GRACE`]; a browser
/// that keeps it running past that is left to it.
fn open(url: &str) -> Result<(), String> {
    let mut child = std::process::Command::new("xdg-open")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run xdg-open: {e}"))?;
    let deadline = Instant::now() + OPENER_GRACE;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("xdg-open failed: {status}")),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("xdg-open: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(api: Option<&str>, token: &str) -> CliConfig {
        CliConfig {
            firehose: "http://127.0.0.1:8081".to_owned(),
            agent: "http://127.0.0.1:3458".to_owned(),
            token: token.to_owned(),
            refresh_token: None,
            api: api.map(str::to_owned),
            router: None,
            user: None,
            agent_tls: None,
        }
    }

    #[test]
    fn the_token_rides_in_the_fragment() {
        let url = dashboard_url(&config(Some("http://127.0.0.1:9022/"), "hyd1.abc-_.x~y")).unwrap();
        assert_eq!(url, "http://127.0.0.1:9022/dashboard#token=hyd1.abc-_.x~y");
    }

    #[test]
    fn bytes_a_form_decoder_would_change_are_encoded() {
        assert_eq!(percent_encode("a+b/c=&d e#%"), "a%2Bb%2Fc%3D%26d%20e%23%25");
        assert_eq!(percent_encode("é"), "%C3%A9");
    }

    #[test]
    fn without_an_api_it_says_what_to_run() {
        let err = dashboard_url(&config(None, "t")).unwrap_err();
        let cli = err.downcast_ref::<exit::CliError>().unwrap();
        assert_eq!(cli.code, exit::UNREACHABLE);
        assert!(cli.message.contains("hydrant up"), "{}", cli.message);
        assert!(dashboard_url(&config(Some("ftp://x"), "t")).is_err());
    }
}
