//! Fingerprinting an app directory for resource matching, and the path rules a package obeys.
//!
//! Push sends fingerprints (path, size, SHA-256, mode), not files; the cloud controller answers
//! with the ones its content-addressed blob store lacks, so an unchanged re-push uploads
//! nothing. [`validate_path`] is the one definition of a safe package path: the client applies
//! it before sending and the server applies it again before touching a disk, so no path can
//! escape the directory it is unpacked into.

use std::collections::BTreeSet;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::Error;
use crate::types::Resource;

/// Longest accepted package path, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;

/// Why a package path is refused, or `None` when it is safe: relative, `/`-separated, no empty,
/// `.` or `..` component, no NUL or backslash, at most [`MAX_PATH_BYTES`].
#[must_use]
pub fn path_problem(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        return Some("the path is empty");
    }
    if path.len() > MAX_PATH_BYTES {
        return Some("the path is longer than 1024 bytes");
    }
    if path.starts_with('/') {
        return Some("absolute paths are not allowed; make it relative to the app directory");
    }
    if path.contains('\0') || path.contains('\\') {
        return Some("NUL and backslash are not allowed; separate directories with /");
    }
    for part in path.split('/') {
        match part {
            "" => return Some("empty path components (// or a trailing /) are not allowed"),
            "." | ".." => return Some("`.` and `..` components are not allowed"),
            _ => {}
        }
    }
    None
}

/// Checks a whole resource list: every path safe ([`path_problem`]), no path twice, no file
/// that is also a directory of another, hashes 64 lower-case hex digits.
///
/// # Errors
/// [`Error::Invalid`] naming the first offending path and the rule it breaks.
pub fn validate_resources(resources: &[Resource]) -> Result<(), Error> {
    let mut seen = BTreeSet::new();
    for r in resources {
        if let Some(problem) = path_problem(&r.path) {
            return Err(Error::Invalid(format!("{:?}: {problem}", r.path)));
        }
        if !is_sha256_hex(&r.sha256) {
            return Err(Error::Invalid(format!(
                "{:?}: sha256 must be 64 lower-case hex digits",
                r.path
            )));
        }
        if !seen.insert(r.path.as_str()) {
            return Err(Error::Invalid(format!(
                "{:?} is listed twice; each path may appear once",
                r.path
            )));
        }
    }
    for r in resources {
        let mut prefix = r.path.as_str();
        while let Some((parent, _)) = prefix.rsplit_once('/') {
            if seen.contains(parent) {
                return Err(Error::Invalid(format!(
                    "{parent:?} is both a file and the directory of {:?}",
                    r.path
                )));
            }
            prefix = parent;
        }
    }
    Ok(())
}

/// True for 64 lower-case hex digits.
#[must_use]
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Lower-case hex of `bytes` (the form fingerprints are compared in), from the `hex` crate.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    ::hex::encode(bytes)
}

/// One fingerprinted file and where it is on the local disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFile {
    /// The fingerprint sent to the server.
    pub resource: Resource,
    /// The file on disk, for uploading.
    pub local: PathBuf,
}

/// Fingerprints every regular file under `dir`, sorted by path. Symbolic links, sockets and
/// other special files are skipped; so are `.git` directories. Blocking: call it from
/// `spawn_blocking` in async code.
///
/// # Errors
/// [`Error::Io`] for an unreadable file or directory; [`Error::Invalid`] for a name that is not
/// UTF-8 or breaks [`path_problem`].
pub fn fingerprint_dir(dir: &Path) -> Result<Vec<LocalFile>, Error> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let entries = std::fs::read_dir(&current).map_err(|e| io(&current, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io(&current, e))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| io(&path, e))?;
            if kind.is_dir() {
                if entry.file_name() != ".git" {
                    stack.push(path);
                }
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            let relative = path
                .strip_prefix(dir)
                .ok()
                .and_then(Path::to_str)
                .ok_or_else(|| {
                    Error::Invalid(format!("{}: file names must be UTF-8", path.display()))
                })?
                .replace(std::path::MAIN_SEPARATOR, "/");
            if let Some(problem) = path_problem(&relative) {
                return Err(Error::Invalid(format!("{relative:?}: {problem}")));
            }
            let (size, sha256) = hash_file(&path)?;
            out.push(LocalFile {
                resource: Resource {
                    path: relative,
                    size,
                    sha256,
                    mode: file_mode(&entry.metadata().map_err(|e| io(&path, e))?),
                },
                local: path,
            });
        }
    }
    out.sort_by(|a, b| a.resource.path.cmp(&b.resource.path));
    Ok(out)
}

/// Size and SHA-256 (hex) of a file, read in 64 KiB pieces.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read.
pub fn hash_file(path: &Path) -> Result<(u64, String), Error> {
    let mut file = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex(&hasher.finalize())))
}

#[cfg(unix)]
fn file_mode(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    meta.permissions().mode() & 0o777
}

#[cfg(not(unix))]
fn file_mode(_meta: &std::fs::Metadata) -> u32 {
    0o644
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(path: &str) -> Resource {
        Resource {
            path: path.into(),
            size: 1,
            sha256: "a".repeat(64),
            mode: 0o644,
        }
    }

    #[test]
    fn unsafe_paths_are_named() {
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "..",
            "./a",
            "a//b",
            "a/",
            "a\\b",
            "a\0",
        ] {
            assert!(path_problem(bad).is_some(), "{bad:?}");
        }
        for good in ["a", "a/b.txt", ".env", "dir/.hidden/x", "a..b"] {
            assert!(path_problem(good).is_none(), "{good:?}");
        }
    }

    #[test]
    fn lists_reject_duplicates_and_file_directory_clashes() {
        validate_resources(&[res("a/b"), res("a/c")]).unwrap();
        let err = validate_resources(&[res("a"), res("a")]).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
        let err = validate_resources(&[res("a"), res("a/b")]).unwrap_err();
        assert!(err.to_string().contains("both a file"), "{err}");
        let mut bad_hash = res("x");
        bad_hash.sha256 = "XYZ".into();
        assert!(validate_resources(&[bad_hash]).is_err());
    }

    #[test]
    fn fingerprints_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub/.git")).unwrap();
        std::fs::write(dir.path().join("sub/x.txt"), b"abc").unwrap();
        std::fs::write(dir.path().join("sub/.git/HEAD"), b"ref").unwrap();
        std::fs::write(dir.path().join("a"), b"").unwrap();
        let files = fingerprint_dir(dir.path()).unwrap();
        let paths: Vec<_> = files.iter().map(|f| f.resource.path.as_str()).collect();
        assert_eq!(paths, ["a", "sub/x.txt"]);
        assert_eq!(
            files[1].resource.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(files[1].resource.size, 3);
    }
}
