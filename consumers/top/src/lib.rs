//! `hydrant top`: the terminal console over the firehose and the platform's API — Cloud
//! Foundry's `cf top` screens with k9s's keys.
//!
//! Flow: firehose edge (the whole firehose for an operator, one stream per app for a
//! developer) and the log cache → the feed tasks ([`feed`]) → one bounded channel → [`State`]
//! (rolling windows from `hydrant-windows`, logs, sparklines, component metrics, events) →
//! [`State::tick`] builds the [`view::View`] at the refresh rate → [`ui::draw`] into the
//! terminal. Keys come from a reader thread ([`terminal`]) and go to [`State::apply_key`].
//!
//! # Layout
//! - [`run`] / [`Options`]: the entry point and what it needs.
//! - [`State`] (`state`): all data and UI state, pure update methods, no I/O.
//! - [`view`]: what the screens show, computed; columns and thresholds as data.
//! - [`services`]: the services screens (`:services`, `:service NAME`): columns and detail.
//! - [`ui`]: drawing from `&State`; [`input`]: the keymap.
//! - [`feed`]: the stream, history and API tasks; [`terminal`]: raw mode, restore, key thread.
//! - [`format`]: narrow-cell numbers and the escape every outside string goes through.
//!
//! Invariants: input, state and drawing stay apart (drawing takes `&State`); the channel from
//! the streams is bounded and its drops are counted on screen; the terminal is restored on
//! exit, on error and on panic; no byte of a payload reaches the terminal unescaped.

mod error;
mod feed;
pub mod format;
pub mod input;
pub mod services;
mod state;
pub mod terminal;
pub mod ui;
pub mod view;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hydrant_api::Client;
use hydrant_firehose_client::ClientConfig;
use ratatui::Terminal;
use ratatui::backend::{Backend, CrosstermBackend};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use error::Error;
pub use state::{
    ApiSnapshot, Effect, Feed, Filter, Prompt, Refused, SPARK_SECS, State, StateConfig,
    StreamChange, TableUi,
};

use crate::terminal::Input;

/// Who the console reads as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Operator when the API says the token is an admin's (or there is no API), developer
    /// otherwise; falls back to developer when the firehose refuses the token.
    #[default]
    Auto,
    /// The whole firehose (needs the firehose scope): every app and the pipeline's own metrics.
    Operator,
    /// One stream per app the token may see: no admin rights needed.
    Developer,
}

/// What `hydrant top` needs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The cloud controller's URL; without it only the firehose is shown (no names, no
    /// instance states, no developer mode).
    pub api_url: Option<String>,
    /// The bearer token for the API and the firehose.
    pub token: String,
    /// Renews the firehose stream's token when the edge closes it for expiry (the CLI's
    /// refresh token); `None` keeps `token` for the stream's life. Default `None`.
    pub token_source: Option<hydrant_firehose_client::TokenSource>,
    /// The firehose edge's URL.
    pub firehose_url: String,
    /// Only apps whose name contains this (an initial `/` filter; in developer mode, also the
    /// apps streamed).
    pub app_filter: Option<String>,
    /// How often the screen is recomputed and redrawn. Default 1 s (cf top's); 100 ms to 60 s.
    pub refresh: Duration,
    /// Operator, developer, or decide.
    pub mode: Mode,
    /// How often the API is polled. Default 5 s.
    pub api_interval: Duration,
}

impl Options {
    /// Options for a platform at `api_url` / `firehose_url` with `token`, defaults otherwise.
    #[must_use]
    pub fn new(api_url: Option<String>, token: String, firehose_url: String) -> Self {
        Self {
            api_url,
            token,
            token_source: None,
            firehose_url,
            app_filter: None,
            refresh: Duration::from_secs(1),
            mode: Mode::Auto,
            api_interval: Duration::from_secs(5),
        }
    }

    /// Checks every option.
    ///
    /// # Errors
    /// [`Error::Options`] naming the option and the fix.
    pub fn validate(&self) -> Result<(), Error> {
        if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&self.refresh) {
            return Err(Error::Options {
                option: "--refresh",
                message: format!(
                    "({} ms) must be between 100 and 60000 milliseconds",
                    self.refresh.as_millis()
                ),
            });
        }
        if self.api_interval < Duration::from_secs(1) {
            return Err(Error::Options {
                option: "api_interval",
                message: "must be at least 1 s, or the API is polled too hard".to_owned(),
            });
        }
        if self.firehose_url.trim().is_empty() {
            return Err(Error::Options {
                option: "firehose",
                message: "is empty: run `hydrant up`, or `hydrant target URL` and \
                          `hydrant login`, so the CLI knows where the firehose is"
                    .to_owned(),
            });
        }
        if self.mode == Mode::Developer && self.api_url.is_none() {
            return Err(Error::Options {
                option: "--developer",
                message: "needs the API (to list your apps and get their log tokens); \
                          run `hydrant target URL` and `hydrant login`"
                    .to_owned(),
            });
        }
        let config = self.stream_config();
        config.validate().map_err(|e| Error::Options {
            option: "firehose",
            message: format!("is unusable: {e}"),
        })
    }

    fn stream_config(&self) -> ClientConfig {
        ClientConfig {
            url: self.firehose_url.clone(),
            token: self.token.clone(),
            token_source: self.token_source.clone(),
            ..ClientConfig::default()
        }
    }
}

