//! Config plumbing shared by every role: reading the TOML file, the config-field error every
//! `validate()` reports, and the API-consumer block (`api_url` + `token`/`token_file`) of the
//! roles that call the cloud controller.
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
/// of an inline token or a file holding it (re-read on every use, so whoever renews the token
/// only rewrites the file). A view over the role's own fields, which keep their names in its
/// config.
#[derive(Debug, Clone, Copy)]
pub struct ApiConsumer<'a> {
    /// `api_url`: the cloud controller, `http(s)://HOST:PORT`.
    pub api_url: &'a str,
    /// `token`.
    pub token: Option<&'a str>,
    /// `token_file`.
    pub token_file: Option<&'a Path>,
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
            token: token.map(String::as_str),
            token_file: token_file.map(PathBuf::as_path),
        }
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
        match (self.token, self.token_file) {
            (Some(_), Some(_)) => Err(invalid(
                format!("{prefix}token"),
                "set token or token_file, not both (token_file is re-read, so prefer it)",
            )),
            (None, None) => Err(invalid(
                format!("{prefix}token"),
                format!(
                    "this role needs {needs}: set token_file = \"PATH\" (a file holding it) or \
                     token = \"...\""
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
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("cannot read token_file {}: {e}", path.display()))?;
        if meta.len() > MAX_TOKEN_FILE_BYTES {
            return Err(format!(
                "token_file {} is larger than 64 KiB",
                path.display()
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read token_file {}: {e}", path.display()))?;
        let token = text.trim().to_owned();
        if token.is_empty() {
            return Err(format!("token_file {} is empty", path.display()));
        }
        Ok(token)
    }
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
        assert_eq!(field_of("https://cc.example", None, Some("/t")), None);
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
