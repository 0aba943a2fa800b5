//! Tenancy commands in the cf CLI's argument order: `create-user`, `create-org`,
//! `create-space`, `delete-org`, `delete-space`, `set-org-role`, `unset-org-role`,
//! `set-space-role`, `unset-space-role`, `orgs`, `spaces`; the app environment (`env`, `set-env`, `unset-env`); and the targeted org
//! and space that `push`, `apps` and the rest work in.
//!
//! The target lives beside the login in `$HYDRANT_HOME/target.json` and names the API and user
//! it was chosen for: a login as someone else, or to another API, never inherits it, so two
//! `HYDRANT_HOME`s are two people working side by side. Every name printed came from the
//! platform and is escaped first.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use hydrant_api::{Client, CreateUser, OrgRole, SpaceRole};
use hydrant_firehose_client::render::escape_text;
use serde::{Deserialize, Serialize};

use crate::apps::{Session, answered_without_table, print_table};
use crate::{cli_config, exit};

/// A thing the CLI targets: its guid and, for people, its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Named {
    /// Its guid.
    pub guid: String,
    /// Its name.
    pub name: String,
}

/// The targeted org and space, valid for one API and one user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// The API it was chosen on.
    pub api: String,
    /// The user who chose it.
    pub user: String,
    /// The org.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<Named>,
    /// The space (in `org`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space: Option<Named>,
}

fn target_path() -> anyhow::Result<PathBuf> {
    Ok(cli_config::home()?.join("target.json"))
}

/// The target saved for the current login, if any (one saved for another API or user is
/// ignored).
pub fn load_target() -> Option<Target> {
    let config = cli_config::load().ok()?;
    let text = std::fs::read_to_string(target_path().ok()?).ok()?;
    let target: Target = serde_json::from_str(&text).ok()?;
    (Some(&target.api) == config.api.as_ref() && Some(&target.user) == config.user.as_ref())
        .then_some(target)
}

fn save_target(target: &Target) -> anyhow::Result<()> {
    cli_config::write_private(&target_path()?, &serde_json::to_vec_pretty(target)?)
}

/// Forgets the target (a fresh micro cloud has new guids).
pub fn forget_target() {
    if let Ok(path) = target_path() {
        let _ = std::fs::remove_file(path);
    }
}

/// After a login: target the user's only org, and its only space, as `cf login` does; with
/// several, leave the choice to `hydrant target -o ORG -s SPACE`.
pub async fn target_after_login(client: &Client, api: &str, user: &str) -> anyhow::Result<()> {
    let mut target = Target {
        api: api.to_owned(),
        user: user.to_owned(),
        ..Target::default()
    };
    let orgs = client.list_orgs().await.unwrap_or_default();
    let default = orgs.iter().find(|o| o.name == "default");
    let chosen = if orgs.len() == 1 {
        orgs.first()
    } else {
        default
    };
    if let Some(org) = chosen {
        target.org = Some(Named {
            guid: org.guid.clone(),
            name: org.name.clone(),
        });
        let spaces: Vec<_> = client
            .list_spaces()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s.org_guid == org.guid)
            .collect();
        if let [space] = spaces.as_slice() {
            target.space = Some(Named {
                guid: space.guid.clone(),
                name: space.name.clone(),
            });
        }
    }
    save_target(&target)?;
    if let Some(org) = &target.org {
        eprintln!("Targeted org {}", escape_text(&org.name));
    }
    if let Some(space) = &target.space {
        eprintln!("Targeted space {}", escape_text(&space.name));
    }
    Ok(())
}

