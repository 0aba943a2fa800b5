//! The role matrix: two orgs, three spaces, a user in every role, and every API action tried
//! by each of them against the real controller on loopback. Each cell is exact — allowed,
//! 404 (cannot see it) or 403 (sees it, may not change it) — so an unexpected allow fails, and
//! every 404 must read the same as for something that does not exist and name no tenant.

use std::collections::BTreeMap;

use hydrant_api::{
    Client, CreateApp, CreateDomain, CreateQuota, CreateRoute, CreateUser, EventFilter, OrgRole,
    QuotaScope, ScaleApp, SpaceRole, UpdateApp,
};

use hydrant_api::slo::SloSet;

use crate::support::{Cc, app_in, assert_counter, events_of, push_and_stage};

/// The people, in the order of the matrix's columns.
const PEOPLE: [&str; 8] = [
    "admin",
    "org-mgr",
    "org-aud",
    "dev",
    "auditor",
    "space-mgr",
    "other-dev",
    "nobody",
];

/// What one person may get: `Y` allowed, `N` 404, `F` 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Y,
    N,
    F,
}

#[derive(Debug, Clone, Copy)]
enum Action {
    GetOrg,
    ListOrgRoles,
    CreateSpaceInOrg,
    AssignOrgRole,
    GetSpace,
    ListSpaceRoles,
    AssignSpaceRole,
    DeleteFreshSpace,
    GetApp,
    GetEnv,
    SetEnv,
    UpdateApp,
    ScaleApp,
    StopApp,
    CreateAppInSpace,
    AppEvents,
    LogToken,
    AppRoutes,
    MapRoute,
    GetOtherOrgsApp,
    CreateUser,
    CreateOrg,
    ListUsers,
    CreateOrgQuota,
    CreateSpaceQuota,
    SetOrgQuota,
    SetSpaceQuota,
    CreatePrivateDomain,
    CreateRoute,
    DeleteRoute,
    GetSlos,
    ListDrains,
    UnsetOrgRole,
    UnsetSpaceRole,
    DeleteSpaceWithApp,
    DeleteOrg,
}

/// The matrix: for each action, the outcome per person in [`PEOPLE`] order.
const MATRIX: &[(Action, &str)] = &[
    //                          admin org-mgr org-aud dev aud space-mgr other-dev nobody
    (Action::GetOrg, "YYYYYYNN"),
    (Action::ListOrgRoles, "YYYYYYNN"),
    (Action::CreateSpaceInOrg, "YYFFFFNN"),
    (Action::AssignOrgRole, "YYFFFFNN"),
    (Action::GetSpace, "YYNYYYNN"),
    (Action::ListSpaceRoles, "YYNYYYNN"),
    (Action::AssignSpaceRole, "YYNFFYNN"),
    (Action::DeleteFreshSpace, "YYNNNNNN"),
    (Action::GetApp, "YYNYYYNN"),
    (Action::GetEnv, "YFNYFFNN"),
    (Action::SetEnv, "YFNYFFNN"),
    (Action::UpdateApp, "YFNYFFNN"),
    (Action::ScaleApp, "YFNYFFNN"),
    (Action::StopApp, "YFNYFFNN"),
    (Action::CreateAppInSpace, "YFNYFFNN"),
    (Action::AppEvents, "YYNYYYNN"),
    (Action::LogToken, "YYNYYYNN"),
    (Action::AppRoutes, "YYNYYYNN"),
    (Action::MapRoute, "YFNYFFNN"),
    (Action::GetOtherOrgsApp, "YNNNNNYN"),
    (Action::CreateUser, "YFFFFFFF"),
    (Action::CreateOrg, "YFFFFFFF"),
    (Action::ListUsers, "YFFFFFFF"),
    (Action::CreateOrgQuota, "YFFFFFFF"),
    (Action::CreateSpaceQuota, "YYFFFFNN"),
    (Action::SetOrgQuota, "YFFFFFNN"),
    (Action::SetSpaceQuota, "YYNFFFNN"),
    (Action::CreatePrivateDomain, "YYFFFFNN"),
    (Action::CreateRoute, "YFNYFFNN"),
    (Action::DeleteRoute, "YFNYFFNN"),
    (Action::GetSlos, "YYNYYYNN"),
    (Action::ListDrains, "YYNYYYNN"),
    (Action::UnsetOrgRole, "YYFFFFNN"),
    (Action::UnsetSpaceRole, "YYNFFYNN"),
    // Each person tries a space (with an app) and an org of their own, where they hold the
    // same role they hold in the fixture's; only admins and org managers delete them.
    (Action::DeleteSpaceWithApp, "YYNFFFNN"),
    (Action::DeleteOrg, "YYFFFFNN"),
];

/// The tenants every action is tried against.
struct Fixture {
    org: hydrant_api::Org,
    space: hydrant_api::Space,
    app: hydrant_api::App,
    other_app: hydrant_api::App,
}

