//! Services: brokers, the marketplace, service instances, bindings, service keys and the jobs
//! that carry their asynchronous work — the REST types of Cloud Foundry's v3 service API in
//! Hydrant's shape, and the [`Client`] methods over them.
//!
//! Flow: `hydrant create-service-broker` → `POST /v3/service_brokers` (the cloud controller
//! fetches and validates the broker's OSBAPI catalog) → `hydrant enable-service-access` →
//! `hydrant marketplace` → `hydrant create-service` → `POST /v3/service_instances` (202 and a
//! [`Job`]; the controller calls the broker, polls `last_operation`, mitigates orphans) →
//! `hydrant bind-service` → `POST /v3/service_credential_bindings` → the binding's credentials
//! reach the app's `VCAP_SERVICES` at its next (re)start.
//!
//! Invariant: nothing here carries a broker's password or a binding's credentials except
//! [`ServiceBindingDetails`] (the one answer made to hand them out) and a user-provided
//! instance's own [`CreateServiceInstance::credentials`] on the way in.

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::enc;
use crate::{Client, Error};

/// `POST /v3/service_brokers` (admin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateServiceBroker {
    /// A name unique on the platform.
    pub name: String,
    /// The broker's base URL (`http://host:port`); `/v2/catalog` and the rest go under it.
    pub url: String,
    /// HTTP basic auth user.
    pub username: String,
    /// HTTP basic auth password.
    pub password: String,
}

/// `PATCH /v3/service_brokers/{guid}` (admin): what to change; the catalog is fetched again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateServiceBroker {
    /// A new name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A new URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A new basic auth user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// A new basic auth password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// A registered broker (never its password).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceBroker {
    /// The broker's guid.
    pub guid: String,
    /// Its name.
    pub name: String,
    /// Its base URL.
    pub url: String,
    /// Its basic auth user.
    pub username: String,
    /// Offerings in its stored catalog.
    pub offerings: Vec<String>,
    /// When it was registered, UNIX seconds.
    pub created_at: i64,
    /// When its catalog was last fetched, UNIX seconds.
    pub updated_at: i64,
}

/// A plan of an offering, as the marketplace shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServicePlan {
    /// The plan's guid on this platform.
    pub guid: String,
    /// The plan's id in the broker's catalog.
    pub broker_id: String,
    /// Its name, unique within the offering.
    pub name: String,
    /// What it offers.
    pub description: String,
    /// Whether it costs nothing.
    pub free: bool,
    /// Whether every user sees it (`enable-service-access`); new plans are not public.
    pub public: bool,
    /// Whether instances of it can be bound.
    pub bindable: bool,
    /// Whether instances can move to another plan.
    pub plan_updateable: bool,
    /// Longest the platform polls an asynchronous operation on it, seconds.
    pub maximum_polling_duration: Option<u64>,
    /// The catalog's `schemas` object (JSON Schemas of parameters), `null` when absent.
    pub schemas: Value,
}

/// An offering with its plans, as the marketplace shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceOffering {
    /// The offering's guid on this platform.
    pub guid: String,
    /// Its id in the broker's catalog.
    pub broker_id: String,
    /// Its name (`VCAP_SERVICES` key).
    pub name: String,
    /// What it offers.
    pub description: String,
    /// The broker that serves it.
    pub broker_name: String,
    /// Whether its instances can be bound.
    pub bindable: bool,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its `requires` (`syslog_drain`, `route_forwarding`, `volume_mount`).
    pub requires: Vec<String>,
    /// The plans the caller may see.
    pub plans: Vec<ServicePlan>,
}

/// `POST /v3/service_access` (admin): make an offering's plans (or one plan) public, or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccess {
    /// The offering's name.
    pub offering: String,
    /// One plan's name; absent means every plan of the offering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// The broker, when two brokers offer the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    /// `true` to enable access, `false` to disable it.
    pub enable: bool,
}

/// Managed (from a broker) or user-provided.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceInstanceType {
    /// Provisioned by a broker.
    #[default]
    #[serde(rename = "managed")]
    Managed,
    /// Credentials a user typed in.
    #[serde(rename = "user-provided")]
    UserProvided,
}

