//! The blob store under `data_dir`: file contents by SHA-256, droplets by guid, and scratch
//! space for uploads and staging.
//!
//! Flow: `PUT /v3/blobs/{sha256}` streams into `tmp/`, hashing as it goes, and renames into
//! `blobs/` only when the hash matches; staging copies blobs out into a scratch directory and
//! writes the droplet into `droplets/`. Invariant: a file under `blobs/<xx>/<sha256>` always
//! holds exactly the content with that hash, so resource matching can trust its presence.
//!
//! State at rest is the platform's alone: `data_dir` and every directory here are mode 0700,
//! and blobs, droplets and the database 0600 ([`private_dir`], [`private_file`]), so another
//! user on the host reads no tenant's code, environment or password hashes.

use std::path::{Path, PathBuf};

use futures_util::{Stream, StreamExt as _};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use crate::Error;
use crate::api::ApiError;

/// Where blobs and droplets live.
#[derive(Debug, Clone)]
pub(crate) struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Creates the directories under `root` when missing, all private to this user (`root`
    /// included, also when it already existed).
    pub(crate) fn open(root: &Path) -> Result<Self, Error> {
        for path in [
            root.to_path_buf(),
            root.join("blobs"),
            root.join("droplets"),
            root.join("tmp"),
        ] {
            private_dir(&path).map_err(|source| Error::Io { path, source })?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Where the content with hash `sha256` (already validated as hex) lives.
    pub(crate) fn blob_path(&self, sha256: &str) -> PathBuf {
        self.root
            .join("blobs")
            .join(sha256.get(..2).unwrap_or("00"))
            .join(sha256)
    }

    /// True when the store holds `sha256` with `size` bytes.
    pub(crate) fn has(&self, sha256: &str, size: u64) -> bool {
        std::fs::metadata(self.blob_path(sha256)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// The store's root directory.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Marks `sha256` as just used (its modification time now), so the collection of
    /// unreferenced files keeps it for its grace period: a file a push was told is present is
    /// still there when the push's package names it. Missing files are ignored.
    pub(crate) fn touch(&self, sha256: &str) {
        if let Ok(file) = std::fs::File::options()
            .append(true)
            .open(self.blob_path(sha256))
        {
            let _ = file.set_modified(std::time::SystemTime::now());
        }
    }

    /// The droplet tarball of `guid`.
    pub(crate) fn droplet_path(&self, guid: &str) -> PathBuf {
        self.root.join("droplets").join(format!("{guid}.tgz"))
    }

    /// A fresh scratch directory, removed when the handle drops.
    pub(crate) fn scratch(&self) -> std::io::Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix("stage-")
            .tempdir_in(self.root.join("tmp"))
    }

    /// Streams an upload into the store, refusing more than `max` bytes or content whose hash
    /// is not `sha256`. Returns the size.
    pub(crate) async fn put<S, E>(&self, sha256: &str, body: S, max: u64) -> Result<u64, ApiError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let tmp = tempfile::Builder::new()
            .prefix("upload-")
            .tempfile_in(self.root.join("tmp"))
            .map_err(|e| ApiError::internal(format!("cannot create an upload file: {e}")))?;
        let (std_file, tmp_path) = tmp.into_parts();
        let mut file = tokio::fs::File::from_std(std_file);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut body = body;
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::bad_request(format!("upload broke off: {e}")))?;
            size += chunk.len() as u64;
            if size > max {
                return Err(ApiError::too_large(format!(
                    "the file is larger than max_blob_bytes ({max} bytes); \
                     leave it out of the push (e.g. a build artefact) or raise the limit"
                )));
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| ApiError::internal(format!("cannot write the upload: {e}")))?;
        }
        file.flush()
            .await
            .map_err(|e| ApiError::internal(format!("cannot write the upload: {e}")))?;
        drop(file);
        let actual = hydrant_api::push::hex(&hasher.finalize());
        if actual != sha256 {
            return Err(ApiError::unprocessable(format!(
                "the uploaded bytes hash to {actual}, not {sha256}; the file changed while \
                 uploading, or the URL names the wrong hash"
            )));
        }
        let dest = self.blob_path(sha256);
        if let Some(parent) = dest.parent() {
            private_dir(parent)
                .map_err(|e| ApiError::internal(format!("cannot store the blob: {e}")))?;
        }
        tmp_path
            .persist(&dest)
            .map_err(|e| ApiError::internal(format!("cannot store the blob: {e}")))?;
        Ok(size)
    }
}

/// Creates `dir` (and missing parents) and makes it mode 0700.
///
/// # Errors
/// The directory cannot be made or its mode set.
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    set_mode(dir, 0o700)
}

/// Creates `path` empty when missing, and makes it mode 0600 either way: before SQLite opens
/// a database, so the database and the journals SQLite gives the same mode are private.
///
/// # Errors
/// The file cannot be made or its mode set.
pub(crate) fn private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    drop(options.open(path)?);
    set_mode(path, 0o600)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}