/// Decides how to read: the API's word on whether the token is an admin's. When the API cannot
/// say (down, or none configured), the firehose is tried; a refusal falls back to app streams.
async fn resolve(options: &Options, api: Option<&Client>) -> (feed::Reading, bool) {
    let admin = match api {
        Some(api) => match tokio::time::timeout(Duration::from_secs(5), api.me()).await {
            Ok(Ok(me)) => Some(me.user.admin),
            _ => None,
        },
        None => None,
    };
    let reading = match (options.mode, admin) {
        (Mode::Operator, _) | (Mode::Auto, Some(true) | None) => feed::Reading::Firehose,
        (Mode::Developer, _) | (Mode::Auto, Some(false)) => feed::Reading::AppStreams,
    };
    (reading, admin == Some(true))
}

/// Runs the console until `q`, Ctrl-C or SIGTERM.
///
/// # Errors
/// [`Error::Options`] for unusable options, [`Error::Terminal`] when there is no terminal to
/// draw on, [`Error::Unauthorized`] when no stream accepts the token.
pub async fn run(options: Options) -> Result<(), Error> {
    options.validate()?;
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        return Err(Error::Terminal(std::io::Error::other(
            "standard output is not a terminal (for logs in a pipe, use `hydrant logs`)",
        )));
    }
    let api = options
        .api_url
        .as_deref()
        .map(|url| Client::new(url, Some(options.token.clone())));
    let (reading, admin) = resolve(&options, api.as_ref()).await;
    let shutdown = CancellationToken::new();
    let (tx, rx) = mpsc::channel(feed::CHANNEL);
    let dropped = Arc::new(AtomicU64::new(0));
    let feeder = feed::Feeder {
        tx,
        dropped: Arc::clone(&dropped),
        shutdown: shutdown.clone(),
    };
    let (apps_tx, apps_rx) = watch::channel(feed::Listing::default());
    if let Some(api) = &api {
        tokio::spawn(feed::api_poller(
            api.clone(),
            admin,
            options.api_interval,
            apps_tx,
            feeder.clone(),
        ));
    }
    // A fatal stream error ends the console with a message; in developer mode nothing sends
    // one, so the sender is kept until the console ends.
    let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel::<String>();
    let mut keep_fatal = None;
    let mode_label = match reading {
        feed::Reading::Firehose => {
            let (config, api_for_feed, feeder) =
                (options.stream_config(), api.clone(), feeder.clone());
            let fallback = (options.mode == Mode::Auto).then(|| (apps_rx.clone(), api.clone()));
            let only = options.app_filter.clone();
            tokio::spawn(async move {
                let outcome = feed::firehose(config.clone(), api_for_feed, feeder.clone()).await;
                let Err(error) = outcome else { return };
                let refused = matches!(
                    error,
                    hydrant_firehose_client::Error::Unauthorized
                        | hydrant_firehose_client::Error::Forbidden { .. }
                );
                match fallback {
                    // Not allowed on the firehose: read the apps one by one instead.
                    Some((apps, Some(api))) if refused => {
                        let _ = feeder
                            .send_notice(
                                "the firehose refused this token: showing your apps' \
                                 own streams (developer mode)",
                            )
                            .await;
                        feed::app_streams(config, api, apps, only, feeder).await;
                    }
                    _ => {
                        let _ = fatal_tx.send(error.to_string());
                    }
                }
            });
            "operator (firehose)"
        }
        feed::Reading::AppStreams => {
            if let Some(api) = api.clone() {
                tokio::spawn(feed::app_streams(
                    options.stream_config(),
                    api,
                    apps_rx,
                    options.app_filter.clone(),
                    feeder.clone(),
                ));
            }
            keep_fatal = Some(fatal_tx);
            "developer (app streams)"
        }
    };
    drop(feeder);
    let target = options
        .api_url
        .clone()
        .unwrap_or_else(|| options.firehose_url.clone());
    let mut state = State::new(
        StateConfig::default(),
        Instant::now(),
        hydrant_envelope::now_nanos(),
        mode_label,
        &target,
    )?;
    if let Some(filter) = &options.app_filter {
        state.set_filter(view::TableKind::Apps, filter);
    }
    let result = ui_loop(&mut state, rx, &dropped, fatal_rx, options.refresh).await;
    shutdown.cancel();
    drop(keep_fatal);
    result
}

impl feed::Feeder {
    /// Tells the operator something on the status line.
    async fn send_notice(&self, text: &str) -> bool {
        let feed = Feed::Stream(StreamChange::Notice(text.to_owned()));
        tokio::select! {
            () = self.shutdown.cancelled() => false,
            sent = self.tx.send(feed) => sent.is_ok(),
        }
    }
}

