//! The dashboard's routes over a real socket: each file with its content type and the strict
//! Content-Security-Policy, and the files themselves keep to what that policy allows (no
//! inline code, nothing from another origin, no markup built from strings).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use hydrant_dashboard::{APP_CSS, APP_JS, INDEX_HTML};

/// Serves the dashboard (as the cloud controller mounts it) on a free loopback port.
async fn serve(firehose: Option<&str>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app: axum::Router = hydrant_dashboard::router(firehose);
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn header<'a>(res: &'a reqwest::Response, name: &str) -> &'a str {
    res.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn serves_page_script_and_style_with_their_types_and_the_policy() {
    let base = serve(Some("http://127.0.0.1:8081")).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (path, content_type, body) in [
        ("/dashboard", "text/html; charset=utf-8", INDEX_HTML),
        (
            "/dashboard/app.js",
            "text/javascript; charset=utf-8",
            APP_JS,
        ),
        ("/dashboard/app.css", "text/css; charset=utf-8", APP_CSS),
    ] {
        let res = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(header(&res, "content-type"), content_type, "{path}");
        let csp = header(&res, "content-security-policy").to_owned();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
            "form-action 'none'",
            "base-uri 'none'",
            "connect-src 'self' ws://127.0.0.1:8081",
        ] {
            assert!(
                csp.split(';').any(|d| d.trim() == directive),
                "{path}: {directive:?} missing from {csp:?}"
            );
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(header(&res, "x-content-type-options"), "nosniff");
        assert_eq!(header(&res, "referrer-policy"), "no-referrer");
        assert_eq!(res.text().await.unwrap(), body, "{path}");
    }

    let res = client
        .get(format!("{base}/dashboard/"))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_redirection());
    assert_eq!(header(&res, "location"), "/dashboard");
    let res = client
        .get(format!("{base}/dashboard/other.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn without_a_firehose_url_the_page_may_reach_only_its_origin() {
    let base = serve(None).await;
    let res = reqwest::get(format!("{base}/dashboard")).await.unwrap();
    let csp = header(&res, "content-security-policy");
    assert!(
        csp.split(';').any(|d| d.trim() == "connect-src 'self'"),
        "{csp}"
    );
}

#[test]
fn the_page_loads_only_its_own_script_and_style() {
    // Every src/href is one of the two files, on this origin.
    let mut refs = Vec::new();
    for attr in ["src=\"", "href=\""] {
        let mut rest = INDEX_HTML;
        while let Some(i) = rest.find(attr) {
            rest = &rest[i + attr.len()..];
            let end = rest.find('"').unwrap();
            refs.push(&rest[..end]);
        }
    }
    refs.sort_unstable();
    assert_eq!(refs, ["/dashboard/app.css", "/dashboard/app.js"]);
    // The policy blocks inline code; none must be needed.
    let lower = INDEX_HTML.to_ascii_lowercase();
    assert_eq!(
        lower.matches("<script").count(),
        1,
        "one external script only"
    );
    assert!(lower.contains("<script src=\"/dashboard/app.js\" defer></script>"));
    for inline in [
        " style=",
        " onclick",
        " onload",
        " onsubmit",
        "javascript:",
        "<style",
    ] {
        assert!(!lower.contains(inline), "index.html has inline {inline:?}");
    }
}

#[test]
fn the_script_never_turns_data_into_markup_or_code() {
    for banned in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "setTimeout('",
        "setInterval('",
    ] {
        assert!(!APP_JS.contains(banned), "app.js uses {banned}");
    }
    // Nothing fetched from anywhere but the API's origin and the firehose edge.
    assert!(!APP_JS.contains("http://") && !APP_JS.contains("https://"));
    assert!(!APP_CSS.contains("url("), "app.css loads nothing");
}
