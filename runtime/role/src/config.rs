//! Config plumbing shared by every role: reading the TOML file, the config-field error every
//! `validate()` reports, and the API-consumer block (`api_url`, `token`/`token_file` or client
//! credentials, and `tls`, the role's certificate for the controller's internal listener) of
//! the roles that call the cloud controller.
//!
//! Invariant: every rejection names the field as it is written in the config file and says
//! what to write instead; a token is never echoed into an error.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::Error;

/// A config field holds a value the role cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// The field as written in the config file (dotted for nested sections: `telemetry.agent`).
    pub field: String,
    /// What is wrong and what to write instead.
    pub message: String,
}

/// A config that checks itself. Every role's `Config` implements it beside its fields, so the
/// checks live with what they check; the runtime calls it before anything is bound
/// ([`crate::Role::validate`]'s default).
pub trait Validate {
    /// What a rejection is: the role's error, whose config variant names the field.
    type Error;

    /// Checks every field; errors name the field and say what to write instead.
    ///
    /// # Errors
    /// The first field that cannot work.
    fn validate(&self) -> Result<(), Self::Error>;
}

/// A [`ConfigError`] for `field`.
pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

/// Reads `path` as TOML into a role's config; unknown fields are errors (the config types say
/// `deny_unknown_fields`), so a typo is caught at start-up.
///
/// # Errors
/// [`Error::Read`] or [`Error::Parse`], naming the file.
pub fn load<C: DeserializeOwned>(path: &Path) -> Result<C, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| Error::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The most a `token_file` may hold: a token is a few hundred bytes, so anything larger is the
/// wrong file.
pub const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// The API-consumer block of a role that calls the cloud controller: its URL, and exactly one
/// way to get a token: OAuth2 client credentials (`client_id` with `client_secret` or
/// `client_secret_file`; the role gets its tokens at the token endpoint and renews them before
/// they expire), an inline token, or a file holding one (re-read on every use, so whoever
/// renews the token only rewrites the file). A view over the role's own fields, which keep
/// their names in its config.
#[derive(Debug, Clone, Copy)]
pub struct ApiConsumer<'a> {
    /// `api_url`: the cloud controller, `http(s)://HOST:PORT`.
    pub api_url: &'a str,
    /// `api_urls`: several controllers, tried in turn (see [`crate::Failover`]); empty when
    /// the role names one (`api_url`). When set, `api_url` is its first entry.
    pub api_urls: &'a [String],
    /// `token`.
    pub token: Option<&'a str>,
    /// `token_file`.
    pub token_file: Option<&'a Path>,
    /// `client_id`.
    pub client_id: Option<&'a str>,
    /// `client_secret`.
    pub client_secret: Option<&'a str>,
    /// `client_secret_file`.
    pub client_secret_file: Option<&'a Path>,
    /// `tls`: the role's certificate, key and trust bundle. Set, every call goes over mutual
    /// TLS to the controller's internal listener (`api_url` is then its `https://` address,
    /// e.g. `https://10.0.0.5:9023`), and the server must prove the `cloudcontroller` identity.
    pub tls: Option<&'a hydrant_tls::TlsFiles>,
}

impl<'a> ApiConsumer<'a> {
    /// The block over a role's `api_url`, `token` and `token_file` fields.
    #[must_use]
    pub fn new(
        api_url: &'a str,
        token: Option<&'a String>,
        token_file: Option<&'a PathBuf>,
    ) -> Self {
        Self {
            api_url,
            api_urls: &[],
            token: token.map(String::as_str),
            token_file: token_file.map(PathBuf::as_path),
            client_id: None,
            client_secret: None,
            client_secret_file: None,
            tls: None,
        }
    }

    /// The block over several controllers (`api_urls`, the first one also `api_url`).
    #[must_use]
    pub fn with_urls(mut self, api_urls: &'a [String]) -> Self {
        self.api_urls = api_urls;
        self
    }

    /// The block with the role's `tls` files too.
    #[must_use]
    pub fn with_tls(mut self, tls: Option<&'a hydrant_tls::TlsFiles>) -> Self {
        self.tls = tls;
        self
    }

    /// The block with the role's `client_id`, `client_secret` and `client_secret_file` too.
    #[must_use]
    pub fn with_client(
        mut self,
        client_id: Option<&'a String>,
        client_secret: Option<&'a String>,
        client_secret_file: Option<&'a PathBuf>,
    ) -> Self {
        self.client_id = client_id.map(String::as_str);
        self.client_secret = client_secret.map(String::as_str);
        self.client_secret_file = client_secret_file.map(PathBuf::as_path);
        self
    }