impl ServiceInstanceType {
    /// The word the API uses.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Managed => "managed",
            Self::UserProvided => "user-provided",
        }
    }
}

/// `POST /v3/service_instances`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CreateServiceInstance {
    /// The instance's name, unique in its space.
    pub name: String,
    /// The space (name or guid); default the `default` space.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub space: Option<String>,
    /// Managed or user-provided.
    #[serde(rename = "type")]
    pub kind: ServiceInstanceType,
    /// Managed: the offering's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offering: Option<String>,
    /// Managed: the plan's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Managed: the broker, when two offer the same offering name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    /// Managed: parameters for the broker, checked against the plan's schema first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// Tags added to the offering's in `VCAP_SERVICES`.
    pub tags: Vec<String>,
    /// User-provided: the credentials apps see.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Value>,
    /// User-provided: a syslog drain URL every bound app's logs go to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syslog_drain_url: Option<String>,
    /// User-provided: a route service URL (`https://`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_service_url: Option<String>,
}

/// `PATCH /v3/service_instances/{guid}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateServiceInstance {
    /// Managed: the new plan's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Managed: parameters for the broker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// New tags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// User-provided: new credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Value>,
    /// User-provided: a new syslog drain URL (empty removes it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syslog_drain_url: Option<String>,
}

/// The last operation on an instance or binding, in CC v3's words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastOperation {
    /// `create`, `update` or `delete`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `initial`, `in progress`, `succeeded` or `failed`.
    pub state: String,
    /// What the broker or the platform said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// When it last changed, UNIX seconds.
    pub updated_at: i64,
}

/// A service instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceInstance {
    /// Its guid (also the OSBAPI `instance_id`).
    pub guid: String,
    /// Its name.
    pub name: String,
    /// Managed or user-provided.
    #[serde(rename = "type")]
    pub kind: ServiceInstanceType,
    /// Its space.
    pub space_guid: String,
    /// Its space's name.
    pub space_name: String,
    /// Managed: the offering's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offering: Option<String>,
    /// Managed: the plan's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Managed: the broker's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    /// Its own tags.
    pub tags: Vec<String>,
    /// The broker's dashboard URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard_url: Option<String>,
    /// User-provided: its syslog drain URL, masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syslog_drain_url: Option<String>,
    /// The last operation.
    pub last_operation: LastOperation,
    /// Names of the apps bound to it.
    pub bound_apps: Vec<String>,
    /// When it was created, UNIX seconds.
    pub created_at: i64,
}

/// An app binding or a service key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BindingType {
    /// Credentials for an app, in its `VCAP_SERVICES`.
    #[default]
    App,
    /// Credentials for a person or an outside tool (`create-service-key`).
    Key,
}

/// `POST /v3/service_credential_bindings`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CreateServiceBinding {
    /// App binding or service key.
    #[serde(rename = "type")]
    pub kind: BindingType,
    /// The instance's guid.
    pub service_instance: String,
    /// App bindings: the app's guid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The binding's name (required for keys).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Parameters for the broker, checked against the plan's binding schema first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
}

/// A binding (never its credentials: see [`ServiceBindingDetails`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceBinding {
    /// Its guid (also the OSBAPI `binding_id`).
    pub guid: String,
    /// App binding or service key.
    #[serde(rename = "type")]
    pub kind: BindingType,
    /// Its name, if it has one.
    #[serde(default)]
    pub name: Option<String>,
    /// The instance.
    pub service_instance_guid: String,
    /// The instance's name.
    pub service_instance_name: String,
    /// App bindings: the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_guid: Option<String>,
    /// App bindings: the app's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_name: Option<String>,
    /// The last operation.
    pub last_operation: LastOperation,
    /// When it was created, UNIX seconds.
    pub created_at: i64,
}

