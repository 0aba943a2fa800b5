//! The API-consumer settings as a role's config holds them: `api_url` (or `api_urls`, several
//! controllers tried in turn), one way to get a token (`token`, `token_file`, or `client_id`
//! with `client_secret`/`client_secret_file`) and `tls`, declared once here and flattened into
//! every role that calls the cloud controller (autoscaler, health manager, SLO alerter, the
//! syslog nozzle's `[platform]`).
//!
//! Invariant: the keys keep their names at the role's level of the file (`#[serde(flatten)]`),
//! and a typo beside them is still refused: serde hands the keys this struct does not take back
//! to the outer struct, whose `deny_unknown_fields` rejects what nobody took (the tests below
//! hold that, because serde documents the two attributes as unsupported together).

use std::path::PathBuf;

use serde::Deserialize;

use crate::{ApiClient, ApiConsumer, ConfigError, Error, Registry, invalid};

/// The API-consumer keys of a role's config: flatten it (`#[serde(flatten)] pub api:
/// ApiSettings`) so the keys stay `api_url`, `token`, ... where the role's file has them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// The cloud controller's API. Default `http://127.0.0.1:9022`.
    pub api_url: String,
    /// Several cloud controllers serving one API (hosts that can be lost): tried in turn, the
    /// first first; the one that answers is kept until it fails (no connection, no answer,
    /// a 5xx), then the next one is used, and each such move is logged and counted
    /// (`controller_failovers_total`). Token keys come through the same failover. Default
    /// unset: the one `api_url`. When set, leave `api_url` out (or make it the first entry).
    pub api_urls: Option<Vec<String>>,
    /// A token of a user the role acts as (an admin, for every role that reads all apps). Set
    /// this, `token_file` or `client_id`.
    pub token: Option<String>,
    /// A file holding the token, re-read before every call, so whoever renews the token only
    /// rewrites the file. Set this, `token` or `client_id`.
    pub token_file: Option<PathBuf>,
    /// OAuth2 client credentials instead of a token: a client id from the cloud controller's
    /// `[[clients]]`. Tokens come from `grant_type=client_credentials` and are renewed before
    /// they expire. Set with `client_secret` or `client_secret_file`; not with a token.
    pub client_id: Option<String>,
    /// The client's secret inline.
    pub client_secret: Option<String>,
    /// A file holding the client's secret (re-read at every renewal).
    pub client_secret_file: Option<PathBuf>,
    /// This role's certificate, key and trust bundle: with it, `api_url` is the cloud
    /// controller's internal `https://` listener and every call runs mutual TLS. Default unset:
    /// plain HTTP to the public API.
    pub tls: Option<hydrant_tls::TlsFiles>,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            api_url: DEFAULT_API_URL.to_owned(),
            api_urls: None,
            token: None,
            token_file: None,
            client_id: None,
            client_secret: None,
            client_secret_file: None,
            tls: None,
        }
    }
}

/// `api_url`'s default: the micro cloud's controller on loopback.
const DEFAULT_API_URL: &str = "http://127.0.0.1:9022";

impl ApiSettings {
    /// The controllers this role calls, in the order they are tried: `api_urls`, or the one
    /// `api_url`.
    #[must_use]
    pub fn urls(&self) -> Vec<&str> {
        match &self.api_urls {
            Some(urls) if !urls.is_empty() => urls.iter().map(String::as_str).collect(),
            _ => vec![self.api_url.as_str()],
        }
    }

    /// The controller tried first: `api_urls`'s first entry, or `api_url`. Derived URLs (the
    /// default `token_keys_url`, `<this>/token_keys`) start from it, and calls to them fail
    /// over like every other.
    #[must_use]
    pub fn primary_url(&self) -> &str {
        match &self.api_urls {
            Some(urls) => urls.first().map_or(self.api_url.as_str(), String::as_str),
            None => &self.api_url,
        }
    }