/// Tenant names a 404 must never carry.
const SECRET_NAMES: [&str; 5] = ["acme", "globex", "shop", "site", "checkout"];

async fn attempt(
    action: Action,
    who: &str,
    client: &Client,
    admin: &Client,
    fx: &Fixture,
) -> Result<(), hydrant_api::Error> {
    let app = &fx.app.guid;
    match action {
        Action::GetOrg => {
            // The list is filtered: the org shows in it exactly for those who may read it.
            let orgs = client.list_orgs().await?;
            if orgs.iter().any(|o| o.guid == fx.org.guid) {
                Ok(())
            } else {
                Err(not_found())
            }
        }
        Action::ListOrgRoles => client.org_roles(&fx.org.guid).await.map(drop),
        Action::CreateSpaceInOrg => client
            .create_space_in(&fx.org.guid, &format!("made-by-{who}"))
            .await
            .map(drop),
        Action::AssignOrgRole => client
            .assign_org_role(&fx.org.guid, "spare", OrgRole::Auditor)
            .await
            .map(drop),
        Action::GetSpace => {
            let listed = client
                .list_spaces()
                .await?
                .iter()
                .any(|s| s.guid == fx.space.guid);
            let alone = client.space_roles(&fx.space.guid).await.map(drop);
            assert_eq!(
                listed,
                alone.is_ok(),
                "{who}: list and get of a space agree"
            );
            alone
        }
        Action::ListSpaceRoles => client.space_roles(&fx.space.guid).await.map(drop),
        Action::AssignSpaceRole => client
            .assign_role(&fx.space.guid, "spare", SpaceRole::Auditor)
            .await
            .map(drop),
        Action::DeleteFreshSpace => {
            let fresh = admin
                .create_space_in(&fx.org.guid, &format!("doomed-{who}"))
                .await
                .unwrap();
            client.delete_space(&fresh.guid).await.map(drop)
        }
        Action::DeleteSpaceWithApp => {
            let full = admin
                .create_space_in(&fx.org.guid, &format!("full-{who}"))
                .await
                .unwrap();
            if let Some(role) = space_role_of(who) {
                admin.assign_role(&full.guid, who, role).await.unwrap();
            }
            let doomed = admin
                .create_app(&CreateApp {
                    name: "doomed".into(),
                    space: Some(full.guid.clone()),
                    no_route: true,
                    ..CreateApp::default()
                })
                .await
                .unwrap();
            let result = client.delete_space(&full.guid).await;
            match &result {
                Ok(deletion) => {
                    assert!(deletion.done, "{who}: {deletion:?}");
                    assert_eq!(deletion.apps_deleted, ["doomed"], "{who}");
                    assert!(admin.app(&doomed.guid).await.is_err(), "{who}: app gone");
                }
                // Refused: nothing was touched; the admin clears it away.
                Err(_) => {
                    assert!(admin.app(&doomed.guid).await.is_ok(), "{who}: app kept");
                    assert!(admin.delete_space(&full.guid).await.unwrap().done);
                }
            }
            result.map(drop)
        }
        Action::DeleteOrg => {
            let org = admin.create_org(&format!("doomed-{who}")).await.unwrap();
            let space = admin.create_space_in(&org.guid, "s").await.unwrap();
            match who {
                "org-mgr" => {
                    admin
                        .assign_org_role(&org.guid, who, OrgRole::Manager)
                        .await
                        .unwrap();
                }
                "org-aud" => {
                    admin
                        .assign_org_role(&org.guid, who, OrgRole::Auditor)
                        .await
                        .unwrap();
                }
                _ => {
                    if let Some(role) = space_role_of(who) {
                        admin.assign_role(&space.guid, who, role).await.unwrap();
                    }
                }
            }
            let result = client.delete_org(&org.guid).await;
            let left = admin
                .list_orgs()
                .await
                .unwrap()
                .iter()
                .any(|o| o.guid == org.guid);
            assert_eq!(left, result.is_err(), "{who}: {result:?}");
            if left {
                assert!(admin.delete_org(&org.guid).await.unwrap().done);
            }
            result.map(drop)
        }
        Action::GetApp => {
            let listed = client.list_apps().await?.iter().any(|a| a.guid == *app);
            let alone = client.app(app).await.map(drop);
            assert_eq!(listed, alone.is_ok(), "{who}: list and get of an app agree");
            alone
        }
        Action::GetEnv => client.env(app).await.map(drop),
        Action::SetEnv => client
            .patch_env(
                app,
                BTreeMap::from([(
                    format!("SET_BY_{}", who.replace('-', "_")),
                    Some("1".into()),
                )]),
            )
            .await
            .map(drop),
        Action::UpdateApp => client
            .update_app(
                app,
                &UpdateApp {
                    health_check_endpoint: Some("/health".into()),
                    ..UpdateApp::default()
                },
            )
            .await
            .map(drop),
        Action::ScaleApp => client
            .scale_app(
                app,
                &ScaleApp {
                    instances: Some(2),
                    ..ScaleApp::default()
                },
            )
            .await
            .map(drop),
        Action::StopApp => client.stop_app(app).await.map(drop),
        Action::CreateAppInSpace => client
            .create_app(&CreateApp {
                name: format!("new-by-{who}"),
                space: Some(fx.space.guid.clone()),
                no_route: true,
                ..CreateApp::default()
            })
            .await
            .map(drop),
        Action::AppEvents => {
            let events = client
                .audit_events(&EventFilter {
                    target_guid: Some(app.clone()),
                    types: None,
                })
                .await?;
            assert!(
                !events.is_empty(),
                "{who}: a visible app has its create event"
            );
            Ok(())
        }
        Action::LogToken => client.log_token(app).await.map(drop),
        Action::AppRoutes => client.app_routes(app).await.map(drop),
        Action::MapRoute => client
            .map_route(app, &format!("{who}.apps.localhost"))
            .await
            .map(drop),
        Action::GetOtherOrgsApp => client.app(&fx.other_app.guid).await.map(drop),
        Action::CreateUser => client
            .create_user(&CreateUser {
                username: format!("made-{who}"),
                password: "long-enough-password".into(),
                admin: false,
            })
            .await
            .map(drop),
        Action::CreateOrg => client.create_org(&format!("org-by-{who}")).await.map(drop),
        Action::ListUsers => client.list_users().await.map(drop),
        Action::CreateOrgQuota => client
            .create_quota(&CreateQuota {
                name: format!("org-quota-by-{who}"),
                ..CreateQuota::default()
            })
            .await
            .map(drop),
        Action::CreateSpaceQuota => client
            .create_quota(&CreateQuota {
                name: format!("space-quota-by-{who}"),
                scope: QuotaScope::Space,
                org: Some(fx.org.guid.clone()),
                ..CreateQuota::default()
            })
            .await
            .map(drop),
        Action::SetOrgQuota => client.set_org_quota(&fx.org.guid, "roomy").await.map(drop),
        Action::SetSpaceQuota => client
            .set_space_quota(&fx.space.guid, "roomy-space")
            .await
            .map(drop),
        Action::CreatePrivateDomain => client
            .create_domain(&CreateDomain {
                name: format!("{who}.acme.example"),
                org: Some(fx.org.guid.clone()),
            })
            .await
            .map(drop),
        Action::CreateRoute => client
            .create_route(&route_in(&fx.space.guid, &format!("claim-{who}")))
            .await
            .map(drop),
        Action::DeleteRoute => {
            let doomed = admin
                .create_route(&route_in(&fx.space.guid, &format!("doomed-{who}")))
                .await
                .unwrap();
            client.delete_space_route(&doomed.guid).await
        }
        Action::GetSlos => client.app_slos(app).await.map(drop),
        Action::ListDrains => client.app_drains(app).await.map(drop),
        Action::UnsetOrgRole => {
            client
                .remove_org_role(&fx.org.guid, "spare", OrgRole::Auditor)
                .await
        }
        Action::UnsetSpaceRole => {
            client
                .remove_role(&fx.space.guid, "spare", SpaceRole::Auditor)
                .await
        }
    }
}