/// `GET /v3/service_credential_bindings/{guid}/details`: what the broker handed out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceBindingDetails {
    /// The credentials.
    pub credentials: Value,
    /// The broker's syslog drain URL for the binding.
    #[serde(default)]
    pub syslog_drain_url: Option<String>,
    /// Volume mounts (censored to `container_dir`, `mode`, `device_type`).
    #[serde(default)]
    pub volume_mounts: Vec<Value>,
}

/// Asynchronous work: what `Location: /v3/jobs/{guid}` points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Its guid.
    pub guid: String,
    /// `service_instance.create`, `service_binding.delete`, ...
    pub operation: String,
    /// `PROCESSING`, `POLLING`, `COMPLETE` or `FAILED`.
    pub state: String,
    /// The resource the job works on.
    pub resource_guid: String,
    /// What is happening now, or why it failed.
    #[serde(default)]
    pub description: Option<String>,
    /// Times the broker's `last_operation` was asked.
    pub polls: u32,
    /// When it started, UNIX seconds.
    pub created_at: i64,
    /// When it last changed, UNIX seconds.
    pub updated_at: i64,
}

impl Job {
    /// Whether the job has finished, either way.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.state == "COMPLETE" || self.state == "FAILED"
    }
}

/// What creating an instance answers: the instance, and the job when broker work is under way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceInstanceAnswer {
    /// The instance as stored.
    pub instance: ServiceInstance,
    /// The job doing the broker's part, if any.
    #[serde(default)]
    pub job: Option<Job>,
}

/// What creating a binding answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceBindingAnswer {
    /// The binding as stored.
    pub binding: ServiceBinding,
    /// The job doing the broker's part, if any.
    #[serde(default)]
    pub job: Option<Job>,
}

/// What a delete or update answers: the job when broker work is under way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobAnswer {
    /// The job, or none when the work is done already.
    #[serde(default)]
    pub job: Option<Job>,
}

/// Filters of `GET /v3/service_credential_bindings`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BindingFilter<'a> {
    /// Only this instance's bindings.
    pub service_instance: Option<&'a str>,
    /// Only this app's bindings.
    pub app: Option<&'a str>,
    /// Only bindings of this type.
    pub kind: Option<BindingType>,
}

impl Client {
    /// `POST /v3/service_brokers` (admin): registers a broker, fetching its catalog.
    pub async fn create_service_broker(
        &self,
        broker: &CreateServiceBroker,
    ) -> Result<ServiceBroker, Error> {
        self.call(Method::POST, "/v3/service_brokers", Some(broker))
            .await
    }

    /// `GET /v3/service_brokers` (admin).
    pub async fn list_service_brokers(&self) -> Result<Vec<ServiceBroker>, Error> {
        self.list("/v3/service_brokers").await
    }

    /// `PATCH /v3/service_brokers/{guid}` (admin): changes it and fetches its catalog again.
    pub async fn update_service_broker(
        &self,
        guid: &str,
        update: &UpdateServiceBroker,
    ) -> Result<ServiceBroker, Error> {
        let path = format!("/v3/service_brokers/{}", enc(guid));
        self.call(Method::PATCH, &path, Some(update)).await
    }

    /// `DELETE /v3/service_brokers/{guid}` (admin); refused while instances of it exist.
    pub async fn delete_service_broker(&self, guid: &str) -> Result<(), Error> {
        let path = format!("/v3/service_brokers/{}", enc(guid));
        self.call_empty(Method::DELETE, &path, None::<&()>).await
    }

    /// `GET /v3/service_offerings`: the marketplace (plans the caller may use).
    pub async fn list_service_offerings(&self) -> Result<Vec<ServiceOffering>, Error> {
        self.list("/v3/service_offerings").await
    }

    /// `POST /v3/service_access` (admin): the plans whose visibility changed.
    pub async fn set_service_access(
        &self,
        access: &ServiceAccess,
    ) -> Result<Vec<ServicePlan>, Error> {
        let list: crate::List<ServicePlan> = self
            .call(Method::POST, "/v3/service_access", Some(access))
            .await?;
        Ok(list.resources)
    }

