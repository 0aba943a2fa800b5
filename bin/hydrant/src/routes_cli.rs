//! Domain and route commands, in the cf CLI's argument order: `domains`,
//! `create-private-domain ORG DOMAIN`, `create-shared-domain DOMAIN`,
//! `create-route SPACE DOMAIN --hostname H [--path P]`, `delete-route DOMAIN --hostname H
//! [--path P]`.
//!
//! A route belongs to the space that created it: another space can map neither its host nor a
//! path under it (the controller refuses without naming the owner). Every name printed came
//! from the platform and is escaped first.

use std::process::ExitCode;

use hydrant_api::{CreateDomain, CreateRoute};
use hydrant_firehose_client::render::escape_text;

use crate::apps::{Session, answered_without_table, print_table};
use crate::{exit, orgs_cli};

/// `hydrant domains`.
pub type DomainsArgs = crate::apps::ListArgs;

pub async fn domains(args: DomainsArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let domains = session.client.domains().await?;
    if answered_without_table(args.json, &domains, None)? {
        return Ok(ExitCode::SUCCESS);
    }
    let orgs = session.client.list_orgs().await.unwrap_or_default();
    let rows: Vec<Vec<String>> = domains
        .iter()
        .map(|d| {
            let owner = match &d.org_guid {
                None => "shared".to_owned(),
                Some(guid) => orgs
                    .iter()
                    .find(|o| &o.guid == guid)
                    .map_or_else(|| guid.clone(), |o| format!("private ({})", o.name)),
            };
            vec![d.name.clone(), owner]
        })
        .collect();
    print_table(&["name", "availability"], &rows);
    Ok(ExitCode::SUCCESS)
}

/// `hydrant create-private-domain ORG DOMAIN`.
#[derive(Debug, clap::Args)]
pub struct PrivateDomainArgs {
    /// The org that owns it.
    org: String,
    /// The domain, e.g. shop.example.com.
    domain: String,
}

pub async fn create_private_domain(args: PrivateDomainArgs) -> anyhow::Result<ExitCode> {
    create_domain(args.domain, Some(args.org)).await
}

/// `hydrant create-shared-domain DOMAIN` (admin).
#[derive(Debug, clap::Args)]
pub struct SharedDomainArgs {
    /// The domain.
    domain: String,
}

pub async fn create_shared_domain(args: SharedDomainArgs) -> anyhow::Result<ExitCode> {
    create_domain(args.domain, None).await
}

/// Creates domain `name`: private to `org`, or shared by every org.
async fn create_domain(name: String, org: Option<String>) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let request = CreateDomain {
        name,
        org: org.clone(),
    };
    let domain = session.client.create_domain(&request).await?;
    let name = escape_text(&domain.name);
    match org {
        Some(org) => eprintln!(
            "Created private domain {name} for org {}",
            escape_text(&org)
        ),
        None => eprintln!("Created shared domain {name}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `hydrant create-route SPACE DOMAIN --hostname H [--path P]`.
#[derive(Debug, clap::Args)]
pub struct CreateRouteArgs {
    /// The space (in the targeted org, or -o ORG).
    space: String,
    #[command(flatten)]
    route: RouteAddress,
    /// The space's org (default: the targeted one).
    #[arg(short = 'o', long)]
    org: Option<String>,
}

pub async fn create_route(args: CreateRouteArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let org = args.org.or_else(orgs_cli::targeted_org);
    let route = session
        .client
        .create_route(&CreateRoute {
            space: args.space,
            org,
            domain: args.route.domain,
            host: args.route.hostname.unwrap_or_default(),
            path: args.route.path,
        })
        .await?;
    eprintln!("Created route {}", escape_text(&route.url));
    Ok(ExitCode::SUCCESS)
}

/// `hydrant delete-route DOMAIN --hostname H [--path P]`.
#[derive(Debug, clap::Args)]
pub struct DeleteRouteArgs {
    #[command(flatten)]
    route: RouteAddress,
}

/// Where a route is, as the route commands take it: DOMAIN --hostname H [--path P].
#[derive(Debug, clap::Args)]
struct RouteAddress {
    /// The domain, e.g. apps.localhost.
    domain: String,
    /// The host label, e.g. shop.
    #[arg(long = "hostname", short = 'n')]
    hostname: Option<String>,
    /// A path, e.g. /api.
    #[arg(long)]
    path: Option<String>,
}

pub async fn delete_route(args: DeleteRouteArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let RouteAddress {
        domain,
        hostname,
        path,
    } = args.route;
    let host = hostname.unwrap_or_default().to_ascii_lowercase();
    let path = match path.as_deref() {
        None | Some("" | "/") => String::new(),
        Some(p) => format!("/{}", p.trim_start_matches('/')),
    };
    let domain = domain.to_ascii_lowercase();
    let routes = session.client.space_routes().await?;
    let Some(route) = routes
        .iter()
        .find(|r| r.host == host && r.domain == domain && r.path == path)
    else {
        return Err(exit::not_found(
            "no such route among your spaces' routes: `hydrant routes` lists them",
        ));
    };
    session.client.delete_space_route(&route.guid).await?;
    eprintln!("Deleted route {}", escape_text(&route.url));
    Ok(ExitCode::SUCCESS)
}
