//! `hydrant emit SOURCE --message TEXT`: send log lines into the pipeline by hand.
//!
//! It talks to the agent with the stock v2 `Send` call, so a failure is reported to the person
//! at the keyboard instead of being dropped in a background queue.

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::Context as _;
use bytes::Bytes;
use hydrant_envelope::v2;

use crate::cli_config;

/// Arguments of `hydrant emit`.
#[derive(Debug, clap::Args)]
pub struct EmitArgs {
    /// The source id (app name or GUID) the lines belong to.
    source: String,
    /// The log line to send.
    #[arg(long, short)]
    message: String,
    /// How many copies to send (numbered when more than one).
    #[arg(long, short = 'n', default_value_t = 1)]
    count: u64,
    /// The instance id tag.
    #[arg(long, default_value = "0")]
    instance: String,
    /// The source type tag (`APP/PROC/WEB`, `RTR`, `STG`, ...).
    #[arg(long, default_value = "APP/PROC/WEB")]
    source_type: String,
    /// Send as standard error (ERR) instead of standard output.
    #[arg(long)]
    err: bool,
    /// The agent URL (default: the one `hydrant up` wrote into the CLI config).
    #[arg(long)]
    agent: Option<String>,
}

/// Envelopes per `Send` call.
const CHUNK: u64 = 500;

pub async fn run(args: EmitArgs) -> anyhow::Result<ExitCode> {
    if args.count == 0 {
        anyhow::bail!("--count must be at least 1");
    }
    let (agent, tls) = match args.agent.clone() {
        Some(a) => (a, None),
        None => {
            let config = cli_config::load()?;
            (config.agent, config.agent_tls)
        }
    };
    // Under mutual TLS (what `hydrant up` runs) the CLI presents the certificate `hydrant up`
    // wrote into its config, and accepts only a server whose certificate names `agent`.
    let connector = tls
        .map(|files| {
            let material = hydrant_tls::Material::load(&files)?;
            hydrant_tls::ClientTls::new(material, hydrant_tls::Identity::Agent)
                .map(hydrant_tls::Connector::new)
        })
        .transpose()
        .context("cannot use the agent certificate from the CLI config")?;
    let endpoint = tonic::transport::Endpoint::from_shared(agent.clone())
        .with_context(|| format!("{agent:?} is not an agent URL"))?;
    let channel = hydrant_tls::grpc::connect(&endpoint, connector.as_ref())
        .await
        .with_context(|| format!("cannot reach the agent at {agent}; is `hydrant up` running?"))?;
    let mut client = v2::ingress_client::IngressClient::new(channel);
    let mut sent = 0;
    while sent < args.count {
        let n = CHUNK.min(args.count - sent);
        let batch = v2::EnvelopeBatch {
            batch: (sent..sent + n).map(|i| envelope(&args, i)).collect(),
        };
        client
            .send(batch)
            .await
            .with_context(|| format!("the agent at {agent} refused the envelopes"))?;
        sent += n;
    }
    eprintln!("sent {sent} log line(s) for {} to {agent}", args.source);
    Ok(ExitCode::SUCCESS)
}

fn envelope(args: &EmitArgs, i: u64) -> v2::Envelope {
    let text = if args.count > 1 {
        format!("{} {}", args.message, i + 1)
    } else {
        args.message.clone()
    };
    v2::Envelope {
        timestamp: hydrant_envelope::now_nanos(),
        source_id: args.source.clone(),
        instance_id: args.instance.clone(),
        tags: HashMap::from([("source_type".to_owned(), args.source_type.clone())]),
        message: Some(v2::envelope::Message::Log(v2::Log {
            payload: Bytes::from(text),
            r#type: i32::from(args.err),
        })),
        ..v2::Envelope::default()
    }
}