    /// `POST /v3/service_instances`.
    pub async fn create_service_instance(
        &self,
        create: &CreateServiceInstance,
    ) -> Result<ServiceInstanceAnswer, Error> {
        self.call(Method::POST, "/v3/service_instances", Some(create))
            .await
    }

    /// `GET /v3/service_instances[?names=&space=]`: the instances the caller may see.
    pub async fn list_service_instances(
        &self,
        name: Option<&str>,
        space: Option<&str>,
    ) -> Result<Vec<ServiceInstance>, Error> {
        let mut query = Vec::new();
        if let Some(name) = name {
            query.push(format!("names={}", enc(name)));
        }
        if let Some(space) = space {
            query.push(format!("space={}", enc(space)));
        }
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{}", query.join("&"))
        };
        self.list(&format!("/v3/service_instances{query}")).await
    }

    /// `GET /v3/service_instances/{guid}`.
    pub async fn service_instance(&self, guid: &str) -> Result<ServiceInstance, Error> {
        let path = format!("/v3/service_instances/{}", enc(guid));
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `PATCH /v3/service_instances/{guid}`.
    pub async fn update_service_instance(
        &self,
        guid: &str,
        update: &UpdateServiceInstance,
    ) -> Result<JobAnswer, Error> {
        let path = format!("/v3/service_instances/{}", enc(guid));
        self.call(Method::PATCH, &path, Some(update)).await
    }

    /// `DELETE /v3/service_instances/{guid}`; refused while bindings or keys exist.
    pub async fn delete_service_instance(&self, guid: &str) -> Result<JobAnswer, Error> {
        let path = format!("/v3/service_instances/{}", enc(guid));
        self.call(Method::DELETE, &path, None::<&()>).await
    }

    /// `POST /v3/service_credential_bindings`: binds an app or creates a service key.
    pub async fn create_service_binding(
        &self,
        create: &CreateServiceBinding,
    ) -> Result<ServiceBindingAnswer, Error> {
        self.call(
            Method::POST,
            "/v3/service_credential_bindings",
            Some(create),
        )
        .await
    }

    /// `GET /v3/service_credential_bindings[?service_instance=&app=&type=]`.
    pub async fn list_service_bindings(
        &self,
        filter: &BindingFilter<'_>,
    ) -> Result<Vec<ServiceBinding>, Error> {
        let mut query = Vec::new();
        if let Some(instance) = filter.service_instance {
            query.push(format!("service_instance={}", enc(instance)));
        }
        if let Some(app) = filter.app {
            query.push(format!("app={}", enc(app)));
        }
        if let Some(kind) = filter.kind {
            query.push(format!(
                "type={}",
                match kind {
                    BindingType::App => "app",
                    BindingType::Key => "key",
                }
            ));
        }
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{}", query.join("&"))
        };
        self.list(&format!("/v3/service_credential_bindings{query}"))
            .await
    }

    /// `GET /v3/service_credential_bindings/{guid}/details`: the credentials.
    pub async fn service_binding_details(
        &self,
        guid: &str,
    ) -> Result<ServiceBindingDetails, Error> {
        let path = format!("/v3/service_credential_bindings/{}/details", enc(guid));
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `DELETE /v3/service_credential_bindings/{guid}`.
    pub async fn delete_service_binding(&self, guid: &str) -> Result<JobAnswer, Error> {
        let path = format!("/v3/service_credential_bindings/{}", enc(guid));
        self.call(Method::DELETE, &path, None::<&()>).await
    }

    /// `POST /v3/service_instances/{guid}/log_token`: a firehose token that reads the
    /// instance's own logs and gauges (source id = its guid).
    pub async fn service_instance_log_token(&self, guid: &str) -> Result<crate::LogToken, Error> {
        let path = format!("/v3/service_instances/{}/log_token", enc(guid));
        self.call(Method::POST, &path, None::<&()>).await
    }

    /// `GET /v3/jobs/{guid}`.
    pub async fn job(&self, guid: &str) -> Result<Job, Error> {
        let path = format!("/v3/jobs/{}", enc(guid));
        self.call(Method::GET, &path, None::<&()>).await
    }
}