    /// Checks the block. `needs` says what the token must be able to do, for the message when
    /// neither is set (e.g. "an admin token").
    ///
    /// # Errors
    /// A [`ConfigError`] naming `api_url`, `token` or `token_file`.
    pub fn validate(&self, prefix: &str, needs: &str) -> Result<(), ConfigError> {
        let url = self.api_url.trim();
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        if rest.is_none_or(|r| r.is_empty() || r.contains(' ')) {
            return Err(invalid(
                format!("{prefix}api_url"),
                format!(
                    "{:?} is not an http:// URL; write the cloud controller's address, e.g. \
                     \"http://127.0.0.1:9022\"",
                    self.api_url
                ),
            ));
        }
        match self.tls {
            Some(files) => {
                files.validate().map_err(|e| match e {
                    hydrant_tls::Error::Config { field, message } => {
                        invalid(format!("{prefix}{field}"), message)
                    }
                    other => invalid(format!("{prefix}tls"), other.to_string()),
                })?;
                if !url.starts_with("https://") {
                    return Err(invalid(
                        format!("{prefix}api_url"),
                        format!(
                            "{:?}: with tls, write the cloud controller's internal https:// \
                             address (its internal_listen), e.g. \"https://127.0.0.1:9023\"",
                            self.api_url
                        ),
                    ));
                }
            }
            // reqwest is built without TLS: only the mutual-TLS transport speaks https.
            None if url.starts_with("https://") => {
                return Err(invalid(
                    format!("{prefix}tls"),
                    "an https:// api_url is the controller's internal listener: set tls \
                     (ca_file, cert_file, key_file of this role's certificate), or use the \
                     http:// API address",
                ));
            }
            None => {}
        }
        if let Some(id) = self.client_id {
            if self.token.is_some() || self.token_file.is_some() {
                return Err(invalid(
                    format!("{prefix}client_id"),
                    "set client credentials or a token (token/token_file), not both",
                ));
            }
            if id.trim().is_empty() {
                return Err(invalid(
                    format!("{prefix}client_id"),
                    "is empty; write the client id",
                ));
            }
            return match (self.client_secret, self.client_secret_file) {
                (Some(_), Some(_)) | (None, None) => Err(invalid(
                    format!("{prefix}client_secret"),
                    "set exactly one of client_secret or client_secret_file with client_id",
                )),
                (Some(secret), None) if secret.trim().is_empty() => Err(invalid(
                    format!("{prefix}client_secret"),
                    "is empty; write the client's secret",
                )),
                _ => Ok(()),
            };
        }
        if self.client_secret.is_some() || self.client_secret_file.is_some() {
            return Err(invalid(
                format!("{prefix}client_id"),
                "a client secret needs client_id too",
            ));
        }
        match (self.token, self.token_file) {
            (Some(_), Some(_)) => Err(invalid(
                format!("{prefix}token"),
                "set token or token_file, not both (token_file is re-read, so prefer it)",
            )),
            (None, None) => Err(invalid(
                format!("{prefix}token"),
                format!(
                    "this role needs {needs}: set client_id and client_secret_file (OAuth2 \
                     client credentials, renewed automatically), token_file = \"PATH\" (a file \
                     holding a token) or token = \"...\""
                ),
            )),
            (Some(token), None) if token.trim().is_empty() => Err(invalid(
                format!("{prefix}token"),
                format!("is empty; write {needs}"),
            )),
            (None, Some(path)) if path.as_os_str().is_empty() => Err(invalid(
                format!("{prefix}token_file"),
                "is empty; write a path",
            )),
            _ => Ok(()),
        }
    }

    /// The client secret now: inline, or the file's contents (trimmed), read afresh. `None`
    /// when the block has no `client_id` (the role uses [`token`](Self::token) then).
    ///
    /// # Errors
    /// A message naming the file when it cannot be read or is empty; never the secret.
    pub fn client_secret(&self) -> Option<Result<String, String>> {
        self.client_id?;
        if let Some(secret) = self.client_secret {
            return Some(Ok(secret.trim().to_owned()));
        }
        let path = self.client_secret_file.unwrap_or(Path::new(""));
        Some(read_small(path, "client_secret_file"))
    }

    /// The token now: the inline one, or the file's contents (trimmed), read afresh.
    ///
    /// # Errors
    /// A message naming the file when it cannot be read, is larger than
    /// [`MAX_TOKEN_FILE_BYTES`] or is empty; never the token itself.
    pub fn token(&self) -> Result<String, String> {
        if let Some(t) = self.token {
            return Ok(t.trim().to_owned());
        }
        let path = self.token_file.unwrap_or(Path::new(""));
        read_small(path, "token_file")
    }
}

