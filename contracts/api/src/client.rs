//! The typed client: one async method per endpoint of the cloud controller.
//!
//! Every method sends the bearer token it was built with and turns a non-success answer into
//! [`Error::Api`] carrying the server's status and `errors` list. The client holds no state
//! besides the token, so it is cheap to clone and safe to share between tasks.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::push::{self, LocalFile};
use crate::types::*;

/// A client of one cloud controller.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
    transport: Option<Arc<dyn Transport>>,
}

/// What a [`Transport`] answers: the server's response, or why there is none (no secret in it).
pub type TransportFuture = Pin<Box<dyn Future<Output = Result<reqwest::Response, String>> + Send>>;

/// Carries a built request some other way than reqwest's own connections: mutual TLS to the
/// cloud controller's internal listener, which the role runtime supplies (this contract crate
/// holds no TLS, and reqwest is built without it).
pub trait Transport: std::fmt::Debug + Send + Sync {
    /// Sends `request` and returns the server's answer.
    fn send(&self, request: reqwest::Request) -> TransportFuture;
}

/// What [`Client::push_dir`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushOutcome {
    /// The package created.
    pub package: Package,
    /// Files in the app directory.
    pub files: usize,
    /// Files whose content had to be uploaded.
    pub uploaded_files: usize,
    /// Bytes uploaded.
    pub uploaded_bytes: u64,
}

impl Client {
    /// A client of the cloud controller at `base_url` (e.g. `http://127.0.0.1:9022`), sending
    /// `token` (from [`Client::login`]) when given.
    #[must_use]
    pub fn new(base_url: &str, token: Option<String>) -> Self {
        Self {
            base: base_url.trim_end_matches('/').to_owned(),
            token,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            transport: None,
        }
    }

    /// The same server reached through `transport` (mutual TLS) instead of plain HTTP.
    #[must_use]
    pub fn with_transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// The same server with another token.
    #[must_use]
    pub fn with_token(&self, token: impl Into<String>) -> Self {
        Self {
            token: Some(token.into()),
            ..self.clone()
        }
    }

    /// The base URL.
    #[must_use]
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The token sent, if any.
    #[must_use]
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    // --- info and tokens ---

    /// `GET /v3/info` (no token needed).
    pub async fn info(&self) -> Result<Info, Error> {
        self.call(Method::GET, "/v3/info", None::<&()>).await
    }

    /// `POST /v3/tokens`: logs in and returns a token. Use [`Client::with_token`] to send it.
    pub async fn login(&self, username: &str, password: &str) -> Result<TokenResponse, Error> {
        let body = TokenRequest {
            username: username.to_owned(),
            password: password.to_owned(),
        };
        self.call(Method::POST, "/v3/tokens", Some(&body)).await
    }

