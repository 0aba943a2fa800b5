//! Credential masking for destination URLs: the one function every log line, metric tag,
//! error and loss notice that names a destination goes through.
//!
//! Invariant: a password in `scheme://user:password@host` never survives; the user name stays
//! so an operator can still tell two drains apart. Query strings can carry tokens too
//! (`?api_key=`), so their values are masked as well.

/// Replaces the password of `scheme://user:pass@host/...` (and every query value) with `****`.
///
/// Works on any text, valid URL or not, so a malformed drain URL can still be reported:
/// `syslog://user:pass@host:514` → `syslog://user:****@host:514`.
#[must_use]
pub fn mask_url(url: &str) -> String {
    let (before_query, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = String::with_capacity(url.len() + 8);
    let (scheme, rest) = match before_query.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, before_query),
    };
    let Some(scheme) = scheme else {
        // Not a URL: a `user:password@` may still be in it (`syslog:/u:p@h`), after the last
        // `/` before the `@`.
        match before_query.rfind('@') {
            Some(at) => {
                let start = before_query[..at].rfind('/').map_or(0, |i| i + 1);
                out.push_str(&before_query[..start]);
                match before_query[start..at].split_once(':') {
                    Some((user, _password)) => {
                        out.push_str(user);
                        out.push_str(":****");
                    }
                    None => out.push_str(&before_query[start..at]),
                }
                out.push_str(&before_query[at..]);
            }
            None => out.push_str(before_query),
        }
        push_query(&mut out, query);
        return out;
    };
    out.push_str(scheme);
    out.push_str("://");
    // The userinfo ends at the last '@' before the path: passwords may contain '@'.
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push_str(":****");
                }
                // A bare user part is often a token on its own (https://TOKEN@host).
                None => out.push_str("****"),
            }
            out.push_str(host);
        }
        None => out.push_str(authority),
    }
    out.push_str(path);
    push_query(&mut out, query);
    out
}

/// Appends `?query` with every value masked.
fn push_query(out: &mut String, query: Option<&str>) {
    if let Some(query) = query {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((k, _)) => {
                    out.push_str(k);
                    out.push_str("=****");
                }
                None => out.push_str(pair),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::mask_url;

    #[test]
    fn masks_password_keeps_user() {
        assert_eq!(
            mask_url("syslog://user:pass@host:514"),
            "syslog://user:****@host:514"
        );
        assert_eq!(
            mask_url("syslog-tls://u:p@ss@logs.example.com:6514/x"),
            "syslog-tls://u:****@logs.example.com:6514/x"
        );
    }

    #[test]
    fn masks_bare_token_and_query_values() {
        assert_eq!(
            mask_url("https://TOKEN@host/drain?api_key=s3cret&x"),
            "https://****@host/drain?api_key=****&x"
        );
    }

    #[test]
    fn leaves_urls_without_credentials_alone() {
        assert_eq!(mask_url("syslog://127.0.0.1:514"), "syslog://127.0.0.1:514");
        assert_eq!(mask_url("not a url"), "not a url");
    }

    #[test]
    fn masks_credentials_in_malformed_urls() {
        assert_eq!(
            mask_url("syslog:/u:secret@host:514"),
            "syslog:/u:****@host:514"
        );
        assert_eq!(mask_url("u:secret@host"), "u:****@host");
        assert_eq!(mask_url("u@host?k=v"), "u@host?k=****");
    }
}