/// A token or secret file's trimmed contents, at most [`MAX_TOKEN_FILE_BYTES`]; errors name
/// `field` and the file, never the contents.
fn read_small(path: &Path, field: &str) -> Result<String, String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {field} {}: {e}", path.display()))?;
    if meta.len() > MAX_TOKEN_FILE_BYTES {
        return Err(format!("{field} {} is larger than 64 KiB", path.display()));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {field} {}: {e}", path.display()))?;
    let value = text.trim().to_owned();
    if value.is_empty() {
        return Err(format!("{field} {} is empty", path.display()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use std::path::PathBuf;

    use super::ApiConsumer;

    fn field_of(api_url: &str, token: Option<&str>, file: Option<&str>) -> Option<String> {
        let token = token.map(str::to_owned);
        let file = file.map(PathBuf::from);
        ApiConsumer::new(api_url, token.as_ref(), file.as_ref())
            .validate("", "an admin token")
            .err()
            .map(|e| e.field)
    }

    #[test]
    fn exactly_one_token_source_and_an_http_url() {
        assert_eq!(field_of("http://127.0.0.1:9022", Some("t"), None), None);
        assert_eq!(
            field_of("https://cc.example", None, Some("/t")).as_deref(),
            Some("tls"),
            "https is the internal listener, which needs the role's certificate"
        );
        assert_eq!(
            field_of("127.0.0.1:9022", Some("t"), None).as_deref(),
            Some("api_url")
        );
        assert_eq!(
            field_of("http://", Some("t"), None).as_deref(),
            Some("api_url")
        );
        assert_eq!(field_of("http://a", None, None).as_deref(), Some("token"));
        assert_eq!(
            field_of("http://a", Some("t"), Some("/t")).as_deref(),
            Some("token")
        );
        assert_eq!(
            field_of("http://a", Some("  "), None).as_deref(),
            Some("token")
        );
        assert_eq!(
            field_of("http://a", None, Some("")).as_deref(),
            Some("token_file")
        );
    }

    #[test]
    fn client_credentials_are_one_way_to_get_a_token() {
        let id = Some("autoscaler".to_owned());
        let secret = Some("s3cret-s3cret-s3cret".to_owned());
        let file = Some(PathBuf::from("/etc/hydrant/autoscaler.secret"));
        let token = Some("t".to_owned());
        let field = |token: Option<&String>, id, secret, file| {
            ApiConsumer::new("http://a", token, None)
                .with_client(id, secret, file)
                .validate("", "an admin token")
                .err()
                .map(|e| e.field)
        };
        assert_eq!(field(None, id.as_ref(), secret.as_ref(), None), None);
        assert_eq!(field(None, id.as_ref(), None, file.as_ref()), None);
        assert_eq!(
            field(None, id.as_ref(), None, None).as_deref(),
            Some("client_secret")
        );
        assert_eq!(
            field(None, id.as_ref(), secret.as_ref(), file.as_ref()).as_deref(),
            Some("client_secret")
        );
        assert_eq!(
            field(token.as_ref(), id.as_ref(), secret.as_ref(), None).as_deref(),
            Some("client_id"),
            "credentials or a token, not both"
        );
        assert_eq!(
            field(None, None, secret.as_ref(), None).as_deref(),
            Some("client_id")
        );
        let api = ApiConsumer::new("http://a", None, None).with_client(
            id.as_ref(),
            secret.as_ref(),
            None,
        );
        assert_eq!(
            api.client_secret().unwrap().unwrap(),
            "s3cret-s3cret-s3cret"
        );
        assert!(
            ApiConsumer::new("http://a", token.as_ref(), None)
                .client_secret()
                .is_none()
        );
    }

    #[test]
    fn the_token_file_is_read_afresh_and_trimmed_and_never_echoed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let file = Some(path.clone());
        let api = ApiConsumer::new("http://a", None, file.as_ref());
        std::fs::write(&path, "first\n").unwrap();
        assert_eq!(api.token().unwrap(), "first");
        std::fs::write(&path, "second").unwrap();
        assert_eq!(api.token().unwrap(), "second");
        std::fs::write(&path, " \n").unwrap();
        let err = api.token().unwrap_err();
        assert!(err.contains("is empty"), "{err}");
        std::fs::write(&path, "secret-value".repeat(10_000)).unwrap();
        let err = api.token().unwrap_err();
        assert!(!err.contains("secret-value"), "{err}");
    }
}
