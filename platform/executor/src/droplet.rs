//! Droplets: fetched once per sha256 into a bounded cache, then unpacked into each instance's
//! own directory.
//!
//! Flow: `StartInstance.droplet_url` → [`DropletCache::fetch`] (cache hit, or a streamed
//! download that is hashed as it lands and renamed into place only when the hash matches) →
//! [`unpack`] (tar.gz → `<instance>/app`).
//!
//! Invariants: a cached file is always a complete droplet whose name is its sha256; the cache
//! never holds more than its size in droplets that are not being unpacked right now; no archive
//! entry lands outside the instance directory, and an archive never unpacks to more than the
//! instance's disk quota.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hydrant_emitter::{Counter, Gauge};
use sha2::{Digest, Sha256};

use crate::Error;

/// Entries an archive may hold at most; past this it is refused (a tree of empty files can
/// exhaust inodes without touching the byte quota).
const MAX_ENTRIES: usize = 200_000;

/// Cache counters.
#[derive(Debug, Clone)]
pub(crate) struct CacheMetrics {
    pub(crate) hits: Counter,
    pub(crate) misses: Counter,
    pub(crate) evictions: Counter,
    pub(crate) bytes: Gauge,
}

#[derive(Debug)]
struct Entry {
    size: u64,
    last_used: SystemTime,
    in_use: usize,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<String, Entry>,
    total: u64,
}

/// The droplet cache under `<data_dir>/droplets`.
#[derive(Debug, Clone)]
pub(crate) struct DropletCache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    max_bytes: u64,
    max_droplet_bytes: u64,
    client: reqwest::Client,
    /// Mutual TLS for `https://` URLs (the controller's internal listener), with `tls` set.
    mtls: Option<hydrant_runtime::MtlsTransport>,
    download_timeout: Duration,
    table: Mutex<Table>,
    metrics: CacheMetrics,
}

/// A droplet held in the cache; it is not evicted while a lease on it lives.
#[derive(Debug)]
pub(crate) struct Lease {
    cache: DropletCache,
    sha: String,
    path: PathBuf,
}

impl Lease {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut table = self.cache.lock();
        if let Some(entry) = table.entries.get_mut(&self.sha) {
            entry.in_use = entry.in_use.saturating_sub(1);
        }
        drop(table);
        self.cache.evict();
    }
}

/// Checks that `sha` is 64 hex digits and returns it in lower case (it becomes a file name).
pub(crate) fn normalize_sha(sha: &str) -> Result<String, Error> {
    if sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(sha.to_ascii_lowercase())
    } else {
        Err(Error::InvalidRequest(format!(
            "droplet_sha256 {:?} is not 64 hex digits",
            sha.chars().take(80).collect::<String>()
        )))
    }
}

/// `url` without user info or query, so credentials never reach a log or a reply.
pub(crate) fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.set_query(None);
            parsed.set_fragment(None);
            parsed.to_string()
        }
        Err(_) => "<unparseable url>".to_owned(),
    }
}