    /// `POST /v3/tokens` with `grant_type=refresh_token`: a new access token for the user the
    /// refresh token belongs to, with the scopes that user has now.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenResponse, Error> {
        let body = serde_json::json!({
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
        });
        self.call(Method::POST, "/v3/tokens", Some(&body)).await
    }

    /// `POST /v3/tokens` with `grant_type=client_credentials`: a token for a configured
    /// OAuth2 client (a platform role).
    pub async fn client_credentials(
        &self,
        client_id: &str,
        client_secret: &str,
    ) -> Result<TokenResponse, Error> {
        let body = serde_json::json!({
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret,
        });
        self.call(Method::POST, "/v3/tokens", Some(&body)).await
    }

    /// `GET /v3/me`: the token's user and roles.
    pub async fn me(&self) -> Result<Me, Error> {
        self.call(Method::GET, "/v3/me", None::<&()>).await
    }

    // --- users and spaces ---

    /// `POST /v3/users` (admin).
    pub async fn create_user(&self, user: &CreateUser) -> Result<User, Error> {
        self.call(Method::POST, "/v3/users", Some(user)).await
    }

    /// `GET /v3/users` (admin).
    pub async fn list_users(&self) -> Result<Vec<User>, Error> {
        self.list("/v3/users").await
    }

    /// `POST /v3/spaces` in the `default` org (an admin or that org's managers).
    pub async fn create_space(&self, name: &str) -> Result<Space, Error> {
        let body = CreateSpace {
            name: name.to_owned(),
            org: None,
        };
        self.call(Method::POST, "/v3/spaces", Some(&body)).await
    }

    /// `GET /v3/spaces`: every space for an admin, else the spaces the caller has a role in.
    pub async fn list_spaces(&self) -> Result<Vec<Space>, Error> {
        self.list("/v3/spaces").await
    }

    /// `POST /v3/spaces/{guid}/roles` (admin): gives `username` `role` in the space.
    pub async fn assign_role(
        &self,
        space_guid: &str,
        username: &str,
        role: SpaceRole,
    ) -> Result<RoleAssignment, Error> {
        let body = AssignRole {
            username: username.to_owned(),
            role,
        };
        let path = format!("/v3/spaces/{}/roles", enc(space_guid));
        self.call(Method::POST, &path, Some(&body)).await
    }

    /// `DELETE /v3/spaces/{guid}/roles/{role}/{username}` (admin).
    pub async fn remove_role(
        &self,
        space_guid: &str,
        username: &str,
        role: SpaceRole,
    ) -> Result<(), Error> {
        let path = format!(
            "/v3/spaces/{}/roles/{}/{}",
            enc(space_guid),
            role.as_str(),
            enc(username)
        );
        self.call_empty(Method::DELETE, &path, None::<&()>).await
    }

    /// `GET /v3/spaces/{guid}/roles`: who has which role in a space.
    pub async fn space_roles(&self, space_guid: &str) -> Result<Vec<RoleAssignment>, Error> {
        self.list(&format!("/v3/spaces/{}/roles", enc(space_guid)))
            .await
    }

    // --- apps ---

    /// `POST /v3/apps`.
    pub async fn create_app(&self, app: &CreateApp) -> Result<App, Error> {
        self.call(Method::POST, "/v3/apps", Some(app)).await
    }

    /// `GET /v3/apps`: the apps the caller may see.
    pub async fn list_apps(&self) -> Result<Vec<App>, Error> {
        self.list("/v3/apps").await
    }

    /// `GET /v3/apps/{guid}`.
    pub async fn app(&self, guid: &str) -> Result<App, Error> {
        self.call(Method::GET, &app_path(guid, ""), None::<&()>)
            .await
    }

    /// `GET /v3/apps?names=NAME[&space=SPACE]`: the app called `name` (in `space`, by name or
    /// guid, when names repeat across spaces). [`Error::Api`] 404 when there is none.
    pub async fn app_by_name(&self, name: &str, space: Option<&str>) -> Result<App, Error> {
        let mut path = format!("/v3/apps?names={}", enc(name));
        if let Some(space) = space {
            path.push_str(&format!("&space={}", enc(space)));
        }
        let apps: Vec<App> = self.list(&path).await?;
        match apps.len() {
            1 => apps.into_iter().next().ok_or_else(|| not_found(name)),
            0 => Err(not_found(name)),
            _ => Err(Error::Invalid(format!(
                "{} apps are called {name:?}; name the space too",
                apps.len()
            ))),
        }
    }

    /// `PATCH /v3/apps/{guid}`.
    pub async fn update_app(&self, guid: &str, update: &UpdateApp) -> Result<App, Error> {
        self.call(Method::PATCH, &app_path(guid, ""), Some(update))
            .await
    }

    /// `DELETE /v3/apps/{guid}`: stops its instances and forgets it.
    pub async fn delete_app(&self, guid: &str) -> Result<(), Error> {
        self.call_empty(Method::DELETE, &app_path(guid, ""), None::<&()>)
            .await
    }

    /// `POST /v3/apps/{guid}/actions/start`. Fails with 422 when the app has no droplet yet.
    pub async fn start_app(&self, guid: &str) -> Result<App, Error> {
        self.call(Method::POST, &app_path(guid, "/actions/start"), None::<&()>)
            .await
    }

    /// `POST /v3/apps/{guid}/actions/stop`.
    pub async fn stop_app(&self, guid: &str) -> Result<App, Error> {
        self.call(Method::POST, &app_path(guid, "/actions/stop"), None::<&()>)
            .await
    }

    /// `POST /v3/apps/{guid}/actions/restart`: replaces every instance.
    pub async fn restart_app(&self, guid: &str) -> Result<App, Error> {
        self.call(
            Method::POST,
            &app_path(guid, "/actions/restart"),
            None::<&()>,
        )
        .await
    }

    /// `POST /v3/apps/{guid}/instances/{index}/actions/restart` (admin or space developer):
    /// replaces the crashed instance at `index` with a fresh one at once.
    pub async fn restart_instance(
        &self,
        guid: &str,
        index: u32,
        request: &RestartInstance,
    ) -> Result<InstanceRestart, Error> {
        let path = app_path(guid, &format!("/instances/{index}/actions/restart"));
        self.call(Method::POST, &path, Some(request)).await
    }

    /// `POST /v3/apps/{guid}/processes/web/actions/scale`.
    pub async fn scale_app(&self, guid: &str, scale: &ScaleApp) -> Result<App, Error> {
        let path = app_path(guid, "/processes/web/actions/scale");
        self.call(Method::POST, &path, Some(scale)).await
    }

    /// `GET /v3/apps/{guid}/processes/web/stats`: the state of every instance index.
    pub async fn app_stats(&self, guid: &str) -> Result<ProcessStats, Error> {
        let path = app_path(guid, "/processes/web/stats");
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `POST /v3/apps/{guid}/log_token`: a short-lived token for the app's log stream.
    pub async fn log_token(&self, guid: &str) -> Result<LogToken, Error> {
        self.call(Method::POST, &app_path(guid, "/log_token"), None::<&()>)
            .await
    }

    // --- routes ---

    /// `GET /v3/routes`: every route the caller may see.
    pub async fn list_routes(&self) -> Result<Vec<Route>, Error> {
        self.list("/v3/routes").await
    }

    /// `GET /v3/apps/{guid}/routes`.
    pub async fn app_routes(&self, guid: &str) -> Result<Vec<Route>, Error> {
        self.list(&app_path(guid, "/routes")).await
    }

    /// `POST /v3/apps/{guid}/routes`: maps `url` (`host.domain[/path]`) to the app. New
    /// instances register it; restart the app to apply it to running ones.
    pub async fn map_route(&self, guid: &str, url: &str) -> Result<Route, Error> {
        let body = MapRoute {
            url: url.to_owned(),
        };
        self.call(Method::POST, &app_path(guid, "/routes"), Some(&body))
            .await
    }

    /// `DELETE /v3/apps/{guid}/routes?url=URL`: unmaps and deletes the route.
    pub async fn unmap_route(&self, guid: &str, url: &str) -> Result<(), Error> {
        let path = format!("{}?url={}", app_path(guid, "/routes"), enc(url));
        self.call_empty(Method::DELETE, &path, None::<&()>).await
    }

    // --- push ---

    /// `POST /v3/resource_match`: which of `resources` the blob store lacks.
    pub async fn resource_match(&self, resources: &[Resource]) -> Result<Vec<Resource>, Error> {
        let body = Resources {
            resources: resources.to_vec(),
        };
        let missing: Resources = self
            .call(Method::POST, "/v3/resource_match", Some(&body))
            .await?;
        Ok(missing.resources)
    }

    /// `PUT /v3/blobs/{sha256}`: uploads one file's content, streamed from disk.
    pub async fn upload_blob(&self, sha256: &str, file: &Path) -> Result<Blob, Error> {
        let handle = tokio::fs::File::open(file).await.map_err(|e| Error::Io {
            path: file.display().to_string(),
            source: e,
        })?;
        let length = handle
            .metadata()
            .await
            .map(|m| m.len())
            .map_err(|e| Error::Io {
                path: file.display().to_string(),
                source: e,
            })?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(handle));
        let path = format!("/v3/blobs/{}", enc(sha256));
        let request = self
            .request(Method::PUT, &path)
            .header(reqwest::header::CONTENT_LENGTH, length)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        self.execute(&path, request).await
    }

    /// `PUT /v3/blobs/{sha256}` from memory.
    pub async fn upload_blob_bytes(&self, sha256: &str, bytes: Vec<u8>) -> Result<Blob, Error> {
        let path = format!("/v3/blobs/{}", enc(sha256));
        let request = self
            .request(Method::PUT, &path)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes);
        self.execute(&path, request).await
    }

    /// `POST /v3/apps/{guid}/packages`: a package of exactly `resources`, every one of which
    /// must already be in the blob store.
    pub async fn create_package(
        &self,
        app_guid: &str,
        resources: &[Resource],
    ) -> Result<Package, Error> {
        let body = Resources {
            resources: resources.to_vec(),
        };
        self.call(Method::POST, &app_path(app_guid, "/packages"), Some(&body))
            .await
    }

    /// `GET /v3/packages/{guid}`.
    pub async fn package(&self, guid: &str) -> Result<Package, Error> {
        let path = format!("/v3/packages/{}", enc(guid));
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// Pushes the files of `dir` as the app's new package: fingerprints them, asks which the
    /// server lacks, uploads only those, then creates the package.
    pub async fn push_dir(&self, app_guid: &str, dir: &Path) -> Result<PushOutcome, Error> {
        let owned = dir.to_path_buf();
        let files = tokio::task::spawn_blocking(move || push::fingerprint_dir(&owned))
            .await
            .map_err(|e| Error::Invalid(format!("fingerprinting {}: {e}", dir.display())))??;
        self.push_files(app_guid, &files).await
    }

    /// [`Client::push_dir`] for files already fingerprinted.
    pub async fn push_files(
        &self,
        app_guid: &str,
        files: &[LocalFile],
    ) -> Result<PushOutcome, Error> {
        let resources: Vec<Resource> = files.iter().map(|f| f.resource.clone()).collect();
        push::validate_resources(&resources)?;
        let missing = self.resource_match(&resources).await?;
        let mut uploaded = std::collections::BTreeSet::new();
        let mut uploaded_bytes = 0;
        for want in &missing {
            // Equal contents share a blob: upload each hash once.
            if !uploaded.insert(want.sha256.clone()) {
                continue;
            }
            if let Some(file) = files.iter().find(|f| f.resource.sha256 == want.sha256) {
                self.upload_blob(&want.sha256, &file.local).await?;
                uploaded_bytes += file.resource.size;
            }
        }
        let package = self.create_package(app_guid, &resources).await?;
        Ok(PushOutcome {
            package,
            files: files.len(),
            uploaded_files: uploaded.len(),
            uploaded_bytes,
        })
    }

    // --- builds and droplets ---

    /// `POST /v3/apps/{guid}/builds`: queues staging of a package (default: the newest).
    pub async fn create_build(&self, app_guid: &str, build: &CreateBuild) -> Result<Build, Error> {
        self.call(Method::POST, &app_path(app_guid, "/builds"), Some(build))
            .await
    }

    /// `GET /v3/builds/{guid}`.
    pub async fn build(&self, guid: &str) -> Result<Build, Error> {
        let path = format!("/v3/builds/{}", enc(guid));
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// Polls a build until it leaves `STAGING` or `timeout` passes.
    ///
    /// # Errors
    /// Any call error, or [`Error::Invalid`] when the build is still staging at the deadline.
    pub async fn wait_for_build(&self, guid: &str, timeout: Duration) -> Result<Build, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            let build = self.build(guid).await?;
            if build.state != BuildState::Staging {
                return Ok(build);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Invalid(format!(
                    "build {guid} is still staging after {} s",
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// `GET /v3/apps/{guid}/droplets`.
    pub async fn droplets(&self, app_guid: &str) -> Result<Vec<Droplet>, Error> {
        self.list(&app_path(app_guid, "/droplets")).await
    }

    /// `GET /v3/apps/{guid}/droplets/current`.
    pub async fn current_droplet(&self, app_guid: &str) -> Result<Droplet, Error> {
        let path = app_path(app_guid, "/droplets/current");
        self.call(Method::GET, &path, None::<&()>).await
    }

    // --- audit events ---

    /// `GET /v3/audit_events`: newest last; only events about apps the caller may see.
    pub async fn audit_events(&self, filter: &EventFilter) -> Result<Vec<AuditEvent>, Error> {
        let mut query = Vec::new();
        if let Some(target) = &filter.target_guid {
            query.push(format!("target_guid={}", enc(target)));
        }
        if let Some(types) = &filter.types {
            query.push(format!("types={}", enc(types)));
        }
        let mut path = "/v3/audit_events".to_owned();
        if !query.is_empty() {
            path.push('?');
            path.push_str(&query.join("&"));
        }
        self.list(&path).await
    }

    // --- SLOs ---

    /// `PUT /v3/apps/{guid}/slos`: replaces the app's SLOs (an empty set removes them).
    pub async fn set_slos(
        &self,
        guid: &str,
        slos: &crate::slo::SloSet,
    ) -> Result<crate::slo::AppSlos, Error> {
        let path = format!("/v3/apps/{}/slos", enc(guid));
        self.call(Method::PUT, &path, Some(slos)).await
    }

    /// `GET /v3/apps/{guid}/slos`.
    pub async fn app_slos(&self, guid: &str) -> Result<crate::slo::AppSlos, Error> {
        let path = format!("/v3/apps/{}/slos", enc(guid));
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `GET /v3/slos` (admin): every app that has SLOs.
    pub async fn list_slos(&self) -> Result<Vec<crate::slo::AppSlos>, Error> {
        self.list("/v3/slos").await
    }

    // --- autoscaling policies ---

    /// `PUT /v3/apps/{guid}/autoscaling_policy`: validates and stores the app's policy.
    pub async fn set_autoscaling_policy(
        &self,
        guid: &str,
        policy: &crate::policy::ScalingPolicy,
    ) -> Result<crate::policy::ScalingPolicy, Error> {
        let path = app_path(guid, "/autoscaling_policy");
        self.call(Method::PUT, &path, Some(policy)).await
    }

    /// `GET /v3/apps/{guid}/autoscaling_policy`: [`Error::Api`] with status 404 when none.
    pub async fn autoscaling_policy(
        &self,
        guid: &str,
    ) -> Result<crate::policy::ScalingPolicy, Error> {
        let path = app_path(guid, "/autoscaling_policy");
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `DELETE /v3/apps/{guid}/autoscaling_policy`: the app is no longer autoscaled.
    pub async fn delete_autoscaling_policy(&self, guid: &str) -> Result<(), Error> {
        let path = app_path(guid, "/autoscaling_policy");
        self.call_empty(Method::DELETE, &path, None::<&()>).await
    }

    /// `GET /v3/autoscaling_policies` (admin): every app's policy, for the autoscaler.
    pub async fn autoscaling_policies(&self) -> Result<Vec<crate::policy::AppPolicy>, Error> {
        self.list("/v3/autoscaling_policies").await
    }

    /// `POST /v3/apps/{guid}/autoscaling_events` (admin): records an `audit.app.autoscale`
    /// event for a decision the autoscaler made.
    pub async fn record_autoscale(
        &self,
        guid: &str,
        decision: &crate::policy::AutoscaleDecision,
    ) -> Result<(), Error> {
        let path = app_path(guid, "/autoscaling_events");
        self.call_empty(Method::POST, &path, Some(decision)).await
    }

    // --- syslog drains ---

    /// `POST /v3/apps/{guid}/drains`: binds a syslog drain to the app.
    pub async fn create_drain(&self, guid: &str, url: &str) -> Result<crate::Drain, Error> {
        let path = app_path(guid, "/drains");
        let body = crate::CreateDrain {
            url: url.to_owned(),
        };
        self.call(Method::POST, &path, Some(&body)).await
    }

    /// `GET /v3/apps/{guid}/drains`: the app's drains, masked, with their last status.
    pub async fn app_drains(&self, guid: &str) -> Result<Vec<crate::Drain>, Error> {
        self.list(&app_path(guid, "/drains")).await
    }

    /// `DELETE /v3/apps/{guid}/drains/{drain_guid}`.
    pub async fn delete_drain(&self, guid: &str, drain_guid: &str) -> Result<(), Error> {
        let path = app_path(guid, &format!("/drains/{}", enc(drain_guid)));
        self.call_empty(Method::DELETE, &path, None::<&()>).await
    }

    /// `GET /v3/drain_targets` (admin): every binding with its full URL, for the syslog nozzle.
    pub async fn drain_targets(&self) -> Result<Vec<crate::DrainTarget>, Error> {
        self.list("/v3/drain_targets").await
    }

    /// `PUT /v3/drain_status` (admin): the syslog nozzle's report on its drains.
    pub async fn report_drain_status(&self, statuses: &[crate::DrainStatus]) -> Result<(), Error> {
        self.call_empty(Method::PUT, "/v3/drain_status", Some(&statuses))
            .await
    }

    // --- plumbing ---

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub(crate) async fn list<T: DeserializeOwned>(&self, path: &str) -> Result<Vec<T>, Error> {
        let list: List<T> = self.call(Method::GET, path, None::<&()>).await?;
        Ok(list.resources)
    }

    pub(crate) async fn call<T: DeserializeOwned, B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, Error> {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(body);
        }
        self.execute(path, request).await
    }

    pub(crate) async fn call_empty<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(), Error> {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(body);
        }
        let url = format!("{}{path}", self.base);
        let response = self.send(&url, request).await?;
        check(response).await.map(drop)
    }

    /// Sends over the [`Transport`] when there is one, else over reqwest's own connections.
    async fn send(
        &self,
        url: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Error> {
        let transport_error = |source| Error::Transport {
            url: url.to_owned(),
            source,
        };
        match &self.transport {
            None => request.send().await.map_err(transport_error),
            Some(transport) => {
                let request = request.build().map_err(transport_error)?;
                transport
                    .send(request)
                    .await
                    .map_err(|message| Error::Unreachable {
                        url: url.to_owned(),
                        message,
                    })
            }
        }
    }

    async fn execute<T: DeserializeOwned>(
        &self,
        path: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<T, Error> {
        let url = format!("{}{path}", self.base);
        let response = self.send(&url, request).await?;
        let bytes = check(response).await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Decode {
            url,
            message: e.to_string(),
        })
    }
}

/// Turns a non-success answer into [`Error::Api`]; returns the body of a success.
async fn check(response: reqwest::Response) -> Result<Vec<u8>, Error> {
    let status = response.status();
    let url = response.url().to_string();
    let bytes = response
        .bytes()
        .await
        .map_err(|source| Error::Transport {
            url: url.clone(),
            source,
        })?
        .to_vec();
    if status.is_success() {
        return Ok(bytes);
    }
    let errors = match serde_json::from_slice::<ApiErrors>(&bytes) {
        Ok(body) if !body.errors.is_empty() => body.errors,
        _ => vec![ApiErrorItem {
            code: 0,
            title: status.canonical_reason().unwrap_or("error").to_owned(),
            detail: String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned(),
        }],
    };
    Err(Error::Api {
        status: status.as_u16(),
        errors,
    })
}

fn not_found(name: &str) -> Error {
    Error::Api {
        status: 404,
        errors: vec![ApiErrorItem {
            code: 10010,
            title: "CF-ResourceNotFound".to_owned(),
            detail: format!("App {name:?} not found"),
        }],
    }
}

fn app_path(guid: &str, rest: &str) -> String {
    format!("/v3/apps/{}{rest}", enc(guid))
}

/// Every byte but RFC 3986's unreserved ones (`A-Z a-z 0-9 - . _ ~`).
const NOT_UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes everything but unreserved characters, for path segments and query values.
pub(crate) fn enc(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, NOT_UNRESERVED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_path_segments() {
        assert_eq!(enc("a b/c?d"), "a%20b%2Fc%3Fd");
        assert_eq!(enc("shop.apps.localhost"), "shop.apps.localhost");
    }
}