    /// Settings with `api_url` and an inline `token`, the rest default (tests, fixed setups).
    #[must_use]
    pub fn with_token(api_url: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            api_url: api_url.into(),
            token: Some(token.into()),
            ..Self::default()
        }
    }

    /// The borrowed block the runtime validates and connects with.
    #[must_use]
    pub fn consumer(&self) -> ApiConsumer<'_> {
        ApiConsumer::new(
            self.primary_url(),
            self.token.as_ref(),
            self.token_file.as_ref(),
        )
        .with_urls(self.api_urls.as_deref().unwrap_or_default())
        .with_client(
            self.client_id.as_ref(),
            self.client_secret.as_ref(),
            self.client_secret_file.as_ref(),
        )
        .with_tls(self.tls.as_ref())
    }

    /// Checks the keys; `prefix` is the section they sit in (`""` or `"platform."`), `needs`
    /// what the token must be able to do (e.g. "an admin token").
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key as written in the file.
    pub fn validate(&self, prefix: &str, needs: &str) -> Result<(), ConfigError> {
        let Some(urls) = &self.api_urls else {
            return self.consumer().validate(prefix, needs);
        };
        let field = format!("{prefix}api_urls");
        if urls.is_empty() {
            return Err(invalid(
                field,
                "is empty; list every cloud controller's address, e.g. [\"https://10.0.0.1:9023\",                  \"https://10.0.0.2:9023\"], or remove it and set api_url",
            ));
        }
        let normal = |u: &str| u.trim().trim_end_matches('/').to_ascii_lowercase();
        if self.api_url != DEFAULT_API_URL
            && !urls.iter().any(|u| normal(u) == normal(&self.api_url))
        {
            return Err(invalid(
                format!("{prefix}api_url"),
                "api_url and api_urls are both set: list every controller in api_urls and                  remove api_url",
            ));
        }
        for (i, url) in urls.iter().enumerate() {
            if urls[..i].iter().any(|u| normal(u) == normal(url)) {
                return Err(invalid(
                    field,
                    format!("{url:?} is listed twice; list each cloud controller once"),
                ));
            }
            // Each entry as if it were the one api_url: the scheme, https with tls.
            let mut one = self.consumer();
            one.api_url = url;
            one.api_urls = &[];
            one.validate(prefix, needs).map_err(|e| {
                if e.field == format!("{prefix}api_url") {
                    invalid(field.clone(), format!("entry {}: {}", i + 1, e.message))
                } else if e.field == format!("{prefix}tls") && url.trim().starts_with("https://") {
                    invalid(
                        field.clone(),
                        format!(
                            "entry {} ({url:?}) is https://, which needs tls: {}",
                            i + 1,
                            e.message
                        ),
                    )
                } else {
                    e
                }
            })?;
        }
        Ok(())
    }

    /// A role that also reads the firehose with client credentials must give the firehose its
    /// own ones: a client-credential token handed to the stream once would expire and end it
    /// (1008), and the firehose block renews only with its own client credentials.
    /// `firehose_has_own` says whether the firehose section has a token or a client id.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `firehose.token`.
    pub fn check_firehose_credentials(&self, firehose_has_own: bool) -> Result<(), ConfigError> {
        if self.client_id.is_some() && !firehose_has_own {
            return Err(invalid(
                "firehose.token",
                "with client_id, give the firehose its own credentials (firehose.client_id, \
                 firehose.client_secret_file and firehose.api_url, renewed as they expire) or \
                 its own token (firehose.token)",
            ));
        }
        Ok(())
    }

    /// The client these settings describe (see [`ApiConsumer::connect`]).
    ///
    /// # Errors
    /// [`Error::Config`] naming `tls` when its files cannot be used.
    pub fn connect(&self) -> Result<ApiClient, Error> {
        self.consumer().connect()
    }

    /// [`ApiSettings::connect`], counting failovers between `api_urls` in the role's
    /// `registry` (`controller.failovers{to}`).
    ///
    /// # Errors
    /// As [`ApiSettings::connect`].
    pub fn connect_in(&self, registry: &Registry) -> Result<ApiClient, Error> {
        self.consumer().connect_in(Some(registry))
    }

    /// The client for a caller that cannot fail here (see [`ApiConsumer::client`]).
    #[must_use]
    pub fn client(&self) -> ApiClient {
        self.consumer().client()
    }

    /// [`ApiSettings::client`], counting failovers in the role's `registry`.
    #[must_use]
    pub fn client_in(&self, registry: &Registry) -> ApiClient {
        self.consumer().client_in(Some(registry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A role's config as the roles declare theirs: the settings flattened beside its own keys.
    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Role {
        #[serde(flatten)]
        api: ApiSettings,
        poll_secs: u64,
        nested: Nested,
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Nested {
        size: u32,
    }

    #[test]
    fn flattened_keys_parse_where_the_role_has_them_and_typos_are_still_refused() {
        let role: Role = toml::from_str(
            "api_url = \"http://cc:9022\"\ntoken_file = \"t\"\npoll_secs = 5\n[nested]\nsize = 3\n",
        )
        .unwrap();
        assert_eq!(role.api.api_url, "http://cc:9022");
        assert_eq!(role.api.token_file, Some(PathBuf::from("t")));
        assert_eq!((role.poll_secs, role.nested.size), (5, 3));
        role.api.validate("", "an admin token").unwrap();

        let defaults: Role = toml::from_str("").unwrap();
        assert_eq!(defaults.api, ApiSettings::default());

        for typo in [
            "tokn = \"t\"",
            "poll_sec = 5",
            "[nested]\nsise = 3",
            "[tls]\nca_file = \"a\"\ncert_file = \"b\"\nkey_file = \"c\"\nkey = 1",
        ] {
            let err = toml::from_str::<Role>(typo).unwrap_err().to_string();
            assert!(err.contains("unknown field"), "{typo}: {err}");
        }
        let err = toml::from_str::<Role>("token = 5").unwrap_err().to_string();
        assert!(err.contains("expected a string"), "{err}");
    }

    #[test]
    fn api_urls_name_several_controllers_and_validate_says_what_to_fix() {
        let role: Role = toml::from_str(
            "api_urls = [\"http://cc-a:9022\", \"http://cc-b:9022/\"]\ntoken = \"t\"\n",
        )
        .unwrap();
        role.api.validate("", "an admin token").unwrap();
        assert_eq!(role.api.urls(), ["http://cc-a:9022", "http://cc-b:9022/"]);
        assert_eq!(role.api.primary_url(), "http://cc-a:9022");
        // The single api_url keeps working.
        let one = ApiSettings::with_token("http://cc:9022", "t");
        assert_eq!(
            (one.urls(), one.primary_url()),
            (vec!["http://cc:9022"], "http://cc:9022")
        );

        let refused = |api: &ApiSettings| api.validate("platform.", "an admin token").unwrap_err();
        let with = |urls: &[&str]| ApiSettings {
            api_urls: Some(urls.iter().map(|u| (*u).to_owned()).collect()),
            ..ApiSettings::with_token(DEFAULT_API_URL, "t")
        };
        let e = refused(&with(&[]));
        assert_eq!(e.field, "platform.api_urls");
        assert!(e.message.contains("is empty"), "{e}");
        let e = refused(&with(&["http://a:9022", "http://A:9022/"]));
        assert_eq!(e.field, "platform.api_urls");
        assert!(e.message.contains("listed twice"), "{e}");
        let e = refused(&with(&["http://a:9022", "ftp://b"]));
        assert!(
            e.field == "platform.api_urls" && e.message.contains("entry 2"),
            "{e}"
        );
        // With tls, every entry is an internal https:// address.
        let mut tls = with(&["https://a:9023", "http://b:9022"]);
        tls.tls = Some(hydrant_tls::TlsFiles {
            ca_file: "ca.pem".into(),
            cert_file: "hm.pem".into(),
            key_file: "hm.key".into(),
        });
        let e = refused(&tls);
        assert!(
            e.field == "platform.api_urls"
                && e.message.contains("entry 2")
                && e.message.contains("https://"),
            "{e}"
        );
        // Without tls, an https:// entry needs it.
        let e = refused(&with(&["http://a:9022", "https://b:9023"]));
        assert!(
            e.field == "platform.api_urls" && e.message.contains("needs tls"),
            "{e}"
        );
        // Both keys naming different controllers: which one wins would be a guess.
        let mut both = with(&["http://a:9022", "http://b:9022"]);
        both.api_url = "http://c:9022".to_owned();
        assert_eq!(refused(&both).field, "platform.api_url");
        both.api_url = "http://b:9022".to_owned();
        both.validate("", "an admin token").unwrap();
    }

    #[tokio::test]
    async fn a_role_with_api_urls_fails_over_to_the_controller_that_answers() {
        // The first controller refuses connections; the second answers /v3/info.
        let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = format!("http://{}", gone.local_addr().unwrap());
        drop(gone);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let alive = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().route(
            "/v3/info",
            axum::routing::get(|| async {
                "{\"api_version\":\"3\",\"apps_domain\":\"apps.b\",\"external_url\":\"b\",\"endpoints\":{}}"
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });

        let api = ApiSettings {
            api_urls: Some(vec![dead.clone(), alive.clone()]),
            ..ApiSettings::with_token(DEFAULT_API_URL, "t")
        };
        api.validate("", "an admin token").unwrap();
        let registry = Registry::new("healthmanager", "0");
        let client = api.connect_in(&registry).unwrap();
        let authorized = client.authorized().await.unwrap();
        assert_eq!(authorized.info().await.unwrap().apps_domain, "apps.b");
        assert_eq!(
            registry.counter_sum("controller.failovers", &[("to", alive.as_str())]),
            1
        );

        // Both down: the error names both controllers.
        let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let other = format!("http://{}", gone.local_addr().unwrap());
        drop(gone);
        let down = ApiSettings {
            api_urls: Some(vec![dead.clone(), other.clone()]),
            ..ApiSettings::with_token(DEFAULT_API_URL, "t")
        };
        let err = down
            .connect()
            .unwrap()
            .authorized()
            .await
            .unwrap()
            .info()
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&dead) && text.contains(&other), "{text}");
    }

    #[test]
    fn client_credentials_need_the_firehose_to_have_its_own() {
        let mut api = ApiSettings::with_token("http://cc:9022", "t");
        api.check_firehose_credentials(false).unwrap();
        api.token = None;
        api.client_id = Some("autoscaler".to_owned());
        api.client_secret = Some("s".to_owned());
        api.validate("", "an admin token").unwrap();
        let err = api.check_firehose_credentials(false).unwrap_err();
        assert_eq!(err.field, "firehose.token");
        api.check_firehose_credentials(true).unwrap();
    }
}
