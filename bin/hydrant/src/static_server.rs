//! `hydrant static-server`: the web server the static buildpack's droplets start
//! (`exec "$HYDRANT_BIN" static-server --dir . --port "$PORT"`).
//!
//! It serves files under one directory and nothing outside it: request paths are decoded,
//! split into components, and any `..`, absolute or hidden-escape component is refused before
//! the file system is touched. Dotfiles and dot-directories (`/.env`, `/.git/config`) are
//! secrets or repository state pushed along with the site, never content: they answer 404,
//! also when a symlink leads to one. `/` and directories serve their `index.html`. Files are
//! streamed in 64 KiB chunks, so a large file costs no more memory than a small one. One
//! access line per request goes to stdout, as an app's would.

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

/// How much of a file one chunk of a streamed response carries.
const CHUNK: usize = 64 * 1024;

/// Where a request path leads.
#[derive(Debug, PartialEq, Eq)]
enum Resolved {
    /// A path under the root (it may not exist).
    Path(PathBuf),
    /// The path tries to leave the root or is not a valid path: 400.
    Bad,
    /// A component is hidden (starts with `.`): 404, as if it were not there.
    Hidden,
}

/// Where a request path leads, decoded, without touching the file system.
fn resolve(root: &Path, request_path: &str) -> Resolved {
    let Some(decoded) = percent_decode(request_path) else {
        return Resolved::Bad;
    };
    let mut path = root.to_path_buf();
    for part in decoded.split('/') {
        match part {
            "" | "." => {}
            ".." => return Resolved::Bad,
            p if p.contains('\\') || p.contains('\0') => return Resolved::Bad,
            p if p.starts_with('.') => return Resolved::Hidden,
            p => path.push(p),
        }
    }
    Resolved::Path(path)
}

/// Whether any component of `path` below `root` is hidden.
fn hidden_below(root: &Path, path: &Path) -> bool {
    path.strip_prefix(root).map_or(true, |rest| {
        rest.components()
            .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
    })
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
    let not_found = || (StatusCode::NOT_FOUND, "not found\n").into_response();
    let mut path = match resolve(root, request_path) {
        Resolved::Path(path) => path,
        Resolved::Bad => return (StatusCode::BAD_REQUEST, "bad path\n").into_response(),
        Resolved::Hidden => return not_found(),
    };
    if tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_dir()) {
        path.push("index.html");
    }
    // Symlinks inside the droplet must not lead outside it, nor to a hidden file, either.
    match tokio::fs::canonicalize(&path).await {
        Ok(real) if real.starts_with(root) && !hidden_below(root, &real) => path = real,
        _ => return not_found(),
    }
    let Ok(file) = tokio::fs::File::open(&path).await else {
        return not_found();
    };
    let Ok(meta) = file.metadata().await else {
        return not_found();
    };
    if !meta.is_file() {
        return not_found();
    }
    let body =
        axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, CHUNK));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&path)),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.len()));
    response
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
            Resolved::Path(PathBuf::from("/srv/app/a/b.html"))
        );
        assert_eq!(
            resolve(root, "/"),
            Resolved::Path(PathBuf::from("/srv/app"))
        );
        assert_eq!(resolve(root, "/../etc/passwd"), Resolved::Bad);
        assert_eq!(resolve(root, "/a/%2e%2e/%2e%2e/etc"), Resolved::Bad);
        assert_eq!(resolve(root, "/a%00b"), Resolved::Bad);
        assert_eq!(resolve(root, "/%zz"), Resolved::Bad);
        assert_eq!(resolve(root, "/.env"), Resolved::Hidden);
        assert_eq!(resolve(root, "/.git/config"), Resolved::Hidden);
        assert_eq!(resolve(root, "/a/%2egit/HEAD"), Resolved::Hidden);
    }

    async fn get(root: &Path, path: &str) -> (StatusCode, Vec<usize>) {
        use futures_util::StreamExt as _;
        let response = serve(root, path).await;
        let status = response.status();
        let mut body = response.into_body().into_data_stream();
        let mut frames = Vec::new();
        while let Some(data) = body.next().await {
            frames.push(data.unwrap().len());
        }
        (status, frames)
    }

    #[tokio::test]
    async fn dotfiles_are_not_found_even_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::write(root.join(".env"), "SECRET=1").unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::write(root.join(".git/config"), "[core]").unwrap();
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::write(root.join("a/.htpasswd"), "u:p").unwrap();
        std::os::unix::fs::symlink(root.join(".env"), root.join("env.txt")).unwrap();
        std::fs::write(root.join("index.html"), "<h1>hi</h1>").unwrap();
        for path in [
            "/.env",
            "/.git/config",
            "/.git/",
            "/a/.htpasswd",
            "/env.txt",
        ] {
            assert_eq!(get(&root, path).await.0, StatusCode::NOT_FOUND, "{path}");
        }
        let (status, frames) = get(&root, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(frames.iter().sum::<usize>(), "<h1>hi</h1>".len());
    }

    #[tokio::test]
    async fn large_files_stream_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let size = 5 * 1024 * 1024 + 7;
        std::fs::write(root.join("big.bin"), vec![7u8; size]).unwrap();
        let response = serve(&root, "/big.bin").await;
        assert_eq!(
            response.headers()[header::CONTENT_LENGTH],
            size.to_string().as_str()
        );
        let (status, frames) = get(&root, "/big.bin").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(frames.iter().sum::<usize>(), size);
        assert!(
            frames.iter().all(|&n| n <= CHUNK) && frames.len() > 1,
            "the file arrives in chunks of at most {CHUNK} bytes, not whole: {} frames",
            frames.len()
        );
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