impl DropletCache {
    /// Opens the cache in `dir`, adopting complete droplets a previous run left there and
    /// removing partial downloads.
    pub(crate) fn open(
        dir: PathBuf,
        max_bytes: u64,
        max_droplet_bytes: u64,
        download_timeout: Duration,
        tls: Option<&hydrant_tls::TlsFiles>,
        metrics: CacheMetrics,
    ) -> Result<Self, Error> {
        let mtls = tls
            .map(hydrant_runtime::MtlsTransport::new)
            .transpose()
            .map_err(|e| {
                hydrant_runtime::Error::from(hydrant_runtime::invalid(
                    "tls",
                    format!("cannot be used: {e}"),
                ))
            })?;
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            what: "cannot create the droplet cache",
            path: dir.clone(),
            source,
        })?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .timeout(download_timeout)
            .build()
            .map_err(|e| Error::Download {
                url: String::new(),
                reason: format!("cannot build an HTTP client: {e}"),
            })?;
        let mut table = Table::default();
        let listing = std::fs::read_dir(&dir).map_err(|source| Error::Io {
            what: "cannot read the droplet cache",
            path: dir.clone(),
            source,
        })?;
        for entry in listing.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata() else { continue };
            match name.strip_suffix(".tgz").map(normalize_sha) {
                Some(Ok(sha)) if meta.is_file() && sha == name.trim_end_matches(".tgz") => {
                    table.total += meta.len();
                    table.entries.insert(
                        sha,
                        Entry {
                            size: meta.len(),
                            last_used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                            in_use: 0,
                        },
                    );
                }
                _ => {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        metrics.bytes.set(table.total as f64);
        let cache = Self {
            inner: Arc::new(Inner {
                dir,
                max_bytes,
                max_droplet_bytes,
                client,
                mtls,
                download_timeout,
                table: Mutex::new(table),
                metrics,
            }),
        };
        cache.evict();
        Ok(cache)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        hydrant_runtime::lock(&self.inner.table)
    }

    fn path_of(&self, sha: &str) -> PathBuf {
        self.inner.dir.join(format!("{sha}.tgz"))
    }

    fn lease(&self, sha: &str) -> Lease {
        Lease {
            cache: self.clone(),
            sha: sha.to_owned(),
            path: self.path_of(sha),
        }
    }

    /// The droplet with `sha` (already normalized), from the cache or from `url`.
    pub(crate) async fn fetch(&self, url: &str, sha: &str) -> Result<Lease, Error> {
        {
            let mut table = self.lock();
            if let Some(entry) = table.entries.get_mut(sha) {
                entry.in_use += 1;
                entry.last_used = SystemTime::now();
                self.inner.metrics.hits.inc();
                return Ok(self.lease(sha));
            }
        }
        self.inner.metrics.misses.inc();
        let partial = self
            .inner
            .dir
            .join(format!(".partial-{sha}-{:016x}", fastrand::u64(..)));
        let result = self.download(url, sha, &partial).await;
        let size = match result {
            Ok(size) => size,
            Err(e) => {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(e);
            }
        };
        let target = self.path_of(sha);
        tokio::fs::rename(&partial, &target)
            .await
            .map_err(|source| Error::Io {
                what: "cannot move a downloaded droplet into the cache",
                path: target.clone(),
                source,
            })?;
        {
            let mut table = self.lock();
            // Two concurrent downloads of one droplet land on the same name; count it once.
            if let Some(old) = table.entries.remove(sha) {
                table.total = table.total.saturating_sub(old.size);
            }
            table.total += size;
            table.entries.insert(
                sha.to_owned(),
                Entry {
                    size,
                    last_used: SystemTime::now(),
                    in_use: 1,
                },
            );
        }
        self.evict();
        Ok(self.lease(sha))
    }

    async fn download(&self, url: &str, sha: &str, partial: &Path) -> Result<u64, Error> {
        let shown = redact_url(url);
        let fail = |reason: String| Error::Download {
            url: shown.clone(),
            reason,
        };
        let max = self.inner.max_droplet_bytes;
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        let mut file = std::fs::File::create(partial).map_err(|source| Error::Io {
            what: "cannot write a droplet into the cache",
            path: partial.to_path_buf(),
            source,
        })?;
        let mut sink = |chunk: &[u8]| -> Result<(), Error> {
            written += chunk.len() as u64;
            if written > max {
                return Err(Error::TooLarge(format!(
                    "more than max_droplet_mb ({} MiB)",
                    max / (1024 * 1024)
                )));
            }
            hasher.update(chunk);
            file.write_all(chunk).map_err(|source| Error::Io {
                what: "cannot write a droplet into the cache",
                path: partial.to_path_buf(),
                source,
            })
        };
        if let Some(path) = url.strip_prefix("file://") {
            // The micro cloud's controller shares this host's disk.
            let mut source = std::fs::File::open(path)
                .map_err(|e| fail(format!("cannot open the file: {e}")))?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = std::io::Read::read(&mut source, &mut buf)
                    .map_err(|e| fail(format!("cannot read the file: {e}")))?;
                if n == 0 {
                    break;
                }
                sink(buf.get(..n).unwrap_or_default())?;
            }
        } else if url.starts_with("http://") || url.starts_with("https://") {
            let mut response = match &self.inner.mtls {
                Some(mtls) if url.starts_with("https://") => {
                    let request = self
                        .inner
                        .client
                        .get(url)
                        .build()
                        .map_err(|e| fail(e.without_url().to_string()))?;
                    // The client's own timeout covers only its own connections.
                    tokio::time::timeout(self.inner.download_timeout, mtls.execute(request))
                        .await
                        .map_err(|_| fail("no answer in download_timeout_secs".into()))?
                        .map_err(fail)?
                }
                // reqwest speaks no TLS here: only the mutual-TLS transport reaches https://.
                None if url.starts_with("https://") => {
                    return Err(fail(
                        "an https:// droplet URL is the cloud controller's internal API: give \
                         this executor its certificate in tls (ca_file, cert_file, key_file)"
                            .into(),
                    ));
                }
                _ => self
                    .inner
                    .client
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| fail(e.without_url().to_string()))?,
            };
            if !response.status().is_success() {
                return Err(fail(format!("the server answered {}", response.status())));
            }
            if response.content_length().is_some_and(|len| len > max) {
                return Err(Error::TooLarge(format!(
                    "the server announces more than max_droplet_mb ({} MiB)",
                    max / (1024 * 1024)
                )));
            }
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| fail(e.without_url().to_string()))?
            {
                sink(&chunk)?;
            }
        } else {
            return Err(fail(
                "only http://, https:// and file:// URLs are supported".into(),
            ));
        }
        file.sync_all().map_err(|source| Error::Io {
            what: "cannot write a droplet into the cache",
            path: partial.to_path_buf(),
            source,
        })?;
        let actual = hex(&hasher.finalize());
        if actual != sha {
            return Err(Error::ChecksumMismatch {
                expected: sha.to_owned(),
                actual,
            });
        }
        Ok(written)
    }

    /// Removes least recently used droplets nobody is unpacking until the cache fits.
    fn evict(&self) {
        let mut victims = Vec::new();
        {
            let mut table = self.lock();
            while table.total > self.inner.max_bytes {
                let Some(sha) = table
                    .entries
                    .iter()
                    .filter(|(_, e)| e.in_use == 0)
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(sha, _)| sha.clone())
                else {
                    break;
                };
                if let Some(entry) = table.entries.remove(&sha) {
                    table.total = table.total.saturating_sub(entry.size);
                    victims.push(sha);
                }
            }
            self.inner.metrics.bytes.set(table.total as f64);
        }
        for sha in victims {
            self.inner.metrics.evictions.inc();
            let _ = std::fs::remove_file(self.path_of(&sha));
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// `true` when `path` is relative and made of plain names only.
fn is_plain_relative(path: &Path) -> bool {
    path.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// `true` when a symlink at `link` (relative to the root) pointing at `target` resolves inside
/// the root, judged on names alone.
fn link_stays_inside(link: &Path, target: &Path) -> bool {
    let mut depth: usize = link.parent().map_or(0, |p| {
        p.components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .count()
    });
    for component in target.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Unpacks the tar.gz at `archive` into `dest`, refusing unsafe entries and more than
/// `max_bytes` of content. Blocking: call it from `spawn_blocking`.
pub(crate) fn unpack(archive: &Path, dest: &Path, max_bytes: u64) -> Result<u64, Error> {
    let file = std::fs::File::open(archive).map_err(|source| Error::Io {
        what: "cannot open a cached droplet",
        path: archive.to_path_buf(),
        source,
    })?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    tar.set_preserve_permissions(false);
    tar.set_unpack_xattrs(false);
    let corrupt = |e: std::io::Error| Error::Corrupt(e.to_string());
    let mut total = 0u64;
    let entries = tar.entries().map_err(corrupt)?;
    for (count, entry) in entries.enumerate() {
        if count >= MAX_ENTRIES {
            return Err(Error::TooLarge(format!("more than {MAX_ENTRIES} entries")));
        }
        let mut entry = entry.map_err(corrupt)?;
        let path = entry.path().map_err(corrupt)?.into_owned();
        let shown = || path.to_string_lossy().chars().take(200).collect::<String>();
        if !is_plain_relative(&path) {
            return Err(Error::UnsafeEntry {
                path: shown(),
                reason: "absolute paths and '..' would escape the instance directory",
            });
        }
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Directory => {}
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(corrupt)?
                    .map(std::borrow::Cow::into_owned)
                    .unwrap_or_default();
                let inside = if kind == tar::EntryType::Symlink {
                    link_stays_inside(&path, &target)
                } else {
                    is_plain_relative(&target)
                };
                if !inside {
                    return Err(Error::UnsafeEntry {
                        path: shown(),
                        reason: "the link points outside the instance directory",
                    });
                }
            }
            _ => {
                return Err(Error::UnsafeEntry {
                    path: shown(),
                    reason: "only files, directories and links may be shipped in a droplet",
                });
            }
        }
        total = total.saturating_add(entry.size());
        if total > max_bytes {
            return Err(Error::TooLarge(format!(
                "it unpacks to more than the disk quota ({} MiB)",
                max_bytes / (1024 * 1024)
            )));
        }
        if !entry.unpack_in(dest).map_err(corrupt)? {
            return Err(Error::UnsafeEntry {
                path: shown(),
                reason: "it would land outside the instance directory",
            });
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> CacheMetrics {
        CacheMetrics {
            hits: Counter::default(),
            misses: Counter::default(),
            evictions: Counter::default(),
            bytes: Gauge::default(),
        }
    }

    fn sha_of(data: &[u8]) -> String {
        hex(&Sha256::digest(data))
    }

    #[test]
    fn shas_are_checked_before_they_become_file_names() {
        assert!(normalize_sha("../../etc/passwd").is_err());
        assert!(normalize_sha(&"g".repeat(64)).is_err());
        assert_eq!(normalize_sha(&"AB".repeat(32)).unwrap(), "ab".repeat(32));
    }

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            redact_url("http://user:secret@cc:9022/droplets/x?token=abc"),
            "http://cc:9022/droplets/x"
        );
    }

    #[test]
    fn links_are_judged_on_where_they_resolve() {
        assert!(link_stays_inside(Path::new("a/b/link"), Path::new("../c")));
        assert!(link_stays_inside(Path::new("a/link"), Path::new("../c")));
        assert!(!link_stays_inside(Path::new("link"), Path::new("../c")));
        assert!(!link_stays_inside(Path::new("a/link"), Path::new("/etc")));
    }

    #[tokio::test]
    async fn file_droplets_are_cached_and_evicted_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let m = metrics();
        let cache = DropletCache::open(
            dir.path().join("cache"),
            150,
            1 << 20,
            Duration::from_secs(5),
            None,
            m.clone(),
        )
        .unwrap();
        let mut shas = Vec::new();
        for i in 0..3u8 {
            let data = vec![i; 100];
            let path = dir.path().join(format!("d{i}"));
            std::fs::write(&path, &data).unwrap();
            let sha = sha_of(&data);
            let url = format!("file://{}", path.display());
            let lease = cache.fetch(&url, &sha).await.unwrap();
            assert!(lease.path().exists());
            drop(lease);
            let again = cache.fetch(&url, &sha).await.unwrap();
            drop(again);
            shas.push(sha);
        }
        assert_eq!(m.misses.get(), 3);
        assert_eq!(m.hits.get(), 3);
        // 150 bytes hold one 100-byte droplet: the two older ones were evicted.
        assert_eq!(m.evictions.get(), 2);
        assert!(!cache.path_of(&shas[0]).exists());
        assert!(cache.path_of(&shas[2]).exists());
        let wrong = cache
            .fetch(
                &format!("file://{}", dir.path().join("d0").display()),
                &"0".repeat(64),
            )
            .await
            .unwrap_err();
        assert!(matches!(wrong, Error::ChecksumMismatch { .. }), "{wrong}");
    }

    #[tokio::test]
    async fn an_https_droplet_without_tls_says_what_to_set() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DropletCache::open(
            dir.path().join("cache"),
            1 << 20,
            1 << 20,
            Duration::from_secs(5),
            None,
            metrics(),
        )
        .unwrap();
        let err = cache
            .fetch(
                "https://127.0.0.1:1/internal/droplets/d?token=secret",
                &"0".repeat(64),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls"), "{err}");
        assert!(!err.contains("secret"), "the token never shows: {err}");
    }
}
