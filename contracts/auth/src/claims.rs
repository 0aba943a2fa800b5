//! What a token says: its issuer, subject, audiences, scopes and lifetime (the JWT claims UAA
//! uses), and the access decisions those imply.
//!
//! Access is decided from the claims alone, with no lookup, so the decision is the same whether
//! or not the cloud controller is reachable. Scopes are plain strings so that an older verifier
//! reading a newer token simply ignores scopes it does not know (they grant nothing), rather
//! than rejecting the token. The audience says which service a token is for: a verifier checks
//! it before any scope ([`crate::KeySet::verify`] takes the audience as an argument), so a log
//! token is never an API credential however its scopes read.

use serde::{Deserialize, Serialize};

/// Full administrative access; implies every read.
pub const SCOPE_ADMIN: &str = "admin";
/// Read every envelope of every source (the firehose, and any one source).
pub const SCOPE_FIREHOSE: &str = "firehose";
/// Read through the cloud controller's API (UAA's name).
pub const SCOPE_API_READ: &str = "cloud_controller.read";
/// Change things through the cloud controller's API (UAA's name).
pub const SCOPE_API_WRITE: &str = "cloud_controller.write";

/// The audience of a token for the cloud controller's REST API.
pub const AUD_API: &str = "hydrant-api";
/// The audience of a token for the firehose edge (streams, SSE, recent reads).
pub const AUD_LOGS: &str = "hydrant-logs";
/// The audience of a refresh token: only the token endpoint accepts it.
pub const AUD_REFRESH: &str = "hydrant-refresh";
/// The audience of a droplet download token: only the droplet endpoint accepts it.
pub const AUD_DROPLET: &str = "hydrant-droplet";

/// Lifetime [`Claims::new`] gives a token until [`Claims::expires_in`] says otherwise: every
/// token expires.
pub const DEFAULT_TTL_SECS: i64 = 3600;

const APP_PREFIX: &str = "app:";
const APP_READ_SUFFIX: &str = ":read";
const SPACE_PREFIX: &str = "space:";