/// How long the console waits for its input thread to stop before it leaves without it.
const READER_GRACE: Duration = Duration::from_millis(500);

/// Messages applied in one go before the loop looks at keys and the clock again.
const DRAIN: usize = 256;

async fn ui_loop(
    state: &mut State,
    mut rx: mpsc::Receiver<Feed>,
    dropped: &AtomicU64,
    mut fatal: tokio::sync::oneshot::Receiver<String>,
    refresh: Duration,
) -> Result<(), Error> {
    let guard = terminal::Guard::enter()?;
    let mut term = fresh_terminal()?;
    let (keys_tx, mut keys) = mpsc::channel(64);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = terminal::spawn_input(keys_tx, Arc::clone(&stop))?;
    let mut tick = tokio::time::interval(refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut term_signal =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let (mut fatal_done, mut feed_open) = (false, true);
    let outcome = loop {
        tokio::select! {
            biased;
            input = keys.recv() => {
                let now = Instant::now();
                match input {
                    Some(Input::Key(key)) => match state.apply_key(&key, now) {
                        Effect::Quit => break Ok(()),
                        Effect::Repaint => term = fresh_terminal()?,
                        Effect::Redraw => {}
                    },
                    Some(Input::Resize) => {}
                    Some(Input::Failed(e)) => break Err(Error::Terminal(std::io::Error::other(e))),
                    None => break Ok(()),
                }
                draw(&mut term, state)?;
            }
            _ = tick.tick() => {
                let now = Instant::now();
                state.set_ui_dropped(dropped.load(Ordering::Relaxed), now);
                state.tick(now);
                draw(&mut term, state)?;
            }
            message = &mut fatal, if !fatal_done => {
                fatal_done = true;
                if let Ok(message) = message {
                    break Err(Error::Unauthorized(message));
                }
            }
            feed = rx.recv(), if feed_open => {
                let Some(feed) = feed else {
                    // Every feed task ended: keep showing what is known.
                    feed_open = false;
                    continue;
                };
                let now = Instant::now();
                state.apply_feed(feed, now);
                for _ in 0..DRAIN {
                    match rx.try_recv() {
                        Ok(feed) => state.apply_feed(feed, now),
                        Err(_) => break,
                    }
                }
            }
            _ = term_signal.recv() => break Ok(()),
            _ = hangup.recv() => break Ok(()),
        }
    };
    stop.store(true, Ordering::Relaxed);
    drop(guard);
    // The reader notices `stop` within its poll interval and holds no terminal state. When the
    // terminal has hung up, crossterm's poll can spin without ever returning, so the wait is
    // bounded: the thread ends with the process.
    // (Not `spawn_blocking(join)`: dropping the runtime would wait for that forever.)
    let deadline = Instant::now() + READER_GRACE;
    while !reader.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if reader.is_finished() {
        let _ = reader.join();
    }
    outcome
}

/// A cleared screen and a terminal whose next frame redraws every cell. (Ratatui's own
/// `clear` asks the terminal where its cursor is and waits for the answer, which a terminal
/// that does not answer — a bare pseudo-terminal — never gives.)
fn fresh_terminal() -> std::io::Result<Terminal<CrosstermBackend<std::io::Stdout>>> {
    ratatui::crossterm::execute!(
        std::io::stdout(),
        ratatui::crossterm::terminal::Clear(ratatui::crossterm::terminal::ClearType::All)
    )?;
    Terminal::new(CrosstermBackend::new(std::io::stdout()))
}

/// Draws one frame, telling the state how many rows a page is.
pub fn draw<B: Backend>(term: &mut Terminal<B>, state: &mut State) -> Result<(), Error>
where
    B::Error: std::fmt::Display,
{
    let failed = |e: B::Error| Error::Terminal(std::io::Error::other(e.to_string()));
    let size = term.size().map_err(failed)?;
    state.set_page(ui::page_rows(size.height));
    term.draw(|frame| ui::draw(frame, state)).map_err(failed)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options::new(
            Some("http://127.0.0.1:9022".to_owned()),
            "token".to_owned(),
            "http://127.0.0.1:8081".to_owned(),
        )
    }

    #[test]
    fn options_validate_and_name_the_option_at_fault() {
        options().validate().unwrap();
        let bad = Options {
            refresh: Duration::from_millis(50),
            ..options()
        };
        let message = bad.validate().unwrap_err().to_string();
        assert!(
            message.contains("`--refresh`") && message.contains("50 ms"),
            "{message}"
        );
        let bad = Options {
            api_url: None,
            mode: Mode::Developer,
            ..options()
        };
        let message = bad.validate().unwrap_err().to_string();
        assert!(message.contains("`--developer`"), "{message}");
        let bad = Options {
            firehose_url: " ".to_owned(),
            ..options()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("`firehose`")
        );
        let bad = Options {
            firehose_url: "ftp://edge".to_owned(),
            ..options()
        };
        let message = bad.validate().unwrap_err().to_string();
        assert!(
            message.contains("`firehose`") && message.contains("https://"),
            "{message}"
        );
    }
}
