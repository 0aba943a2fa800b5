//! `hydrant certs`: the platform's internal CA and its leaves, on the command line.
//!
//! `init` makes the CA and a leaf per role identity; `issue` makes one more leaf (for another
//! host: `--out DIR`, with `--cell ID` for an executor's per-cell bus identity); `show` lists
//! every certificate with its expiry; `rotate begin|reissue|finish` replaces the CA in three
//! steps, each refused out of order with the step that comes next; `nats-config` writes the
//! `nats-server` config matching the directory (TLS, a user per identity, subject permissions).
//! Everything is done by `hydrant_tls::issue` and `hydrant_bus::nats_config`; this file only
//! parses arguments and prints. Invariant: nothing here prints a private key.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use hydrant_bus::nats_config::{self, ServerTls};
use hydrant_tls::Identity;
use hydrant_tls::issue::{self, CertDir, LeafSpec, Rotation};

use crate::cli_config;

/// `hydrant certs`.
#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    command: CertsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CertsCommand {
    /// Make the internal CA and one leaf per role identity.
    Init {
        #[command(flatten)]
        dir: DirArg,
        /// Leaf validity in days.
        #[arg(long, default_value_t = issue::DEFAULT_DAYS)]
        days: u32,
        /// CA validity in days.
        #[arg(long, default_value_t = issue::DEFAULT_CA_DAYS)]
        ca_days: u32,
        /// Extra host names or addresses every leaf carries as SANs (default: localhost and
        /// 127.0.0.1).
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// Issue (or reissue) one identity's leaf from the CA.
    Issue {
        /// The identity: agent, doppler, trafficcontroller, cloudcontroller, executor, router,
        /// healthmanager, autoscaler, slo, nozzle or nats.
        identity: Identity,
        /// Extra host names or addresses the leaf carries as SANs (repeatable).
        #[arg(long = "name")]
        names: Vec<String>,
        /// For an executor: its cell (executor id); adds the SAN `<cell>.executor`, which the
        /// authenticated bus maps to that cell's own user.
        #[arg(long)]
        cell: Option<String>,
        #[command(flatten)]
        dir: DirArg,
        /// Write the leaf and a copy of ca.pem here (for another host) instead of into --dir.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Validity in days.
        #[arg(long, default_value_t = issue::DEFAULT_DAYS)]
        days: u32,
    },
    /// List every certificate: identity, issuer, expiry, days left.
    Show {
        #[command(flatten)]
        dir: DirArg,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Replace the CA without dropping a connection: begin, reissue, finish.
    Rotate {
        /// Which step.
        step: RotateStep,
        #[command(flatten)]
        dir: DirArg,
        /// The new CA's validity in days (for `begin`).
        #[arg(long, default_value_t = issue::DEFAULT_CA_DAYS)]
        ca_days: u32,
    },
    /// Write the nats-server config for the authenticated bus (TLS, users, permissions).
    NatsConfig {
        #[command(flatten)]
        dir: DirArg,
        /// Where nats-server listens.
        #[arg(long, default_value = "127.0.0.1:4222")]
        listen: String,
        /// Give each of these cells (executor ids) its own bus user, allowed only its own
        /// subjects (repeatable). Without it every executor shares one user.
        #[arg(long = "cell")]
        cells: Vec<String>,
        /// The file to write (default: nats.conf in the certificate directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Make this server one node of a cluster: where it accepts routes from the other
        /// nodes (HOST:PORT). Routes use the `nats` certificate and a shared secret kept in
        /// `nats-cluster.secret` in the certificate directory (made on first use; copy it to
        /// every node with the certificates).
        #[arg(long)]
        cluster_listen: Option<String>,
        /// Another node's route address (HOST:PORT, repeatable); this node's own may be listed,
        /// so every node can be given the same list.
        #[arg(long = "route", requires = "cluster_listen")]
        routes: Vec<String>,
        /// The cluster's name (the same on every node).
        #[arg(long, default_value = "hydrant", requires = "cluster_listen")]
        cluster_name: String,
    },
}

/// The steps of `hydrant certs rotate`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RotateStep {
    /// Make a new CA and trust it beside the old one.
    Begin,
    /// Reissue every leaf from the new CA.
    Reissue,
    /// Stop trusting the old CA.
    Finish,
}