/// The space role `who` holds in the fixture's space, if any.
fn space_role_of(who: &str) -> Option<SpaceRole> {
    match who {
        "dev" => Some(SpaceRole::Developer),
        "auditor" => Some(SpaceRole::Auditor),
        "space-mgr" => Some(SpaceRole::Manager),
        _ => None,
    }
}

fn route_in(space: &str, host: &str) -> CreateRoute {
    CreateRoute {
        space: space.to_owned(),
        org: None,
        domain: "apps.localhost".into(),
        host: host.to_owned(),
        path: None,
    }
}

fn not_found() -> hydrant_api::Error {
    hydrant_api::Error::Api {
        status: 404,
        errors: Vec::new(),
    }
}

fn outcome(result: &Result<(), hydrant_api::Error>) -> Option<Outcome> {
    match result {
        Ok(()) => Some(Outcome::Y),
        Err(e) if e.status() == Some(404) => Some(Outcome::N),
        Err(e) if e.status() == Some(403) => Some(Outcome::F),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_action_by_every_role_is_exactly_as_the_matrix_says() {
    let (_dir, cc) = Cc::fresh("cc-tenancy-matrix").await;
    let admin = cc.admin.clone();
    let acme = admin.create_org("acme").await.unwrap();
    let globex = admin.create_org("globex").await.unwrap();
    let dev_space = admin.create_space_in("acme", "dev").await.unwrap();
    admin.create_space_in("acme", "prod").await.unwrap();
    let web = admin.create_space_in("globex", "web").await.unwrap();
    // Space names are per org: globex may have its own `dev`.
    admin.create_space_in("globex", "dev").await.unwrap();

    // Unlimited quotas for the assignment actions to assign.
    admin
        .create_quota(&CreateQuota {
            name: "roomy".into(),
            ..CreateQuota::default()
        })
        .await
        .unwrap();
    admin
        .create_quota(&CreateQuota {
            name: "roomy-space".into(),
            scope: QuotaScope::Space,
            org: Some("acme".into()),
            ..CreateQuota::default()
        })
        .await
        .unwrap();

    let mut clients: BTreeMap<&str, Client> = BTreeMap::new();
    clients.insert("admin", admin.clone());
    for who in &PEOPLE[1..] {
        clients.insert(who, cc.user(who, None).await);
    }
    cc.user("spare", None).await;
    admin
        .assign_org_role(&acme.guid, "org-mgr", OrgRole::Manager)
        .await
        .unwrap();
    admin
        .assign_org_role(&acme.guid, "org-aud", OrgRole::Auditor)
        .await
        .unwrap();
    for (who, role) in [
        ("dev", SpaceRole::Developer),
        ("auditor", SpaceRole::Auditor),
        ("space-mgr", SpaceRole::Manager),
    ] {
        admin.assign_role(&dev_space.guid, who, role).await.unwrap();
    }
    admin
        .assign_role(&web.guid, "other-dev", SpaceRole::Developer)
        .await
        .unwrap();

    let app = admin
        .create_app(&CreateApp {
            name: "shop".into(),
            space: Some(dev_space.guid.clone()),
            command: Some("./run --token hunter2".into()),
            env: BTreeMap::from([("DB_PASSWORD".into(), "s3cret".into())]),
            ..CreateApp::default()
        })
        .await
        .unwrap();
    let webhook = "https://hooks.example.com/hook?token=hunter3";
    admin
        .set_slos(
            &app.guid,
            &SloSet {
                slos: vec![crate::slos::availability(Some(webhook))],
            },
        )
        .await
        .unwrap();
    let other_app = app_in(&admin, "site", Some(&web.guid)).await;
    let fx = Fixture {
        org: acme.clone(),
        space: dev_space.clone(),
        app: app.clone(),
        other_app,
    };
    let nothing = clients["nobody"].app("no-such-app").await.unwrap_err();

    let mut wrong = Vec::new();
    let mut tried = 0;
    for (action, row) in MATRIX {
        assert_eq!(row.len(), PEOPLE.len(), "{action:?}: one cell per person");
        for (who, cell) in PEOPLE.iter().zip(row.chars()) {
            let expected = match cell {
                'Y' => Outcome::Y,
                'N' => Outcome::N,
                _ => Outcome::F,
            };
            let result = attempt(*action, who, &clients[who], &admin, &fx).await;
            tried += 1;
            let got = outcome(&result);
            if got != Some(expected) {
                wrong.push(format!(
                    "{action:?} by {who}: expected {expected:?}, got {result:?}"
                ));
            }
            if let Err(e) = &result {
                let detail = e.detail().unwrap_or_default();
                for name in SECRET_NAMES {
                    if got == Some(Outcome::N) {
                        assert!(
                            !detail.contains(name),
                            "{action:?} by {who}: a 404 names {name:?}: {detail}"
                        );
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {tried} cells wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(
        tried >= 200,
        "the matrix covers every action for every role"
    );

    // A hidden app answers word for word as a missing one.
    let hidden = clients["nobody"].app(&app.guid).await.unwrap_err();
    assert_eq!(hidden.detail(), nothing.detail());

    // Lists are filtered to exactly what each person may see.
    let names = |orgs: Vec<hydrant_api::Org>| orgs.into_iter().map(|o| o.name).collect::<Vec<_>>();
    assert_eq!(
        names(clients["other-dev"].list_orgs().await.unwrap()),
        ["globex"]
    );
    assert_eq!(names(clients["dev"].list_orgs().await.unwrap()), ["acme"]);
    assert!(clients["nobody"].list_orgs().await.unwrap().is_empty());
    let all = names(admin.list_orgs().await.unwrap());
    assert!(all.contains(&"acme".to_owned()) && all.contains(&"globex".to_owned()));
    let space_names = |client: &Client| {
        let client = client.clone();
        async move {
            let mut names: Vec<String> = client
                .list_spaces()
                .await
                .unwrap()
                .into_iter()
                .map(|s| format!("{}/{}", s.org_name, s.name))
                .collect();
            names.sort();
            names
        }
    };
    assert_eq!(space_names(&clients["auditor"]).await, ["acme/dev"]);
    assert_eq!(space_names(&clients["other-dev"]).await, ["globex/web"]);
    assert!(space_names(&clients["org-aud"]).await.is_empty());
    let mgr_spaces = space_names(&clients["org-mgr"]).await;
    assert!(mgr_spaces.contains(&"acme/prod".to_owned()));
    assert!(mgr_spaces.iter().all(|s| s.starts_with("acme/")));
    let app_names = |client: &Client| {
        let client = client.clone();
        async move {
            client
                .list_apps()
                .await
                .unwrap()
                .into_iter()
                .map(|a| a.name)
                .collect::<Vec<_>>()
        }
    };
    assert!(
        !app_names(&clients["other-dev"])
            .await
            .contains(&"shop".to_owned())
    );
    assert!(
        !app_names(&clients["dev"])
            .await
            .contains(&"site".to_owned())
    );
    let events = clients["other-dev"]
        .audit_events(&EventFilter::default())
        .await
        .unwrap();
    assert!(events.iter().all(|e| e.space_guid == web.guid));

    // Readers who are not developers never see the environment or the start command, in the
    // app itself or in its list entry; developers do.
    for who in ["org-mgr", "auditor", "space-mgr"] {
        let seen = clients[who].app(&app.guid).await.unwrap();
        assert!(seen.env.is_empty(), "{who} sees env: {:?}", seen.env);
        assert_ne!(
            seen.command.as_deref(),
            Some("./run --token hunter2"),
            "{who}"
        );
        let listed = clients[who].list_apps().await.unwrap();
        let listed = listed.iter().find(|a| a.guid == app.guid).unwrap();
        assert!(listed.env.is_empty(), "{who} sees env in the list");
        let slos = clients[who].app_slos(&app.guid).await.unwrap();
        assert_ne!(slos.slos[0].webhook_url.as_deref(), Some(webhook), "{who}");
    }
    let slos = clients["dev"].app_slos(&app.guid).await.unwrap();
    assert_eq!(slos.slos[0].webhook_url.as_deref(), Some(webhook));
    let dev_view = clients["dev"].env(&app.guid).await.unwrap();
    assert_eq!(dev_view.var["DB_PASSWORD"].as_deref(), Some("s3cret"));
    assert_eq!(
        clients["dev"]
            .app(&app.guid)
            .await
            .unwrap()
            .command
            .as_deref(),
        Some("./run --token hunter2")
    );
    // Nor do audit events carry them, to anyone.
    let events = events_of(&clients["auditor"], &app.guid, None).await;
    let text = serde_json::to_string(&events).unwrap();
    assert!(
        !text.contains("s3cret") && !text.contains("SET_BY_DEV") && !text.contains("hunter3"),
        "{text}"
    );
    let _ = globex;
    cc.stop().await;
}

/// `unset` takes a variable away; removing a role takes the access away at the next request,
/// with no new login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_changes_and_role_removal_take_effect_at_once() {
    let (_dir, cc) = Cc::fresh("cc-tenancy-env").await;
    let admin = cc.admin.clone();
    let org = admin.create_org("acme").await.unwrap();
    let space = admin.create_space_in(&org.name, "dev").await.unwrap();
    let dev = cc.user("dev", None).await;
    admin
        .assign_role(&space.guid, "dev", SpaceRole::Developer)
        .await
        .unwrap();
    let app = app_in(&dev, "shop", Some(&space.guid)).await;
    dev.patch_env(
        &app.guid,
        BTreeMap::from([
            ("A".to_owned(), Some("1".to_owned())),
            ("B".to_owned(), Some("2".to_owned())),
        ]),
    )
    .await
    .unwrap();
    let env = dev
        .patch_env(&app.guid, BTreeMap::from([("A".to_owned(), None)]))
        .await
        .unwrap();
    assert_eq!(env.var.keys().collect::<Vec<_>>(), ["B"]);
    assert_eq!(dev.app(&app.guid).await.unwrap().env["B"], "2");
    let bad = dev
        .patch_env(
            &app.guid,
            BTreeMap::from([("1X".to_owned(), Some("v".into()))]),
        )
        .await
        .unwrap_err();
    assert_eq!(bad.status(), Some(422));

    admin
        .remove_role(&space.guid, "dev", SpaceRole::Developer)
        .await
        .unwrap();
    assert!(dev.app(&app.guid).await.unwrap_err().is_not_found());
    assert!(dev.env(&app.guid).await.unwrap_err().is_not_found());
    cc.stop().await;
}

/// The default org's guid.
async fn default_org(client: &Client) -> String {
    client
        .list_orgs()
        .await
        .unwrap()
        .into_iter()
        .find(|o| o.name == "default")
        .unwrap()
        .guid
}

fn procfile_app() -> [(&'static str, &'static [u8], u32); 2] {
    [
        ("Procfile", b"web: ./run\n", 0o644),
        ("run", b"#!/bin/sh\nexec sleep 1000\n", 0o755),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_scales_and_creates_past_a_quota_fail_naming_it_with_limit_and_use() {
    let (_dir, cc) = Cc::fresh("cc-quotas").await;
    let admin = cc.admin.clone();
    let (web, _) = push_and_stage(&admin, "web", &procfile_app(), None).await;
    admin
        .create_quota(&CreateQuota {
            name: "small".into(),
            total_memory_mb: Some(512),
            total_apps: Some(2),
            total_routes: Some(2),
            ..CreateQuota::default()
        })
        .await
        .unwrap();
    let org = default_org(&admin).await;
    admin.set_org_quota(&org, "small").await.unwrap();

    admin.start_app(&web.guid).await.unwrap();
    let scale = |instances, memory_mb| ScaleApp {
        instances: Some(instances),
        memory_mb,
        ..ScaleApp::default()
    };
    let err = admin
        .scale_app(&web.guid, &scale(3, None))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(422), "{err}");
    let detail = err.detail().unwrap();
    for part in [
        "org quota \"small\"",
        "total memory limit 512 MB",
        "256 MB in use",
        "512 MB more",
    ] {
        assert!(detail.contains(part), "{part:?} missing from: {detail}");
    }
    admin.scale_app(&web.guid, &scale(2, None)).await.unwrap();

    // Apps and routes count too; the default route is a route.
    let second = app_in(&admin, "second", None).await;
    let err = admin
        .create_app(&CreateApp {
            name: "third".into(),
            no_route: true,
            ..CreateApp::default()
        })
        .await
        .unwrap_err();
    assert!(
        err.detail().unwrap().contains("apps limit 2, 2 in use"),
        "{err}"
    );
    let err = admin
        .map_route(&second.guid, "extra.apps.localhost")
        .await
        .unwrap_err();
    assert!(
        err.detail().unwrap().contains("routes limit 2, 2 in use"),
        "{err}"
    );

    // A space quota binds below the org's: at most 2 instances in this space.
    admin
        .create_quota(&CreateQuota {
            name: "tiny".into(),
            scope: QuotaScope::Space,
            org: Some(org.clone()),
            total_instances: Some(2),
            ..CreateQuota::default()
        })
        .await
        .unwrap();
    let space = admin
        .list_spaces()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.org_guid == org && s.name == "default")
        .unwrap();
    admin.set_space_quota(&space.guid, "tiny").await.unwrap();
    let err = admin
        .scale_app(&web.guid, &scale(3, Some(128)))
        .await
        .unwrap_err();
    assert!(
        err.detail()
            .unwrap()
            .contains("space quota \"tiny\" exceeded: instances limit 2, 2 in use"),
        "{err}"
    );
    // Scaling down and stopping always work.
    admin.scale_app(&web.guid, &scale(1, None)).await.unwrap();
    admin.stop_app(&web.guid).await.unwrap();
    // Starting a stopped app counts its instances again.
    admin
        .scale_app(&web.guid, &scale(3, Some(64)))
        .await
        .unwrap();
    let err = admin.start_app(&web.guid).await.unwrap_err();
    assert!(err.detail().unwrap().contains("instances limit 2"), "{err}");

    // Each refusal is counted under the limit that made it.
    let metrics = cc.metrics().await;
    for (limit, count) in [
        ("total_memory", 1),
        ("apps", 1),
        ("routes", 1),
        ("instances", 2),
    ] {
        assert_counter(&metrics, "quota_refused", ("limit", limit), count);
    }
    cc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_past_the_blob_storage_quota_is_refused() {
    let (_dir, cc) = Cc::fresh("cc-quota-blobs").await;
    let admin = cc.admin.clone();
    let org = default_org(&admin).await;
    admin
        .create_quota(&CreateQuota {
            name: "one-mb".into(),
            total_blob_mb: Some(1),
            ..CreateQuota::default()
        })
        .await
        .unwrap();
    admin.set_org_quota(&org, "one-mb").await.unwrap();
    let app = cc.app("big").await;
    let big = vec![7u8; 2 << 20];
    let dir = crate::support::app_dir(&[("data.bin", &big, 0o644)]);
    let err = admin.push_dir(&app.guid, dir.path()).await.unwrap_err();
    assert_eq!(err.status(), Some(422), "{err}");
    assert!(
        err.detail()
            .unwrap()
            .contains("org quota \"one-mb\" exceeded: blob storage limit 1 MB, 0 MB in use"),
        "{err}"
    );
    // A small one fits.
    let small = crate::support::app_dir(&[("data.bin", b"small", 0o644)]);
    admin.push_dir(&app.guid, small.path()).await.unwrap();
    cc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_hijacks_are_refused_without_naming_the_owner() {
    let (_dir, cc) = Cc::fresh("cc-tenancy-routes").await;
    let admin = cc.admin.clone();
    let acme = admin.create_org("acme").await.unwrap();
    let evil = admin.create_org("evil").await.unwrap();
    let shop_space = admin.create_space_in("acme", "storefront").await.unwrap();
    let lair = admin.create_space_in("evil", "lair").await.unwrap();
    let vic = cc.user("vic", None).await;
    let mal = cc.user("mal", None).await;
    admin
        .assign_role(&shop_space.guid, "vic", SpaceRole::Developer)
        .await
        .unwrap();
    admin
        .assign_role(&lair.guid, "mal", SpaceRole::Developer)
        .await
        .unwrap();
    admin
        .assign_org_role(&evil.guid, "mal", OrgRole::Manager)
        .await
        .unwrap();
    admin
        .create_domain(&CreateDomain {
            name: "acme.example.com".into(),
            org: Some(acme.guid.clone()),
        })
        .await
        .unwrap();

    let shop = app_in(&vic, "shop", Some(&shop_space.guid)).await;
    vic.map_route(&shop.guid, "www.acme.example.com")
        .await
        .unwrap();
    let trap = mal
        .create_app(&CreateApp {
            name: "trap".into(),
            space: Some(lair.guid.clone()),
            no_route: true,
            ..CreateApp::default()
        })
        .await
        .unwrap();

    let refused = |result: Result<(), hydrant_api::Error>, what: &str| {
        let err = result.expect_err(what);
        assert_eq!(err.status(), Some(422), "{what}: {err}");
        let detail = err.detail().unwrap().to_owned();
        for name in ["acme", "storefront", "vic"] {
            let shown = detail.replace("acme.example.com", "");
            assert!(!shown.contains(name), "{what}: names {name:?}: {detail}");
        }
        detail
    };
    // The same host, and a path under it, on the shared domain.
    refused(
        mal.map_route(&trap.guid, "shop.apps.localhost")
            .await
            .map(drop),
        "same host",
    );
    refused(
        mal.map_route(&trap.guid, "shop.apps.localhost/login")
            .await
            .map(drop),
        "path under another space's host",
    );
    refused(
        mal.create_route(&CreateRoute {
            space: lair.guid.clone(),
            org: None,
            domain: "apps.localhost".into(),
            host: "shop".into(),
            path: Some("/admin".into()),
        })
        .await
        .map(drop),
        "create-route on another space's host",
    );
    // A host on another org's private domain reads as an unknown domain.
    let theirs = refused(
        mal.map_route(&trap.guid, "pay.acme.example.com")
            .await
            .map(drop),
        "host on another org's private domain",
    );
    let unknown = refused(
        mal.map_route(&trap.guid, "pay.nobody.example")
            .await
            .map(drop),
        "unknown domain",
    );
    assert_eq!(
        theirs.replace("pay.acme.example.com", "H"),
        unknown.replace("pay.nobody.example", "H")
    );
    // Nor can the other org take the domain, a domain under it, or one under the shared one.
    for name in [
        "acme.example.com",
        "in.acme.example.com",
        "shop.apps.localhost",
    ] {
        refused(
            mal.create_domain(&CreateDomain {
                name: name.into(),
                org: Some(evil.guid.clone()),
            })
            .await
            .map(drop),
            name,
        );
    }
    // A broader domain of its own does not reach into the narrower one.
    mal.create_domain(&CreateDomain {
        name: "example.com".into(),
        org: Some(evil.guid.clone()),
    })
    .await
    .unwrap();
    refused(
        mal.map_route(&trap.guid, "www.acme.example.com")
            .await
            .map(drop),
        "host under a narrower domain of another org",
    );
    mal.map_route(&trap.guid, "trap.example.com").await.unwrap();

    // The victim's routes are untouched and still only its app's.
    let mut routes: Vec<String> = vic
        .app_routes(&shop.guid)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.url)
        .collect();
    routes.sort();
    assert_eq!(routes, ["shop.apps.localhost", "www.acme.example.com"]);
    let trap_routes: Vec<String> = mal
        .app_routes(&trap.guid)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.url)
        .collect();
    assert_eq!(trap_routes, ["trap.example.com"]);
    // The owner can add paths under its own host; each space sees its own routes only.
    vic.create_route(&CreateRoute {
        space: shop_space.guid.clone(),
        org: None,
        domain: "apps.localhost".into(),
        host: "shop".into(),
        path: Some("/login".into()),
    })
    .await
    .unwrap();
    let seen: Vec<String> = mal
        .space_routes()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.url)
        .collect();
    assert_eq!(seen, ["trap.example.com"]);
    let _ = acme;
    cc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_are_private_to_their_tenant_and_old_droplets_are_collected() {
    use sha2::Digest as _;
    let (_dir, cc) = Cc::fresh("cc-tenancy-blobs").await;
    let admin = cc.admin.clone();
    admin.create_org("acme").await.unwrap();
    admin.create_org("evil").await.unwrap();
    let s1 = admin.create_space_in("acme", "dev").await.unwrap();
    let s2 = admin.create_space_in("evil", "lair").await.unwrap();
    let owner = cc.user("owner", None).await;
    let prober = cc.user("prober", None).await;
    let reader = cc.user("reader", None).await;
    admin
        .assign_role(&s1.guid, "owner", SpaceRole::Developer)
        .await
        .unwrap();
    admin
        .assign_role(&s2.guid, "prober", SpaceRole::Developer)
        .await
        .unwrap();
    admin
        .assign_role(&s1.guid, "reader", SpaceRole::Auditor)
        .await
        .unwrap();

    let secret: &[u8] = b"the secret source of acme's shop";
    let app = app_in(&owner, "shop", Some(&s1.guid)).await;
    let dir = crate::support::app_dir(&[("main.py", secret, 0o644)]);
    owner.push_dir(&app.guid, dir.path()).await.unwrap();

    // Another tenant asking about that content is told to upload it, as if nobody had it, and
    // cannot build a package from it without uploading it.
    let resource = hydrant_api::Resource {
        path: "main.py".into(),
        size: secret.len() as u64,
        sha256: hydrant_api::push::hex(&sha2::Sha256::digest(secret)),
        mode: 0o644,
    };
    assert_eq!(
        owner
            .resource_match(std::slice::from_ref(&resource))
            .await
            .unwrap(),
        Vec::<hydrant_api::Resource>::new()
    );
    assert_eq!(
        prober
            .resource_match(std::slice::from_ref(&resource))
            .await
            .unwrap(),
        vec![resource.clone()]
    );
    let trap = prober
        .create_app(&CreateApp {
            name: "trap".into(),
            space: Some(s2.guid.clone()),
            no_route: true,
            ..CreateApp::default()
        })
        .await
        .unwrap();
    let err = prober
        .create_package(&trap.guid, std::slice::from_ref(&resource))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(422), "{err}");
    // Uploading needs a developer role somewhere.
    let err = reader
        .upload_blob_bytes(&resource.sha256, secret.to_vec())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");

    // Seven builds: only the newest five droplets stay, the current one among them, and the
    // collected droplets' files are gone.
    let (web, _) = push_and_stage(&admin, "web", &procfile_app(), None).await;
    for _ in 0..6 {
        let build = admin
            .create_build(&web.guid, &hydrant_api::CreateBuild::default())
            .await
            .unwrap();
        let build = admin
            .wait_for_build(&build.guid, std::time::Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(build.state, hydrant_api::BuildState::Staged);
    }
    let droplets = admin.droplets(&web.guid).await.unwrap();
    assert_eq!(droplets.len(), 5, "{droplets:?}");
    let current = admin
        .app(&web.guid)
        .await
        .unwrap()
        .current_droplet_guid
        .unwrap();
    assert!(droplets.iter().any(|d| d.guid == current));
    let files = std::fs::read_dir(cc.data_dir.join("droplets"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".tgz"))
        })
        .count();
    assert_eq!(files, 5, "droplet files left on disk");
    cc.stop().await;
}

/// `hydrant delete-space` on a space with a running app: the app's instances are stopped on
/// their cell, its route leaves the router's table, and the space, app and route are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_space_stops_its_running_instances() {
    let bus = "cc-delete-space-stops";
    let (_dir, cc) = Cc::fresh(bus).await;
    let executor = crate::support::FakeExecutor::start(bus, "e1", 8192, 10, false).await;
    let admin = cc.admin.clone();
    admin.create_org("acme").await.unwrap();
    let space = admin.create_space_in("acme", "doomed").await.unwrap();
    let app = app_in(&admin, "web", Some(&space.guid)).await;
    let files = crate::support::app_dir(&[("app.py", b"print('hi')\n", 0o644)]);
    admin.push_dir(&app.guid, files.path()).await.unwrap();
    let build = admin
        .create_build(&app.guid, &hydrant_api::CreateBuild::default())
        .await
        .unwrap();
    admin
        .wait_for_build(&build.guid, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    admin.start_app(&app.guid).await.unwrap();
    let wait = std::time::Duration::from_secs(30);
    hydrant_testkit::wait_for(wait, "the instance to run", || {
        let running = executor.running(&app.guid);
        async move { running == 1 }
    })
    .await;
    let routes = admin.app_routes(&app.guid).await.unwrap();
    assert!(!routes.is_empty(), "the app has its default route");

    let deletion = admin.delete_space(&space.guid).await.unwrap();
    assert!(deletion.done, "{deletion:?}");
    assert_eq!(deletion.apps_deleted, ["web"]);
    assert!(deletion.routes_deleted >= 1, "{deletion:?}");
    hydrant_testkit::wait_for(wait, "the instance to be stopped", || {
        let running = executor.running(&app.guid);
        async move { running == 0 }
    })
    .await;
    assert!(
        executor
            .state
            .lock()
            .unwrap()
            .stops
            .iter()
            .any(|s| s.app == app.guid)
    );
    assert!(admin.app(&app.guid).await.unwrap_err().is_not_found());
    let left = admin.list_routes().await.unwrap();
    assert!(!left.iter().any(|r| r.app_guid == app.guid), "{left:?}");
    cc.stop().await;
}
