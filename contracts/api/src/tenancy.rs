//! Tenancy, Cloud Foundry's model: orgs hold spaces, people hold roles in either, quotas cap
//! what an org or a space may use, domains are shared or owned by an org, and a route (a host
//! on a domain, with an optional path) belongs to the space that created it.
//!
//! Both ends use these types: the cloud controller serialises them and [`Client`] parses them.
//! Requests reject unknown fields, so a misspelt quota limit is an error rather than no limit.
//! Every limit of a quota is optional: absent means unlimited.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::client::{Client, enc};
use reqwest::Method;

// === orgs and org roles ===

/// `POST /v3/organizations` (admin only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOrg {
    /// Unique org name (1 to 63 of `a-z 0-9 -`).
    pub name: String,
}

/// An org: a tenant, holding spaces, people with org roles, a quota and private domains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Org {
    /// Its guid.
    pub guid: String,
    /// Its name.
    pub name: String,
    /// The org quota assigned to it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_guid: Option<String>,
    /// Creation time, UNIX seconds.
    pub created_at: i64,
}

/// What `DELETE /v3/spaces/{guid}` and `DELETE /v3/organizations/{guid}` answer, as Cloud
/// Foundry's recursive deletes do: apps (their instances stopped), routes, service bindings
/// and instances go with the space. `200` with `done` once everything is gone; `202` while
/// managed service instances are still being unbound and deleted at their brokers (by the
/// ordinary broker jobs): wait for `jobs`, then send the same `DELETE` again, which carries on
/// from where the last one stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletion {
    /// Everything is gone (the space, or the org with all its spaces).
    pub done: bool,
    /// The apps this request deleted, by name.
    #[serde(default)]
    pub apps_deleted: Vec<String>,
    /// How many routes this request deleted (mapped to its apps or claimed by its spaces).
    #[serde(default)]
    pub routes_deleted: u64,
    /// The service instances this request deleted, by name (user-provided ones at once;
    /// managed ones once their broker finished).
    #[serde(default)]
    pub services_deleted: Vec<String>,
    /// The managed service instances still being unbound or deleted at their brokers.
    #[serde(default)]
    pub services_pending: Vec<String>,
    /// The broker jobs this request started (`GET /v3/jobs/{guid}`); wait for them before
    /// asking again. A `FAILED` one says why its broker refused.
    #[serde(default)]
    pub jobs: Vec<crate::services::Job>,
}

/// A role in an org.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrgRole {
    /// Creates spaces, gives people roles in the org and its spaces, reads every space's apps
    /// (never their environment), manages space quotas and private domains.
    Manager,
    /// Reads the org, its quota, its domains and who holds which org role.
    Auditor,
}

impl OrgRole {
    /// `manager` or `auditor`, as in URLs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manager => "manager",
            Self::Auditor => "auditor",
        }
    }

    /// Parses `manager` or `auditor`, or the cf CLI's `OrgManager` and `OrgAuditor`.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "manager" | "OrgManager" => Some(Self::Manager),
            "auditor" | "OrgAuditor" => Some(Self::Auditor),
            _ => None,
        }
    }
}

/// `POST /v3/organizations/{guid}/roles`: give a user a role in an org.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignOrgRole {
    /// The user's name.
    pub username: String,
    /// The role.
    pub role: OrgRole,
}

/// One user's role in one org.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgRoleAssignment {
    /// The org's guid.
    pub org_guid: String,
    /// The org's name.
    pub org_name: String,
    /// The user's name.
    pub username: String,
    /// The role.
    pub role: OrgRole,
}

// === quotas ===

/// What a quota applies to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaScope {
    /// An org quota: the sum over every space of the org.
    #[default]
    Org,
    /// A space quota, owned by one org and assignable to that org's spaces.
    Space,
}

/// `POST /v3/quotas`: an org quota (admin only), or a space quota owned by `org` (an admin or
/// that org's managers). Absent limits are unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CreateQuota {
    /// Name, unique among org quotas or among one org's space quotas.
    pub name: String,
    /// `org` (default) or `space`.
    pub scope: QuotaScope,
    /// For a space quota: the org that owns it, by name or guid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// Memory of every instance of every started app together, MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_memory_mb: Option<u64>,
    /// Instances of every started app together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_instances: Option<u64>,
    /// Apps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_apps: Option<u64>,
    /// Routes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_routes: Option<u64>,
    /// Service instances.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_service_instances: Option<u64>,
    /// Bytes of uploaded packages and staged droplets, MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_blob_mb: Option<u64>,
}

