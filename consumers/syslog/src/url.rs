//! Drain URLs: the three schemes Cloud Foundry's syslog agent accepts, split into the parts
//! the transports need.
//!
//! Flow: config `drains[i]` or a platform binding → [`DrainUrl::parse`] → the dialer (host,
//! port), the TLS handshake (host as the name the certificate must carry) and, for `https://`,
//! the request line (path and query) and basic credentials.
//!
//! Invariant: no error made here shows a credential; the URL is always quoted through
//! [`mask_url`], and parsing never allocates more than the URL's own length.

use hydrant_nozzle_core::mask_url;

use crate::Error;

/// How a drain is written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `syslog://`: TCP with RFC 6587 octet counting.
    Syslog,
    /// `syslog-tls://`: the same frames inside TLS.
    SyslogTls,
    /// `https://`: batches of newline-terminated messages in POST bodies.
    Https,
}

impl Scheme {
    /// The URL prefix, e.g. `syslog-tls://`.
    #[must_use]
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Syslog => "syslog://",
            Self::SyslogTls => "syslog-tls://",
            Self::Https => "https://",
        }
    }

    /// Whether the connection is TLS.
    #[must_use]
    pub fn is_tls(self) -> bool {
        !matches!(self, Self::Syslog)
    }
}

/// A drain URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainUrl {
    /// The scheme.
    pub scheme: Scheme,
    /// Host name or IP literal, without IPv6 brackets.
    pub host: String,
    /// Port (`https://` defaults to 443; the syslog schemes need one).
    pub port: u16,
    /// `https://` only: the path and query sent in the request line (`/` when empty).
    pub path_and_query: String,
    /// `user:password` (or a bare token) before the `@`, if any: `https://` sends it as basic
    /// credentials.
    pub userinfo: Option<String>,
}

impl DrainUrl {
    /// Parses `url`; `field` names it in errors (`drains[2]`, `binding 5f0c…`).
    ///
    /// # Errors
    /// A config error ([`Error::Core`]) for an unknown scheme, a missing host, a bad port or a
    /// character that has no place in a URL; the message shows the URL masked and how to write it.
    pub fn parse(field: &str, url: &str) -> Result<Self, Error> {
        // The URL is shown masked, and with control characters replaced: it may come from a
        // developer's binding and end up on an operator's terminal.
        let shown: String = mask_url(url)
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        let bad = |why: &str| {
            Error::config(
                field.to_owned(),
                format!(
                    "{shown} {why}; write it as \"syslog://HOST:PORT\", \"syslog-tls://HOST:PORT\" \
                 or \"https://HOST[:PORT]/PATH\""
                ),
            )
        };
        let (scheme, rest) = [Scheme::Syslog, Scheme::SyslogTls, Scheme::Https]
            .into_iter()
            .find_map(|s| url.strip_prefix(s.prefix()).map(|rest| (s, rest)))
            .ok_or_else(|| bad("has a scheme this nozzle does not speak"))?;
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("contains whitespace or control characters"));
        }
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_owned()), h),
            None => (None, authority),
        };
        let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("has an unclosed '['"))?;
            (host, after.strip_prefix(':'))
        } else {
            match host_port.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (host_port, None),
            }
        };
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        if host.contains(['[', ']', '@', ':']) && !host_port.starts_with('[') {
            return Err(bad("has a malformed host"));
        }
        let port = match (port, scheme) {
            (Some(p), _) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(bad("has an invalid port")),
            },
            (None, Scheme::Https) => 443,
            (None, _) => return Err(bad("has no port")),
        };
        let tail = tail.split('#').next().unwrap_or("");
        let path_and_query = if tail.starts_with('/') {
            tail.to_owned()
        } else {
            format!("/{tail}")
        };
        Ok(Self {
            scheme,
            host: host.to_owned(),
            port,
            path_and_query,
            userinfo,
        })
    }

    /// `host:port` as a resolver takes it (IPv6 literals bracketed).
    #[must_use]
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The `host:port` of a `syslog://`, `syslog-tls://` or `https://` URL (credentials, path and
/// query ignored).
///
/// # Errors
/// As [`DrainUrl::parse`].
pub fn parse_syslog_url(field: &str, url: &str) -> Result<String, Error> {
    DrainUrl::parse(field, url).map(|u| u.authority())
}

#[cfg(test)]
mod tests {
    use super::{DrainUrl, Scheme, parse_syslog_url};

    #[test]
    fn parses_every_scheme() {
        assert_eq!(
            parse_syslog_url("drains[0]", "syslog://u:p@127.0.0.1:514").unwrap(),
            "127.0.0.1:514"
        );
        assert_eq!(
            parse_syslog_url("drains[0]", "syslog://logs.example.com:6514/?x=1").unwrap(),
            "logs.example.com:6514"
        );
        let tls = DrainUrl::parse("d", "syslog-tls://logs.example.com:6514").unwrap();
        assert_eq!(tls.scheme, Scheme::SyslogTls);
        assert_eq!(tls.host, "logs.example.com");
        let https = DrainUrl::parse("d", "https://tok@[::1]/drain?a=b#frag").unwrap();
        assert_eq!(https.scheme, Scheme::Https);
        assert_eq!((https.host.as_str(), https.port), ("::1", 443));
        assert_eq!(https.authority(), "[::1]:443");
        assert_eq!(https.path_and_query, "/drain?a=b");
        assert_eq!(https.userinfo.as_deref(), Some("tok"));
        let bare = DrainUrl::parse("d", "https://h:8443").unwrap();
        assert_eq!((bare.port, bare.path_and_query.as_str()), (8443, "/"));
    }

    #[test]
    fn rejects_malformed_urls_without_leaking_credentials() {
        for bad in [
            "syslog-udp://h:1",
            "http://u:secret@h:1",
            "syslog://u:secret@h",
            "syslog://u:secret@h:0",
            "syslog://u:secret@h:99999",
            "syslog://:514",
            "syslog-tls://u:secret@[::1:514",
            "syslog://u:secret@h :514",
            "https://u:secret@",
            "syslog://u:secret@h:514/\u{1b}[2J",
        ] {
            let e = DrainUrl::parse("drains[1]", bad).unwrap_err().to_string();
            assert!(e.contains("drains[1]") && !e.contains("secret"), "{e}");
            assert!(!e.contains('\u{1b}'), "{e:?}");
        }
    }
}
