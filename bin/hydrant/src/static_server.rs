//! `hydrant static-server`: the web server the static buildpack's droplets start
//! (`exec "$HYDRANT_BIN" static-server --dir . --port "$PORT"`).
//!
//! It serves files under one directory and nothing outside it: request paths are decoded,
//! split into components, and any `..`, absolute or hidden-escape component is refused before
//! the file system is touched. `/` and directories serve their `index.html`. One access line per
//! request goes to stdout, as an app's would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Arguments of `hydrant static-server`.
#[derive(Debug, clap::Args)]
pub struct StaticServerArgs {
    /// The directory to serve.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Port to listen on; the platform sets `PORT`.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    port: u16,
    /// Address to bind; the platform sets `VCAP_APP_HOST` (`0.0.0.0`: in a container the app
    /// is reached on its own address).
    #[arg(long, env = "VCAP_APP_HOST", default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
}

pub async fn run(args: StaticServerArgs) -> anyhow::Result<ExitCode> {
    let root = args
        .dir
        .canonicalize()
        .with_context(|| format!("cannot serve {}: no such directory", args.dir.display()))?;
    let addr = SocketAddr::new(args.bind, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    println!("static server serving {} on {addr}", root.display());
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let root = root.clone();
        async move {
            let path = request.uri().path().to_owned();
            let response = serve(&root, &path).await;
            println!("{} {path} {}", request.method(), response.status().as_u16());
            response
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            if let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                term.recv().await;
            }
        })
        .await
        .context("the static server failed")?;
    Ok(ExitCode::SUCCESS)
}

/// The file for a request path, or `None` when the path tries to leave the root.
fn resolve(root: &Path, request_path: &str) -> Option<PathBuf> {
    let decoded = percent_decode(request_path)?;
    let mut path = root.to_path_buf();
    for part in decoded.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            p if p.contains('\\') || p.contains('\0') => return None,
            p => path.push(p),
        }
    }
    Some(path)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

async fn serve(root: &Path, request_path: &str) -> Response {
    let Some(mut path) = resolve(root, request_path) else {
        return (StatusCode::BAD_REQUEST, "bad path\n").into_response();
    };
    if tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_dir()) {
        path.push("index.html");
    }
    // Symlinks inside the droplet must not lead outside it either.
    match tokio::fs::canonicalize(&path).await {
        Ok(real) if real.starts_with(root) => path = real,
        _ => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
    match tokio::fs::read(&path).await {
        Ok(body) => {
            let mut response = body.into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(content_type(&path)),
            );
            response
        }
        Err(_) => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_leave_the_root() {
        let root = Path::new("/srv/app");
        assert_eq!(
            resolve(root, "/a/b.html"),
            Some(PathBuf::from("/srv/app/a/b.html"))
        );
        assert_eq!(resolve(root, "/"), Some(PathBuf::from("/srv/app")));
        assert_eq!(resolve(root, "/../etc/passwd"), None);
        assert_eq!(resolve(root, "/a/%2e%2e/%2e%2e/etc"), None);
        assert_eq!(resolve(root, "/a%00b"), None);
        assert_eq!(resolve(root, "/%zz"), None);
    }

    #[test]
    fn known_types() {
        assert_eq!(
            content_type(Path::new("x/index.html")),
            "text/html; charset=utf-8"
        );
        assert_eq!(
            content_type(Path::new("x/blob")),
            "application/octet-stream"
        );
    }
}
