//! Quota commands, in the cf CLI's shape: `quotas`, `create-quota`, `set-quota`,
//! `create-space-quota`, `set-space-quota`.
//!
//! A limit left out is unlimited. Sizes take the same forms as `push -m` (`512M`, `2G`, or a
//! plain number of megabytes).

use std::process::ExitCode;

use hydrant_api::{CreateQuota, Quota, QuotaScope};
use hydrant_firehose_client::render::escape_text;

use crate::apps::{Session, answered_without_table, parse_megabytes, print_table};
use crate::{exit, orgs_cli};

/// The limits both `create-quota` and `create-space-quota` take.
#[derive(Debug, clap::Args)]
pub struct Limits {
    /// Total memory of every started instance, e.g. 10G.
    #[arg(short = 'm', long = "memory")]
    memory: Option<String>,
    /// Total instances of started apps.
    #[arg(short = 'i', long = "instances")]
    instances: Option<u64>,
    /// Routes.
    #[arg(short = 'r', long = "routes")]
    routes: Option<u64>,
    /// Service instances.
    #[arg(short = 's', long = "service-instances")]
    service_instances: Option<u64>,
    /// Apps.
    #[arg(short = 'a', long = "apps")]
    apps: Option<u64>,
    /// Uploaded packages and droplets together, e.g. 1G.
    #[arg(long = "blob-storage")]
    blob_storage: Option<String>,
}

impl Limits {
    fn into_request(
        self,
        name: String,
        scope: QuotaScope,
        org: Option<String>,
    ) -> anyhow::Result<CreateQuota> {
        Ok(CreateQuota {
            name,
            scope,
            org,
            total_memory_mb: self
                .memory
                .as_deref()
                .map(|m| parse_megabytes("-m", m))
                .transpose()?,
            total_instances: self.instances,
            total_apps: self.apps,
            total_routes: self.routes,
            total_service_instances: self.service_instances,
            total_blob_mb: self
                .blob_storage
                .as_deref()
                .map(|m| parse_megabytes("--blob-storage", m))
                .transpose()?,
        })
    }
}

/// `hydrant create-quota NAME [-m MEMORY] [-i INSTANCES] [-r ROUTES] [-s SERVICE_INSTANCES]`.
#[derive(Debug, clap::Args)]
pub struct CreateQuotaArgs {
    /// The quota's name.
    name: String,
    #[command(flatten)]
    limits: Limits,
}

pub async fn create_quota(args: CreateQuotaArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let request = args.limits.into_request(args.name, QuotaScope::Org, None)?;
    let quota = session.client.create_quota(&request).await?;
    eprintln!(
        "Created org quota {} (assign it with `hydrant set-quota ORG {}`)",
        escape_text(&quota.name),
        escape_text(&quota.name)
    );
    Ok(ExitCode::SUCCESS)
}

/// `hydrant create-space-quota NAME [-o ORG] [limits]`.
#[derive(Debug, clap::Args)]
pub struct CreateSpaceQuotaArgs {
    /// The quota's name.
    name: String,
    /// The org that owns it (default: the targeted one).
    #[arg(short = 'o', long)]
    org: Option<String>,
    #[command(flatten)]
    limits: Limits,
}

pub async fn create_space_quota(args: CreateSpaceQuotaArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let org = orgs_cli::org_or_target(args.org)?;
    let request = args
        .limits
        .into_request(args.name, QuotaScope::Space, Some(org))?;
    let quota = session.client.create_quota(&request).await?;
    eprintln!(
        "Created space quota {} (assign it with `hydrant set-space-quota SPACE {}`)",
        escape_text(&quota.name),
        escape_text(&quota.name)
    );
    Ok(ExitCode::SUCCESS)
}

/// `hydrant set-quota ORG QUOTA`.
#[derive(Debug, clap::Args)]
pub struct SetQuotaArgs {
    /// The org.
    org: String,
    /// The org quota.
    quota: String,
}

pub async fn set_quota(args: SetQuotaArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let org = orgs_cli::find_org(&session.client, &args.org).await?;
    session.client.set_org_quota(&org.guid, &args.quota).await?;
    eprintln!(
        "Assigned quota {} to org {}",
        escape_text(&args.quota),
        escape_text(&org.name)
    );
    Ok(ExitCode::SUCCESS)
}

/// `hydrant set-space-quota SPACE QUOTA` (a space of the targeted org, or -o ORG).
#[derive(Debug, clap::Args)]
pub struct SetSpaceQuotaArgs {
    /// The space.
    space: String,
    /// The space quota.
    quota: String,
    /// The space's org (default: the targeted one).
    #[arg(short = 'o', long)]
    org: Option<String>,
}

pub async fn set_space_quota(args: SetSpaceQuotaArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let org = args.org.or_else(orgs_cli::targeted_org);
    let space = session
        .client
        .list_spaces()
        .await?
        .into_iter()
        .find(|s| {
            (s.name == args.space || s.guid == args.space)
                && org
                    .as_ref()
                    .is_none_or(|o| &s.org_guid == o || &s.org_name == o)
        })
        .ok_or_else(|| {
            exit::not_found(format!(
                "space {} not found: `hydrant spaces` lists the spaces you can see",
                escape_text(&args.space)
            ))
        })?;
    session
        .client
        .set_space_quota(&space.guid, &args.quota)
        .await?;
    eprintln!(
        "Assigned space quota {} to space {}",
        escape_text(&args.quota),
        escape_text(&space.name)
    );
    Ok(ExitCode::SUCCESS)
}

/// `hydrant quotas`.
pub type QuotasArgs = crate::apps::ListArgs;

pub async fn quotas(args: QuotasArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let quotas = session.client.quotas().await?;
    if answered_without_table(
        args.json,
        &quotas,
        quotas.is_empty().then_some("No quotas."),
    )? {
        return Ok(ExitCode::SUCCESS);
    }
    let show = |v: Option<u64>, unit: &str| {
        v.map_or_else(|| "unlimited".to_owned(), |v| format!("{v}{unit}"))
    };
    let rows: Vec<Vec<String>> = quotas
        .iter()
        .map(|q: &Quota| {
            vec![
                q.name.clone(),
                match q.scope {
                    QuotaScope::Org => "org".to_owned(),
                    QuotaScope::Space => "space".to_owned(),
                },
                show(q.total_memory_mb, "M"),
                show(q.total_instances, ""),
                show(q.total_apps, ""),
                show(q.total_routes, ""),
                show(q.total_service_instances, ""),
                show(q.total_blob_mb, "M"),
            ]
        })
        .collect();
    print_table(
        &[
            "name",
            "scope",
            "memory",
            "instances",
            "apps",
            "routes",
            "service instances",
            "blob storage",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}
