//! The API-consumer settings as a role's config holds them: `api_url`, one way to get a token
//! (`token`, `token_file`, or `client_id` with `client_secret`/`client_secret_file`) and `tls`,
//! declared once here and flattened into every role that calls the cloud controller
//! (autoscaler, health manager, SLO alerter, the syslog nozzle's `[platform]`).
//!
//! Invariant: the keys keep their names at the role's level of the file (`#[serde(flatten)]`),
//! and a typo beside them is still refused: serde hands the keys this struct does not take back
//! to the outer struct, whose `deny_unknown_fields` rejects what nobody took (the tests below
//! hold that, because serde documents the two attributes as unsupported together).

use std::path::PathBuf;

use serde::Deserialize;

use crate::{ApiClient, ApiConsumer, ConfigError, Error, invalid};

/// The API-consumer keys of a role's config: flatten it (`#[serde(flatten)] pub api:
/// ApiSettings`) so the keys stay `api_url`, `token`, ... where the role's file has them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// The cloud controller's API. Default `http://127.0.0.1:9022`.
    pub api_url: String,
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
            api_url: "http://127.0.0.1:9022".to_owned(),
            token: None,
            token_file: None,
            client_id: None,
            client_secret: None,
            client_secret_file: None,
            tls: None,
        }
    }
}

impl ApiSettings {
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
        ApiConsumer::new(&self.api_url, self.token.as_ref(), self.token_file.as_ref())
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
        self.consumer().validate(prefix, needs)
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

    /// The client for a caller that cannot fail here (see [`ApiConsumer::client`]).
    #[must_use]
    pub fn client(&self) -> ApiClient {
        self.consumer().client()
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