/// `hydrant target -o ORG [-s SPACE]`: checks both exist for the caller and saves them.
pub async fn set_target(org: Option<&str>, space: Option<&str>) -> anyhow::Result<()> {
    let session = Session::load()?;
    let previous = load_target();
    let org_name = match (org, previous.as_ref().and_then(|t| t.org.as_ref())) {
        (Some(org), _) => org.to_owned(),
        (None, Some(org)) => org.name.clone(),
        (None, None) => {
            return Err(exit::usage(
                "no org targeted: hydrant target -o ORG -s SPACE (hydrant orgs lists them)",
            ));
        }
    };
    let org = find_org(&session.client, &org_name).await?;
    let mut target = Target {
        api: session.config.api.clone().unwrap_or_default(),
        user: session.config.user.clone().unwrap_or_default(),
        org: Some(Named {
            guid: org.guid.clone(),
            name: org.name.clone(),
        }),
        space: None,
    };
    let spaces: Vec<_> = session
        .client
        .list_spaces()
        .await?
        .into_iter()
        .filter(|s| s.org_guid == org.guid)
        .collect();
    // Re-targeting the same org keeps its space.
    let keep = previous
        .filter(|t| t.org.as_ref().is_some_and(|o| o.guid == org.guid))
        .and_then(|t| t.space)
        .and_then(|s| spaces.iter().find(|x| x.guid == s.guid));
    let chosen = match space {
        Some(name) => Some(
            spaces
                .iter()
                .find(|s| s.name == name || s.guid == name)
                .ok_or_else(|| {
                    exit::not_found(format!(
                        "space {} not found in org {}: `hydrant spaces` lists the spaces you \
                         can see",
                        escape_text(name),
                        escape_text(&org.name)
                    ))
                })?,
        ),
        None => keep.or(if spaces.len() == 1 {
            spaces.first()
        } else {
            None
        }),
    };
    target.space = chosen.map(|s| Named {
        guid: s.guid.clone(),
        name: s.name.clone(),
    });
    save_target(&target)
}