#[derive(Debug, clap::Args)]
struct DirArg {
    /// The certificate directory. Default: `$HYDRANT_HOME/data/certs` (where `hydrant up`
    /// keeps its own).
    #[arg(long = "dir")]
    dir: Option<PathBuf>,
}

impl DirArg {
    fn resolve(&self) -> anyhow::Result<PathBuf> {
        match &self.dir {
            Some(dir) => Ok(dir.clone()),
            None => Ok(cli_config::home()?.join("data").join("certs")),
        }
    }
}

/// Runs `hydrant certs ...`.
pub fn run(args: CertsArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        CertsCommand::Init {
            dir,
            days,
            ca_days,
            names,
        } => init(&dir.resolve()?, days, ca_days, names),
        CertsCommand::Issue {
            identity,
            mut names,
            cell,
            dir,
            out,
            days,
        } => {
            let dir = dir.resolve()?;
            if let Some(cell) = cell {
                if identity != Identity::Executor {
                    anyhow::bail!("--cell is for executor certificates, not {identity}");
                }
                // The same check the bus config applies, so a cell name that works here works
                // there.
                nats_config::users(std::slice::from_ref(&cell))?;
                names.push(nats_config::cell_user(&cell));
            }
            let spec = LeafSpec {
                identity,
                names,
                days,
            };
            let target = issue::issue(&dir, &spec, out.as_deref())?;
            println!(
                "issued {identity}: {} and {}",
                target.cert_file(identity).display(),
                target.key_file(identity).display()
            );
            Ok(ExitCode::SUCCESS)
        }
        CertsCommand::Show { dir, json } => show(&dir.resolve()?, json),
        CertsCommand::Rotate { step, dir, ca_days } => rotate(&dir.resolve()?, step, ca_days),
        CertsCommand::NatsConfig {
            dir,
            listen,
            cells,
            out,
            cluster_listen,
            routes,
            cluster_name,
        } => {
            let cluster = cluster_listen.map(|listen| ClusterArgs {
                name: cluster_name,
                listen,
                routes,
            });
            nats(&dir.resolve()?, &listen, &cells, cluster.as_ref(), out)
        }
    }
}

fn init(dir: &Path, days: u32, ca_days: u32, names: Vec<String>) -> anyhow::Result<ExitCode> {
    let names = if names.is_empty() {
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
    } else {
        names
    };
    let certs = issue::init(dir, ca_days)?;
    for identity in Identity::ALL {
        let spec = LeafSpec {
            identity,
            names: names.clone(),
            days,
        };
        issue::issue(dir, &spec, None)?;
    }
    println!(
        "made a CA and {} leaves in {} (keys 0600; give each role its <identity>.pem, \
         <identity>.key and ca.pem)",
        Identity::ALL.len(),
        certs.dir().display()
    );
    Ok(ExitCode::SUCCESS)
}