/// A quota.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Its guid.
    pub guid: String,
    /// Its name.
    pub name: String,
    /// Org or space quota.
    pub scope: QuotaScope,
    /// For a space quota: the owning org's guid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_guid: Option<String>,
    /// Limits; `None` is unlimited.
    #[serde(default)]
    pub total_memory_mb: Option<u64>,
    /// Limits; `None` is unlimited.
    #[serde(default)]
    pub total_instances: Option<u64>,
    /// Limits; `None` is unlimited.
    #[serde(default)]
    pub total_apps: Option<u64>,
    /// Limits; `None` is unlimited.
    #[serde(default)]
    pub total_routes: Option<u64>,
    /// Limits; `None` is unlimited.
    #[serde(default)]
    pub total_service_instances: Option<u64>,
    /// Limits; `None` is unlimited.
    #[serde(default)]
    pub total_blob_mb: Option<u64>,
    /// Creation time, UNIX seconds.
    pub created_at: i64,
}

/// `PUT /v3/organizations/{guid}/quota` and `PUT /v3/spaces/{guid}/quota`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetQuota {
    /// The quota, by name or guid.
    pub quota: String,
}

// === app environment ===

/// `GET` and `PATCH /v3/apps/{guid}/environment_variables` (space developers only). In a
/// `PATCH`, a `null` value removes the variable and absent names are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvVars {
    /// Name to value.
    pub var: BTreeMap<String, Option<String>>,
}

// === domains and routes ===

/// `POST /v3/domains`: a shared domain (admin only, no `org`) or a private domain owned by
/// `org` (an admin or that org's managers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateDomain {
    /// The domain, lower case, e.g. `shop.example.com`.
    pub name: String,
    /// The owning org, by name or guid; absent for a shared domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
}

/// A domain routes live under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    /// Its guid.
    pub guid: String,
    /// The domain name.
    pub name: String,
    /// The owning org; `None` for a shared domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_guid: Option<String>,
    /// Creation time, UNIX seconds.
    pub created_at: i64,
}

/// `POST /v3/space_routes`: claim `host.domain[/path]` for a space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRoute {
    /// The space, by guid (or by name within `org`).
    pub space: String,
    /// The space's org, by name or guid, when `space` is a name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// The domain, e.g. `apps.localhost`.
    pub domain: String,
    /// The host label, e.g. `shop`.
    pub host: String,
    /// An optional path, e.g. `/api`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// A route a space owns: nobody outside the space may map its host, or a path under it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceRoute {
    /// Its guid.
    pub guid: String,
    /// `host.domain[/path]`.
    pub url: String,
    /// The host label.
    pub host: String,
    /// The domain.
    pub domain: String,
    /// The path, `""` for none.
    pub path: String,
    /// The owning space's guid.
    pub space_guid: String,
    /// Creation time, UNIX seconds.
    pub created_at: i64,
}

impl Client {
    // --- orgs ---

    /// `POST /v3/organizations` (admin).
    pub async fn create_org(&self, name: &str) -> Result<Org, Error> {
        let body = CreateOrg {
            name: name.to_owned(),
        };
        self.call(Method::POST, "/v3/organizations", Some(&body))
            .await
    }

    /// `GET /v3/organizations`: the orgs the caller may see.
    pub async fn list_orgs(&self) -> Result<Vec<Org>, Error> {
        self.list("/v3/organizations").await
    }

    /// `POST /v3/organizations/{guid}/roles`.
    pub async fn assign_org_role(
        &self,
        org_guid: &str,
        username: &str,
        role: OrgRole,
    ) -> Result<OrgRoleAssignment, Error> {
        let body = AssignOrgRole {
            username: username.to_owned(),
            role,
        };
        let path = format!("/v3/organizations/{}/roles", enc(org_guid));
        self.call(Method::POST, &path, Some(&body)).await
    }

    /// `DELETE /v3/organizations/{guid}/roles/{role}/{username}`.
    pub async fn remove_org_role(
        &self,
        org_guid: &str,
        username: &str,
        role: OrgRole,
    ) -> Result<(), Error> {
        let path = format!(
            "/v3/organizations/{}/roles/{}/{}",
            enc(org_guid),
            role.as_str(),
            enc(username)
        );
        self.call_empty(Method::DELETE, &path, None::<&()>).await
    }

    /// `GET /v3/organizations/{guid}/roles`.
    pub async fn org_roles(&self, org_guid: &str) -> Result<Vec<OrgRoleAssignment>, Error> {
        self.list(&format!("/v3/organizations/{}/roles", enc(org_guid)))
            .await
    }