/// Reads a line without echo on a terminal (stty), else as typed or piped.
pub fn read_secret(label: &str) -> anyhow::Result<String> {
    use std::io::{BufRead as _, IsTerminal as _};
    let tty = std::io::stdin().is_terminal();
    eprint!("{label}: ");
    let stty = |arg: &str| {
        std::process::Command::new("stty")
            .arg(arg)
            .stdin(std::process::Stdio::inherit())
            .status()
            .is_ok_and(|s| s.success())
    };
    let hidden = tty && stty("-echo");
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if hidden {
        stty("echo");
        eprintln!();
    }
    read?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

// === commands ===

/// `hydrant create-user USERNAME [PASSWORD]`.
#[derive(Debug, clap::Args)]
pub struct CreateUserArgs {
    /// The new user's name.
    username: String,
    /// Their password (at least 8 characters); prompted for when absent.
    password: Option<String>,
}

pub async fn create_user(args: CreateUserArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let password = match args.password {
        Some(p) => p,
        None => read_secret("Password")?,
    };
    let user = session
        .client
        .create_user(&CreateUser {
            username: args.username,
            password,
            admin: false,
        })
        .await?;
    eprintln!("Created user {}", escape_text(&user.username));
    Ok(ExitCode::SUCCESS)
}

/// `hydrant create-org ORG`.
#[derive(Debug, clap::Args)]
pub struct CreateOrgArgs {
    /// The org's name.
    name: String,
}

pub async fn create_org(args: CreateOrgArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let org = session.client.create_org(&args.name).await?;
    eprintln!(
        "Created org {} (target it with `hydrant target -o {}`)",
        escape_text(&org.name),
        escape_text(&org.name)
    );
    Ok(ExitCode::SUCCESS)
}

/// `hydrant create-space SPACE [-o ORG]`.
#[derive(Debug, clap::Args)]
pub struct CreateSpaceArgs {
    /// The space's name.
    name: String,
    /// The org (default: the targeted one).
    #[arg(short = 'o', long)]
    org: Option<String>,
}

/// The org the command names, or the targeted one.
pub(crate) fn org_or_target(org: Option<String>) -> anyhow::Result<String> {
    org.or_else(targeted_org)
        .ok_or_else(|| exit::usage("no org given: pass -o ORG or run `hydrant target -o ORG`"))
}

/// The targeted org's guid, when one is targeted.
pub(crate) fn targeted_org() -> Option<String> {
    load_target().and_then(|t| t.org).map(|o| o.guid)
}

pub async fn create_space(args: CreateSpaceArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let org = org_or_target(args.org)?;
    let space = session.client.create_space_in(&org, &args.name).await?;
    eprintln!(
        "Created space {} in org {}",
        escape_text(&space.name),
        escape_text(&space.org_name)
    );
    Ok(ExitCode::SUCCESS)
}

/// `hydrant set-org-role USERNAME ORG ROLE` / `unset-org-role`.
#[derive(Debug, clap::Args)]
pub struct OrgRoleArgs {
    /// The user.
    username: String,
    /// The org.
    org: String,
    /// OrgManager or OrgAuditor.
    role: String,
}

pub async fn org_role(args: OrgRoleArgs, set: bool) -> anyhow::Result<ExitCode> {
    let role = OrgRole::parse(&args.role)
        .ok_or_else(|| exit::usage("the org role is OrgManager or OrgAuditor"))?;
    let session = Session::load()?;
    let org = find_org(&session.client, &args.org).await?;
    if set {
        session
            .client
            .assign_org_role(&org.guid, &args.username, role)
            .await?;
    } else {
        session
            .client
            .remove_org_role(&org.guid, &args.username, role)
            .await?;
    }
    eprintln!(
        "{} {} as {} of org {}",
        if set { "Assigned" } else { "Removed" },
        escape_text(&args.username),
        escape_text(&args.role),
        escape_text(&org.name)
    );
    Ok(ExitCode::SUCCESS)
}

/// The org named `name` (or with guid `name`) among those the caller can see.
pub(crate) async fn find_org(client: &Client, name: &str) -> anyhow::Result<hydrant_api::Org> {
    lookup_org(client, name).await?.ok_or_else(|| {
        exit::not_found(format!(
            "org {} not found: `hydrant orgs` lists the orgs you can see",
            escape_text(name)
        ))
    })
}

/// [`find_org`], with `None` when there is no such org.
async fn lookup_org(client: &Client, name: &str) -> anyhow::Result<Option<hydrant_api::Org>> {
    let orgs = client.list_orgs().await?;
    Ok(orgs.into_iter().find(|o| o.name == name || o.guid == name))
}

/// The space of `org` named `name` (or with guid `name`) among those the caller can see.
async fn find_space(
    client: &Client,
    org: &hydrant_api::Org,
    name: &str,
) -> anyhow::Result<hydrant_api::Space> {
    lookup_space(client, org, name).await?.ok_or_else(|| {
        exit::not_found(format!(
            "space {} not found in org {}: `hydrant spaces -o ORG` lists the spaces you can see",
            escape_text(name),
            escape_text(&org.name)
        ))
    })
}

/// [`find_space`], with `None` when there is no such space.
async fn lookup_space(
    client: &Client,
    org: &hydrant_api::Org,
    name: &str,
) -> anyhow::Result<Option<hydrant_api::Space>> {
    let spaces = client.list_spaces().await?;
    Ok(spaces
        .into_iter()
        .find(|s| s.org_guid == org.guid && (s.name == name || s.guid == name)))
}

/// `hydrant set-space-role USERNAME ORG SPACE ROLE` / `unset-space-role`.
#[derive(Debug, clap::Args)]
pub struct SpaceRoleArgs {
    /// The user.
    username: String,
    /// The space's org.
    org: String,
    /// The space.
    space: String,
    /// SpaceDeveloper, SpaceAuditor or SpaceManager.
    role: String,
}

pub async fn space_role(args: SpaceRoleArgs, set: bool) -> anyhow::Result<ExitCode> {
    let role = SpaceRole::parse(&args.role).ok_or_else(|| {
        exit::usage("the space role is SpaceDeveloper, SpaceAuditor or SpaceManager")
    })?;
    let session = Session::load()?;
    let org = find_org(&session.client, &args.org).await?;
    let space = find_space(&session.client, &org, &args.space).await?;
    if set {
        session
            .client
            .assign_role(&space.guid, &args.username, role)
            .await?;
    } else {
        session
            .client
            .remove_role(&space.guid, &args.username, role)
            .await?;
    }
    eprintln!(
        "{} {} as {} of space {} in org {}",
        if set { "Assigned" } else { "Removed" },
        escape_text(&args.username),
        escape_text(&args.role),
        escape_text(&space.name),
        escape_text(&org.name)
    );
    Ok(ExitCode::SUCCESS)
}

/// `hydrant delete-org ORG [-f]`.
#[derive(Debug, clap::Args)]
pub struct DeleteOrgArgs {
    /// The org.
    name: String,
    /// Do not ask for confirmation.
    #[arg(short = 'f', long)]
    force: bool,
}

/// `hydrant delete-space SPACE [-o ORG] [-f]`.
#[derive(Debug, clap::Args)]
pub struct DeleteSpaceArgs {
    /// The space.
    name: String,
    /// The space's org (default: the targeted one).
    #[arg(short = 'o', long)]
    org: Option<String>,
    /// Do not ask for confirmation.
    #[arg(short = 'f', long)]
    force: bool,
}

/// How long a deletion may wait for brokers to unbind and delete service instances.
const DELETE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Asks `question` as the cf CLI does (`[yN]`), reading the answer from stdin whether or not
/// it is a terminal; anything but `y`/`yes` is no.
fn confirmed(question: &str) -> anyhow::Result<bool> {
    use std::io::BufRead as _;
    eprint!("{question} [yN]: ");
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// Deletes `what` (`org NAME`, `space NAME in org ORG`) and `contents` with it, asking first
/// unless `force`: sends `delete` until the platform says everything is gone, waiting for the
/// broker jobs each answer started; a job that failed ends it with the broker's reason.
/// `false` when the user said no (and nothing was deleted).
async fn delete_fully<F, Fut>(
    session: &Session,
    force: bool,
    what: &str,
    contents: &str,
    delete: F,
) -> anyhow::Result<bool>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<hydrant_api::tenancy::Deletion, hydrant_api::Error>>,
{
    if !force && !confirmed(&format!("Really delete the {what}, including {contents}?"))? {
        eprintln!("Delete cancelled");
        return Ok(false);
    }
    eprintln!(
        "Deleting {what} as {}...",
        escape_text(session.config.user.as_deref().unwrap_or("you"))
    );
    let client = &session.client;
    let deadline = std::time::Instant::now() + DELETE_DEADLINE;
    loop {
        let answer = delete().await?;
        for app in &answer.apps_deleted {
            eprintln!("  deleted app {}", escape_text(app));
        }
        for service in &answer.services_deleted {
            eprintln!("  deleted service instance {}", escape_text(service));
        }
        if answer.done {
            return Ok(true);
        }
        if std::time::Instant::now() > deadline {
            return Err(exit::timeout(format!(
                "{what} is still waiting for its service instances ({}) after {} minutes; \
                 run the command again to carry on",
                escape_text(&answer.services_pending.join(", ")),
                DELETE_DEADLINE.as_secs() / 60
            )));
        }
        eprintln!(
            "  waiting for the brokers of {} to unbind and delete them...",
            escape_text(&answer.services_pending.join(", "))
        );
        for job in &answer.jobs {
            let mut job = job.clone();
            while !job.is_done() && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                job = client.job(&job.guid).await?;
            }
            if job.state == "FAILED" {
                anyhow::bail!(
                    "the broker could not {} ({}): {}; nothing more was deleted — fix it, then \
                     run the command again",
                    if job.operation == "service_instance.delete" {
                        "delete a service instance"
                    } else {
                        "remove a service binding"
                    },
                    escape_text(&job.resource_guid),
                    escape_text(job.description.as_deref().unwrap_or("no reason given"))
                );
            }
        }
        if answer.jobs.is_empty() {
            // Jobs another request started: give them a moment before asking again.
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
}

/// `hydrant delete-org ORG [-f]`: the org with its spaces, apps (stopped), routes, service
/// instances, quotas and private domains (an admin or the org's managers).
pub async fn delete_org(args: DeleteOrgArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let name = escape_text(&args.name);
    let Some(org) = lookup_org(&session.client, &args.name).await? else {
        // As cf does: deleting what is not there is not an error.
        eprintln!("Org {name} does not exist.");
        return Ok(ExitCode::SUCCESS);
    };
    let contents = "its spaces, apps, service instances, routes and private domains";
    if !delete_fully(
        &session,
        args.force,
        &format!("org {name}"),
        contents,
        || session.client.delete_org(&org.guid),
    )
    .await?
    {
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(mut target) = load_target()
        && target.org.as_ref().is_some_and(|o| o.guid == org.guid)
    {
        target.org = None;
        target.space = None;
        save_target(&target)?;
        eprintln!("Org {name} was targeted: no org is targeted now (hydrant target -o ORG).");
    }
    eprintln!("OK");
    Ok(ExitCode::SUCCESS)
}

/// `hydrant delete-space SPACE [-o ORG] [-f]`: the space with its apps (stopped), routes and
/// service instances (an admin or the org's managers).
pub async fn delete_space(args: DeleteSpaceArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let org = find_org(&session.client, &org_or_target(args.org)?).await?;
    let name = escape_text(&args.name);
    let org_name = escape_text(&org.name);
    let Some(space) = lookup_space(&session.client, &org, &args.name).await? else {
        eprintln!("Space {name} does not exist.");
        return Ok(ExitCode::SUCCESS);
    };
    let what = format!("space {name} in org {org_name}");
    let contents = "its apps, service instances and routes";
    if !delete_fully(&session, args.force, &what, contents, || {
        session.client.delete_space(&space.guid)
    })
    .await?
    {
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(mut target) = load_target()
        && target.space.as_ref().is_some_and(|s| s.guid == space.guid)
    {
        target.space = None;
        save_target(&target)?;
        eprintln!("Space {name} was targeted: no space is targeted now (hydrant target -s SPACE).");
    }
    eprintln!("OK");
    Ok(ExitCode::SUCCESS)
}

/// `hydrant orgs`.
pub type OrgsArgs = crate::apps::ListArgs;

pub async fn orgs(args: OrgsArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let orgs = session.client.list_orgs().await?;
    if answered_without_table(
        args.json,
        &orgs,
        orgs.is_empty()
            .then_some("No orgs: ask an admin for a role in one."),
    )? {
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = orgs.iter().map(|o| vec![o.name.clone()]).collect();
    print_table(&["name"], &rows);
    Ok(ExitCode::SUCCESS)
}

/// `hydrant spaces [-o ORG]`.
#[derive(Debug, clap::Args)]
pub struct SpacesArgs {
    /// The org (default: the targeted one; with none targeted, every org).
    #[arg(short = 'o', long)]
    org: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn spaces(args: SpacesArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let org = args.org.or_else(targeted_org);
    let mut spaces = session.client.list_spaces().await?;
    if let Some(org) = &org {
        spaces.retain(|s| &s.org_guid == org || &s.org_name == org);
    }
    if answered_without_table(
        args.json,
        &spaces,
        spaces.is_empty().then_some("No spaces."),
    )? {
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = spaces
        .iter()
        .map(|s| vec![s.name.clone(), s.org_name.clone()])
        .collect();
    print_table(&["name", "org"], &rows);
    Ok(ExitCode::SUCCESS)
}

// === environment ===

/// `hydrant env APP`.
#[derive(Debug, clap::Args)]
pub struct EnvArgs {
    /// The app.
    name: String,
    /// Print JSON instead of lines.
    #[arg(long)]
    json: bool,
}

pub async fn env(args: EnvArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let app = session.app(&args.name).await?;
    let env = session.client.env(&app.guid).await?;
    let vars: BTreeMap<String, String> = env
        .var
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
    if answered_without_table(args.json, &vars, None)? {
        return Ok(ExitCode::SUCCESS);
    }
    println!("User-Provided:");
    for (name, value) in &vars {
        println!("{}: {}", escape_text(name), escape_text(value));
    }
    Ok(ExitCode::SUCCESS)
}

/// `hydrant set-env APP NAME VALUE`.
#[derive(Debug, clap::Args)]
pub struct SetEnvArgs {
    /// The app.
    name: String,
    /// The variable.
    var: String,
    /// Its value.
    value: String,
}

pub async fn set_env(args: SetEnvArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let app = session.app(&args.name).await?;
    session
        .client
        .patch_env(
            &app.guid,
            BTreeMap::from([(args.var.clone(), Some(args.value))]),
        )
        .await?;
    eprintln!(
        "Set {} on app {}; restart it (hydrant restart {}) to apply",
        escape_text(&args.var),
        escape_text(&app.name),
        escape_text(&app.name)
    );
    Ok(ExitCode::SUCCESS)
}

/// `hydrant unset-env APP NAME`.
#[derive(Debug, clap::Args)]
pub struct UnsetEnvArgs {
    /// The app.
    name: String,
    /// The variable.
    var: String,
}

pub async fn unset_env(args: UnsetEnvArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let app = session.app(&args.name).await?;
    session
        .client
        .patch_env(&app.guid, BTreeMap::from([(args.var.clone(), None)]))
        .await
        .context("cannot remove the variable")?;
    eprintln!(
        "Removed {} from app {}; restart it to apply",
        escape_text(&args.var),
        escape_text(&app.name)
    );
    Ok(ExitCode::SUCCESS)
}