fn show(dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let all = issue::show(dir)?;
    let rotation = CertDir::new(dir).rotation();
    let now = issue::unix_now();
    if json {
        let certificates: Vec<_> = all
            .iter()
            .map(|c| {
                serde_json::json!({
                    "file": c.file.file_name().map(|n| n.to_string_lossy().into_owned()),
                    "identity": c.info.subject_cn,
                    "issuer": c.info.issuer_cn,
                    "is_ca": c.info.is_ca,
                    "names": c.info.names(),
                    "not_after": c.info.not_after,
                    "not_after_utc": utc_date(c.info.not_after),
                    "days_left": c.info.days_left(now),
                })
            })
            .collect();
        let out = serde_json::json!({
            "dir": dir,
            "rotation": rotation_name(rotation),
            "next_rotation_step": rotation.next_step(),
            "certificates": certificates,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<18} {:<40} {:<40} {:<20} {:>9}",
        "FILE", "IDENTITY", "ISSUER", "NOT AFTER (UTC)", "DAYS LEFT"
    );
    for c in &all {
        let file = c
            .file
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let days = c.info.days_left(now);
        let warn = if days < 30 { "  < 30 days" } else { "" };
        println!(
            "{file:<18} {:<40} {:<40} {:<20} {days:>9}{warn}",
            c.info.subject_cn,
            c.info.issuer_cn,
            utc_date(c.info.not_after)
        );
    }
    match rotation {
        Rotation::Idle => {}
        other => println!(
            "rotation in progress ({}); next: {}",
            rotation_name(other),
            other.next_step()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn rotate(dir: &Path, step: RotateStep, ca_days: u32) -> anyhow::Result<ExitCode> {
    match step {
        RotateStep::Begin => {
            let certs = issue::rotate_begin(dir, ca_days)?;
            println!(
                "a new CA is trusted beside the old one in {}. Copy it to every other host; once \
                 every role has reloaded it, run `hydrant certs rotate reissue`.",
                certs.ca_file().display()
            );
        }
        RotateStep::Reissue => {
            let reissued = issue::rotate_reissue(dir)?;
            let names: Vec<&str> = reissued.iter().map(|i| i.name()).collect();
            println!(
                "reissued from the new CA: {}. Leaves issued for other hosts (--out) need \
                 `hydrant certs issue` again; once every role has reloaded its leaf, run \
                 `hydrant certs rotate finish`.",
                if names.is_empty() {
                    "(no leaves here)".to_owned()
                } else {
                    names.join(", ")
                }
            );
        }
        RotateStep::Finish => {
            let certs = issue::rotate_finish(dir)?;
            println!(
                "the old CA is no longer trusted: {} holds only the new one. Copy it to every \
                 other host.",
                certs.ca_file().display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--cluster-listen` and its companions.
struct ClusterArgs {
    name: String,
    listen: String,
    routes: Vec<String>,
}

fn nats(
    dir: &Path,
    listen: &str,
    cells: &[String],
    cluster: Option<&ClusterArgs>,
    out: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let certs = CertDir::new(dir);
    let (cert, key) = (
        certs.cert_file(Identity::Nats),
        certs.key_file(Identity::Nats),
    );
    if !cert.is_file() || !key.is_file() {
        anyhow::bail!(
            "{} has no nats leaf: run `hydrant certs issue nats --name <the host clients dial> \
             --dir {}` first",
            dir.display(),
            dir.display()
        );
    }
    let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    let (ca, cert, key) = (absolute(certs.ca_file()), absolute(cert), absolute(key));
    let secret = match cluster {
        Some(_) => Some(nats_config::ensure_cluster_secret(
            &dir.join("nats-cluster.secret"),
        )?),
        None => None,
    };
    let cluster = cluster
        .zip(secret.as_deref())
        .map(|(c, secret)| nats_config::Cluster {
            name: &c.name,
            listen: &c.listen,
            routes: &c.routes,
            secret,
        });
    let text = nats_config::clustered_config(
        listen,
        ServerTls {
            ca_file: &ca,
            cert_file: &cert,
            key_file: &key,
        },
        cells,
        cluster.as_ref(),
    )?;
    let out = out.unwrap_or_else(|| dir.join("nats.conf"));
    // 0600: with a cluster the file holds the route secret.
    hydrant_tls::local::write_private(&out, text.as_bytes())
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {}: run `nats-server -c {}`; each role's [bus] gets url = \"nats://{listen}\" \
         and [bus.tls] with its own certificate",
        out.display(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn rotation_name(rotation: Rotation) -> &'static str {
    match rotation {
        Rotation::Idle => "idle",
        Rotation::Begun => "begun",
        Rotation::Reissued => "reissued",
    }
}

/// `YYYY-MM-DD HH:MM` (UTC) of a UNIX time, without a date library.
fn utc_date(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::utc_date;

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(utc_date(0), "1970-01-01 00:00");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00");
        assert_eq!(utc_date(1_796_629_500), "2026-12-07 07:45");
    }
}