/// One scope string, parsed. Borrowed from the claims it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// `admin`.
    Admin,
    /// `firehose`.
    Firehose,
    /// `app:<source_id>:read`: read one source's logs and metrics.
    AppRead(&'a str),
    /// `space:<space_id>:<role>` (developer, auditor, manager). Carried for the cloud
    /// controller's own checks; it grants no stream access by itself, because mapping a space to
    /// its apps needs the cloud controller. The issuer expands the apps a space role may read
    /// into [`Scope::AppRead`] scopes when it mints the token.
    SpaceRole {
        /// The space's id.
        space: &'a str,
        /// The role in that space.
        role: &'a str,
    },
    /// Anything else: kept, never grants access here.
    Other(&'a str),
}

impl<'a> Scope<'a> {
    /// Parses one scope string. Never fails: unknown shapes are [`Scope::Other`].
    #[must_use]
    pub fn parse(scope: &'a str) -> Self {
        if scope == SCOPE_ADMIN {
            return Scope::Admin;
        }
        if scope == SCOPE_FIREHOSE {
            return Scope::Firehose;
        }
        // Source ids may themselves contain ':', so the id is everything between the fixed
        // prefix and the fixed suffix.
        if let Some(id) = scope
            .strip_prefix(APP_PREFIX)
            .and_then(|rest| rest.strip_suffix(APP_READ_SUFFIX))
            .filter(|id| !id.is_empty())
        {
            return Scope::AppRead(id);
        }
        if let Some((space, role)) = scope
            .strip_prefix(SPACE_PREFIX)
            .and_then(|rest| rest.rsplit_once(':'))
            .filter(|(space, role)| !space.is_empty() && !role.is_empty())
        {
            return Scope::SpaceRole { space, role };
        }
        Scope::Other(scope)
    }

    /// The scope string that lets a token read one source: `app:<source_id>:read`.
    #[must_use]
    pub fn app_read(source_id: &str) -> String {
        format!("{APP_PREFIX}{source_id}{APP_READ_SUFFIX}")
    }
}

/// The signed content of a token: a JWT claims set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who issued it (the cloud controller's URL). Informational: trust comes from the key.
    #[serde(default)]
    pub iss: String,
    /// Who the token was issued to (a user name, or `client:<id>`).
    pub sub: String,
    /// The services it is for ([`AUD_API`], [`AUD_LOGS`], ...). JWT allows a string or an
    /// array; both are read, an array is written.
    #[serde(default, deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    /// What the token may do; see [`Scope`]. Written as `scope`, UAA's claim name.
    #[serde(rename = "scope", default)]
    pub scopes: Vec<String>,
    /// Expiry, UNIX seconds. A token without one is refused.
    #[serde(default)]
    pub exp: i64,
    /// Issue time, UNIX seconds.
    #[serde(default)]
    pub iat: i64,
    /// A unique id for this token, so an issuer can log and later deny-list it; filled in at
    /// issue when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Set on tokens minted for an OAuth2 client (`client_credentials`) rather than a user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

impl Claims {
    /// Claims for `sub`, issued now, with no audience, no scopes and an expiry
    /// [`DEFAULT_TTL_SECS`] away. A token with no audience verifies nowhere, so every issuer
    /// says who the token is for with [`for_audience`](Self::for_audience).
    #[must_use]
    pub fn new(sub: impl Into<String>) -> Self {
        let iat = crate::now_secs();
        Self {
            iss: String::new(),
            sub: sub.into(),
            aud: Vec::new(),
            scopes: Vec::new(),
            exp: iat.saturating_add(DEFAULT_TTL_SECS),
            iat,
            jti: None,
            client_id: None,
        }
    }

    /// Adds one scope.
    #[must_use]
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.push(scope.into());
        self
    }

    /// Adds one audience.
    #[must_use]
    pub fn for_audience(mut self, audience: impl Into<String>) -> Self {
        self.aud.push(audience.into());
        self
    }

    /// True when the token is meant for `audience`.
    #[must_use]
    pub fn has_audience(&self, audience: &str) -> bool {
        self.aud.iter().any(|a| a == audience)
    }

    /// True when the token carries exactly `scope`.
    #[must_use]
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// Sets the expiry to `secs` after the issue time.
    #[must_use]
    pub fn expires_in(mut self, secs: i64) -> Self {
        self.exp = self.iat.saturating_add(secs);
        self
    }

    /// Every scope, parsed.
    pub fn parsed_scopes(&self) -> impl Iterator<Item = Scope<'_>> + '_ {
        self.scopes.iter().map(|s| Scope::parse(s))
    }

    /// True when the token carries `admin`.
    #[must_use]
    pub fn is_admin(&self) -> bool {
        self.parsed_scopes().any(|s| s == Scope::Admin)
    }

    /// True when the token may read every envelope: `admin` or `firehose`.
    #[must_use]
    pub fn can_read_firehose(&self) -> bool {
        self.parsed_scopes()
            .any(|s| matches!(s, Scope::Admin | Scope::Firehose))
    }

    /// True when the token may read `source_id`'s logs and metrics: the firehose scopes, or
    /// `app:<source_id>:read`.
    #[must_use]
    pub fn can_read_source(&self, source_id: &str) -> bool {
        if source_id.is_empty() {
            return false;
        }
        self.parsed_scopes().any(|s| match s {
            Scope::Admin | Scope::Firehose => true,
            Scope::AppRead(id) => id == source_id,
            Scope::SpaceRole { .. } | Scope::Other(_) => false,
        })
    }

    /// The sources named by `app:<id>:read` scopes (what a non-firehose token may list).
    pub fn readable_sources(&self) -> impl Iterator<Item = &str> + '_ {
        self.parsed_scopes().filter_map(|s| match s {
            Scope::AppRead(id) => Some(id),
            _ => None,
        })
    }

    /// True when the token has expired at `now` (UNIX seconds). A token without an expiry
    /// (`exp` 0 or negative) counts as expired: every token must end.
    #[must_use]
    pub fn is_expired_at(&self, now: i64) -> bool {
        self.exp <= 0 || now >= self.exp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse() {
        assert_eq!(Scope::parse("admin"), Scope::Admin);
        assert_eq!(Scope::parse("firehose"), Scope::Firehose);
        assert_eq!(Scope::parse("app:web:read"), Scope::AppRead("web"));
        assert_eq!(Scope::parse("app:a:b:read"), Scope::AppRead("a:b"));
        assert_eq!(Scope::parse("app::read"), Scope::Other("app::read"));
        assert_eq!(
            Scope::parse("space:s1:developer"),
            Scope::SpaceRole {
                space: "s1",
                role: "developer"
            }
        );
        assert_eq!(Scope::parse("Admin"), Scope::Other("Admin"));
        assert_eq!(Scope::app_read("web"), "app:web:read");
    }

    #[test]
    fn firehose_scopes_read_everything() {
        let admin = Claims::new("a").with_scope(SCOPE_ADMIN);
        let hose = Claims::new("n").with_scope(SCOPE_FIREHOSE);
        for c in [&admin, &hose] {
            assert!(c.can_read_firehose());
            assert!(c.can_read_source("any-app"));
        }
        assert!(admin.is_admin());
        assert!(!hose.is_admin());
    }

    #[test]
    fn app_scope_reads_only_its_source() {
        let dev = Claims::new("dev")
            .with_scope(Scope::app_read("web"))
            .with_scope("space:s1:developer");
        assert!(!dev.can_read_firehose());
        assert!(dev.can_read_source("web"));
        assert!(!dev.can_read_source("worker"));
        assert!(!dev.can_read_source("we"));
        assert!(!dev.can_read_source(""));
        assert_eq!(dev.readable_sources().collect::<Vec<_>>(), vec!["web"]);
    }

    #[test]
    fn expiry() {
        let mut c = Claims::new("x");
        c.exp = 0;
        assert!(c.is_expired_at(0), "a token without exp is refused");
        c.exp = 100;
        assert!(!c.is_expired_at(99));
        assert!(c.is_expired_at(100));
        let c = Claims::new("y").expires_in(60);
        assert_eq!(c.exp, c.iat + 60);
        let d = Claims::new("z");
        assert_eq!(d.exp, d.iat + DEFAULT_TTL_SECS, "expiry is the default");
    }

    #[test]
    fn audience_reads_as_a_string_or_an_array() {
        let one: Claims = serde_json::from_str(r#"{"sub":"a","aud":"hydrant-api"}"#).unwrap();
        assert!(one.has_audience(AUD_API));
        let many: Claims = serde_json::from_str(
            r#"{"sub":"a","aud":["hydrant-api","hydrant-logs"],"scope":["admin"]}"#,
        )
        .unwrap();
        assert!(many.has_audience(AUD_LOGS) && many.is_admin());
        assert!(!many.has_audience(AUD_REFRESH));
        let text = serde_json::to_string(&Claims::new("b").for_audience(AUD_LOGS)).unwrap();
        assert!(text.contains(r#""aud":["hydrant-logs"]"#), "{text}");
        assert!(text.contains(r#""scope":[]"#), "{text}");
    }
}