    /// `POST /v3/spaces` in `org` (an admin or the org's managers).
    pub async fn create_space_in(&self, org: &str, name: &str) -> Result<crate::Space, Error> {
        let body = crate::CreateSpace {
            name: name.to_owned(),
            org: Some(org.to_owned()),
        };
        self.call(Method::POST, "/v3/spaces", Some(&body)).await
    }

    /// `DELETE /v3/spaces/{guid}` (an admin or the org's managers): deletes the space with its
    /// apps, routes and service instances; see [`Deletion`] for a `done: false` answer.
    pub async fn delete_space(&self, space_guid: &str) -> Result<Deletion, Error> {
        let path = format!("/v3/spaces/{}", enc(space_guid));
        self.call(Method::DELETE, &path, None::<&()>).await
    }

    /// `DELETE /v3/organizations/{guid}` (an admin or the org's managers): deletes every space
    /// of the org as [`Client::delete_space`] does, then the org with its quotas and private
    /// domains.
    pub async fn delete_org(&self, org_guid: &str) -> Result<Deletion, Error> {
        let path = format!("/v3/organizations/{}", enc(org_guid));
        self.call(Method::DELETE, &path, None::<&()>).await
    }

    // --- app environment ---

    /// `GET /v3/apps/{guid}/environment_variables` (space developers).
    pub async fn env(&self, app_guid: &str) -> Result<EnvVars, Error> {
        let path = format!("/v3/apps/{}/environment_variables", enc(app_guid));
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `PATCH /v3/apps/{guid}/environment_variables`: `Some` sets, `None` removes.
    pub async fn patch_env(
        &self,
        app_guid: &str,
        var: BTreeMap<String, Option<String>>,
    ) -> Result<EnvVars, Error> {
        let path = format!("/v3/apps/{}/environment_variables", enc(app_guid));
        self.call(Method::PATCH, &path, Some(&EnvVars { var }))
            .await
    }

    // --- quotas ---

    /// `GET /v3/quotas`: org quotas, and the space quotas of orgs the caller may see.
    pub async fn quotas(&self) -> Result<Vec<Quota>, Error> {
        self.list("/v3/quotas").await
    }

    /// `POST /v3/quotas`.
    pub async fn create_quota(&self, quota: &CreateQuota) -> Result<Quota, Error> {
        self.call(Method::POST, "/v3/quotas", Some(quota)).await
    }

    /// `PUT /v3/organizations/{guid}/quota` (admin).
    pub async fn set_org_quota(&self, org_guid: &str, quota: &str) -> Result<Org, Error> {
        let path = format!("/v3/organizations/{}/quota", enc(org_guid));
        let body = SetQuota {
            quota: quota.to_owned(),
        };
        self.call(Method::PUT, &path, Some(&body)).await
    }

    /// `PUT /v3/spaces/{guid}/quota` (an admin or the org's managers).
    pub async fn set_space_quota(
        &self,
        space_guid: &str,
        quota: &str,
    ) -> Result<crate::Space, Error> {
        let path = format!("/v3/spaces/{}/quota", enc(space_guid));
        let body = SetQuota {
            quota: quota.to_owned(),
        };
        self.call(Method::PUT, &path, Some(&body)).await
    }

    // --- domains and routes ---

    /// `GET /v3/domains`: shared domains and the private domains of orgs the caller may see.
    pub async fn domains(&self) -> Result<Vec<Domain>, Error> {
        self.list("/v3/domains").await
    }

    /// `POST /v3/domains`.
    pub async fn create_domain(&self, domain: &CreateDomain) -> Result<Domain, Error> {
        self.call(Method::POST, "/v3/domains", Some(domain)).await
    }

    /// `GET /v3/space_routes`: the routes of spaces the caller may see.
    pub async fn space_routes(&self) -> Result<Vec<SpaceRoute>, Error> {
        self.list("/v3/space_routes").await
    }

    /// `POST /v3/space_routes` (space developers).
    pub async fn create_route(&self, route: &CreateRoute) -> Result<SpaceRoute, Error> {
        self.call(Method::POST, "/v3/space_routes", Some(route))
            .await
    }

    /// `DELETE /v3/space_routes/{guid}` (space developers; unmaps it from every app).
    pub async fn delete_space_route(&self, guid: &str) -> Result<(), Error> {
        let path = format!("/v3/space_routes/{}", enc(guid));
        self.call_empty(Method::DELETE, &path, None::<&()>).await
    }
}
