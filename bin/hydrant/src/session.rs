//! `hydrant login` and `hydrant target`: which cloud controller the CLI talks to, as whom, and
//! in which org and space (`target -o ORG -s SPACE`, kept by `orgs_cli`).
//!
//! The token lands in the CLI config (mode 0600) beside the endpoints the controller
//! advertises in `GET /v3/info`, so `logs`, `push` and the rest need no flags afterwards. The
//! refresh token lands there too: `cli_config::refresh_if_needed` renews the access token
//! before any command when it is about to expire.

use std::io::{BufRead as _, IsTerminal as _};
use std::process::ExitCode;

use std::sync::{Arc, Mutex};

use hydrant_api::Client;
use hydrant_firehose_client::render::escape_text;
use hydrant_firehose_client::{TokenError, TokenSource};

use crate::cli_config::{self, CliConfig};
use crate::exit;

/// `hydrant login`.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// User name.
    #[arg(short = 'u', long)]
    username: Option<String>,
    /// Password (prefer the HYDRANT_PASSWORD variable or the prompt: flags show in `ps`).
    #[arg(short = 'p', long, env = "HYDRANT_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// The cloud controller to log in to (default: the current target).
    #[arg(short = 'a', long)]
    api: Option<String>,
}

/// `hydrant target`.
#[derive(Debug, clap::Args)]
pub struct TargetArgs {
    /// The cloud controller's URL to target; without it, show the current target.
    api: Option<String>,
    /// The org to work in.
    #[arg(short = 'o', long)]
    org: Option<String>,
    /// The space to work in (in the targeted or given org).
    #[arg(short = 's', long)]
    space: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn prompt(label: &str) -> anyhow::Result<String> {
    eprint!("{label}: ");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

pub async fn login(args: LoginArgs) -> anyhow::Result<ExitCode> {
    let existing = cli_config::load().ok();
    let api = args
        .api
        .clone()
        .or_else(|| existing.as_ref().and_then(|c| c.api.clone()))
        .ok_or_else(|| {
            exit::usage(
                "no cloud controller to log in to: pass --api URL or run `hydrant target URL`",
            )
        })?;
    let interactive = std::io::stdin().is_terminal();
    let username = match args.username {
        Some(u) => u,
        None if interactive => prompt("Username")?,
        None => {
            return Err(exit::usage(
                "-u USERNAME is required when stdin is not a terminal",
            ));
        }
    };
    let password = match args.password {
        Some(p) => p,
        // Read a line from a pipe (`echo pw | hydrant login -u me`) or, without echo, the
        // terminal.
        None => crate::orgs_cli::read_secret("Password")?,
    };
    let client = Client::new(&api, None);
    let info = client.info().await?;
    let token = client
        .login(&username, &password)
        .await
        .map_err(|e| match e {
            hydrant_api::Error::Api { status: 401, .. } => exit::CliError {
                code: exit::UNREACHABLE,
                message: "login failed: wrong user name or password".to_owned(),
            }
            .into(),
            other => anyhow::Error::from(other),
        })?;
    let config = CliConfig {
        firehose: info
            .endpoints
            .get("firehose")
            .cloned()
            .or_else(|| existing.as_ref().map(|c| c.firehose.clone()))
            .unwrap_or_default(),
        agent: info
            .endpoints
            .get("agent")
            .cloned()
            .or_else(|| existing.as_ref().map(|c| c.agent.clone()))
            .unwrap_or_default(),
        router: info
            .endpoints
            .get("router")
            .cloned()
            .or_else(|| existing.as_ref().and_then(|c| c.router.clone())),
        token: token.access_token,
        refresh_token: token.refresh_token,
        api: Some(api.clone()),
        user: Some(username.clone()),
        agent_tls: existing.as_ref().and_then(|c| c.agent_tls.clone()),
    };
    let authed = client.with_token(config.token.clone());
    let path = cli_config::save(&config)?;
    eprintln!(
        "Logged in to {} as {} (saved in {})",
        escape_text(&api),
        escape_text(&username),
        path.display()
    );
    crate::orgs_cli::target_after_login(&authed, &api, &username).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn target(args: TargetArgs) -> anyhow::Result<ExitCode> {
    if let Some(api) = args.api {
        let info = Client::new(&api, None).info().await?;
        let mut config = cli_config::load().unwrap_or(CliConfig {
            firehose: String::new(),
            agent: String::new(),
            token: String::new(),
            refresh_token: None,
            api: None,
            router: None,
            user: None,
            agent_tls: None,
        });
        if config.api.as_deref() != Some(api.as_str()) {
            // A token from another controller is useless here.
            config.token.clear();
            config.refresh_token = None;
            config.user = None;
        }
        config.api = Some(api.clone());
        if let Some(f) = info.endpoints.get("firehose") {
            config.firehose.clone_from(f);
        }
        if let Some(a) = info.endpoints.get("agent") {
            config.agent.clone_from(a);
        }
        config.router = info.endpoints.get("router").cloned().or(config.router);
        cli_config::save(&config)?;
        eprintln!(
            "Targeted {} (API {}); log in with `hydrant login`",
            escape_text(&api),
            escape_text(&info.api_version)
        );
        return Ok(ExitCode::SUCCESS);
    }
    if args.org.is_some() || args.space.is_some() {
        crate::orgs_cli::set_target(args.org.as_deref(), args.space.as_deref()).await?;
    }
    let config = cli_config::load()?;
    let target = crate::orgs_cli::load_target();
    let org = target
        .as_ref()
        .and_then(|t| t.org.as_ref())
        .map(|o| o.name.as_str());
    let space = target
        .as_ref()
        .and_then(|t| t.space.as_ref())
        .map(|s| s.name.as_str());
    if args.json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            api: Option<&'a str>,
            user: Option<&'a str>,
            org: Option<&'a str>,
            space: Option<&'a str>,
            firehose: &'a str,
            router: Option<&'a str>,
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&Out {
                api: config.api.as_deref(),
                user: config.user.as_deref(),
                org,
                space,
                firehose: &config.firehose,
                router: config.router.as_deref(),
            })?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let show = |v: Option<&str>| v.map_or_else(|| "(none)".to_owned(), escape_text);
    println!("api:       {}", show(config.api.as_deref()));
    println!("user:      {}", show(config.user.as_deref()));
    println!("org:       {}", show(org));
    println!("space:     {}", show(space));
    println!("firehose:  {}", escape_text(&config.firehose));
    println!("router:    {}", show(config.router.as_deref()));
    Ok(ExitCode::SUCCESS)
}

/// A token source for long streams (`hydrant logs -f`, `hydrant top`): hands out `initial`
/// until the firehose closes the stream for an expired token, then renews the saved login with
/// the saved refresh token (as `refresh_if_needed` does before a command) and, for an app's
/// stream (`app_guid`), mints a fresh log token with it. `None` without a saved refresh token:
/// the stream then ends with a message naming the expiry.
pub fn stream_token_source(initial: String, app_guid: Option<String>) -> Option<TokenSource> {
    let saved = cli_config::load().ok()?;
    saved.api.as_ref()?;
    saved.refresh_token.as_ref()?;
    let current = Arc::new(Mutex::new(initial));
    Some(TokenSource::new(move |stale| {
        let (current, app_guid) = (Arc::clone(&current), app_guid.clone());
        async move {
            let lock = |m: &Mutex<String>| {
                m.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone()
            };
            if !stale {
                return Ok(lock(&current));
            }
            let session = renew_session().await?;
            let token = match &app_guid {
                Some(guid) => {
                    let api = session.api.clone().unwrap_or_default();
                    match Client::new(&api, Some(session.token.clone()))
                        .log_token(guid)
                        .await
                    {
                        Ok(t) => t.token,
                        Err(hydrant_api::Error::Api { status: 404, .. }) => session.token,
                        Err(e) => return Err(TokenError::Unavailable(e.to_string())),
                    }
                }
                None => session.token,
            };
            *current
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = token.clone();
            Ok(token)
        }
    }))
}

/// The saved login, its access token renewed with the refresh token unless it has more than
/// two minutes left; the renewal is saved for the next command.
pub(crate) async fn renew_session() -> Result<CliConfig, TokenError> {
    let mut config = cli_config::load().map_err(|e| TokenError::Unavailable(e.to_string()))?;
    let fresh_enough = hydrant_auth::peek_claims(&config.token)
        .is_ok_and(|c| c.exp - hydrant_auth::now_secs() > 120);
    if fresh_enough {
        return Ok(config);
    }
    let (Some(api), Some(refresh)) = (config.api.clone(), config.refresh_token.clone()) else {
        return Err(TokenError::Refused(
            "no saved refresh token: log in again with `hydrant login`".to_owned(),
        ));
    };
    match Client::new(&api, None).refresh(&refresh).await {
        Ok(fresh) => {
            config.token = fresh.access_token;
            if let Some(r) = fresh.refresh_token {
                config.refresh_token = Some(r);
            }
            if let Err(e) = cli_config::save(&config) {
                tracing::warn!(error = %e, "cannot save the renewed token");
            }
            Ok(config)
        }
        Err(hydrant_api::Error::Api {
            status: 400 | 401 | 403,
            ..
        }) => Err(TokenError::Refused(
            "the saved login has expired: log in again with `hydrant login`".to_owned(),
        )),
        Err(e) => Err(TokenError::Unavailable(e.to_string())),
    }
}
