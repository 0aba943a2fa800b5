//! The web dashboard: one static page (HTML, JS, CSS, compiled into the binary) that the cloud
//! controller serves at `/dashboard`, and the Grafana dashboard for the OTLP nozzle's metrics
//! (`grafana/hydrant.json`, shipped as a file beside this crate).
//!
//! Flow: a browser loads `/dashboard` from the API's origin, takes the token from the URL
//! fragment (never sent to a server) or a paste box, calls the API with it (`/v3/info`,
//! `/v3/apps`, process stats, SLOs) and opens the firehose (`/firehose/{id}?format=json`) or,
//! for a developer, per-app streams over WebSocket; every number it shows is computed in the
//! page from those envelopes.
//!
//! Invariants: the page runs nothing it did not get from these three files. The
//! Content-Security-Policy allows scripts and styles from this origin only, no inline code,
//! no frames, no forms, and network connections only to this origin and the firehose edge's
//! WebSocket origin; the script writes payload text with `textContent` only.

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// Where the page lives on the API's origin.
pub const PATH: &str = "/dashboard";

/// The page.
pub const INDEX_HTML: &str = include_str!("../web/index.html");
/// Its only script.
pub const APP_JS: &str = include_str!("../web/app.js");
/// Its only stylesheet.
pub const APP_CSS: &str = include_str!("../web/app.css");

/// The policy when the firehose's origin is unknown: the page may then reach only the API.
const CSP_BASE: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                        base-uri 'none'; form-action 'none'; frame-ancestors 'none'; \
                        connect-src 'self'";

/// The dashboard's routes, mergeable into any router (they use no state).
///
/// `firehose_url` is the firehose edge's public base URL as the API's `/v3/info` lists it
/// (`http://host:port` or `https://...`); the policy allows WebSockets to exactly that origin.
/// Without it, or when it is not an `http(s)://` URL, the page can reach only its own origin
/// and says so when the firehose connection is refused.
pub fn router<S>(firehose_url: Option<&str>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let csp = content_security_policy(firehose_url);
    let page = move |content_type: &'static str, body: &'static str| {
        let csp = csp.clone();
        move || {
            let csp = csp.clone();
            async move { static_file(content_type, body, csp) }
        }
    };
    Router::new()
        .route(PATH, get(page("text/html; charset=utf-8", INDEX_HTML)))
        .route("/dashboard/", get(|| async { Redirect::permanent(PATH) }))
        .route(
            "/dashboard/app.js",
            get(page("text/javascript; charset=utf-8", APP_JS)),
        )
        .route(
            "/dashboard/app.css",
            get(page("text/css; charset=utf-8", APP_CSS)),
        )
}

/// The policy for the page, allowing `connect-src` to the firehose's WebSocket origin.
#[must_use]
pub fn content_security_policy(firehose_url: Option<&str>) -> HeaderValue {
    let policy = match firehose_url.and_then(websocket_origin) {
        Some(origin) => format!("{CSP_BASE} {origin}"),
        None => CSP_BASE.to_owned(),
    };
    // Only origins made of URL-safe bytes get this far, so the value is always a valid header.
    HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static(CSP_BASE))
}

/// `ws://host:port` for `http://host:port/...`, `wss://...` for `https://...`; `None` for
/// anything else, or an authority with bytes a policy cannot carry (spaces, quotes, `;`).
#[must_use]
pub fn websocket_origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.trim().split_once("://")?;
    let ws = match scheme.to_ascii_lowercase().as_str() {
        "http" => "ws",
        "https" => "wss",
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // A user:password@ part has no place in a policy (and would leak a credential).
    let authority = authority.rsplit('@').next().unwrap_or_default();
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
    if authority.is_empty() || !authority.chars().all(allowed) {
        return None;
    }
    Some(format!("{ws}://{}", authority.to_ascii_lowercase()))
}

fn static_file(content_type: &'static str, body: &'static str, csp: HeaderValue) -> Response {
    let headers: [(HeaderName, HeaderValue); 6] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CONTENT_SECURITY_POLICY, csp),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        // The files change with the binary; revalidating is cheap and never serves a page
        // with a script from an older build.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (headers, body).into_response()
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]
mod tests {
    use super::*;

    #[test]
    fn websocket_origins() {
        let o = |u| websocket_origin(u);
        assert_eq!(
            o("http://127.0.0.1:8081").as_deref(),
            Some("ws://127.0.0.1:8081")
        );
        assert_eq!(
            o("HTTPS://Firehose.Example.com/base?x#y").as_deref(),
            Some("wss://firehose.example.com")
        );
        assert_eq!(o("http://[::1]:8081/").as_deref(), Some("ws://[::1]:8081"));
        assert_eq!(
            o("http://user:secret@edge:1").as_deref(),
            Some("ws://edge:1")
        );
        assert_eq!(o("ftp://edge"), None);
        assert_eq!(o("edge:8081"), None);
        assert_eq!(o("http://"), None);
        assert_eq!(o("http://edge; script-src *"), None);
        assert_eq!(o("http://'unsafe-inline'"), None);
    }

    #[test]
    fn the_policy_names_the_firehose_origin_only_when_it_is_clean() {
        let csp = content_security_policy(Some("http://127.0.0.1:8081"));
        let csp = csp.to_str().unwrap();
        assert!(
            csp.ends_with("connect-src 'self' ws://127.0.0.1:8081"),
            "{csp}"
        );
        assert_eq!(content_security_policy(None).to_str().unwrap(), CSP_BASE);
        assert_eq!(
            content_security_policy(Some("http://a b"))
                .to_str()
                .unwrap(),
            CSP_BASE
        );
    }
}
