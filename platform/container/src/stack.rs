//! The "stack": the root filesystem every container starts from. An empty directory tree into
//! which the host's OS trees (`/usr`, `/bin`, `/lib*`, `/sbin`, `/etc`) are bound read-only,
//! with the stack's own `/etc/passwd` and `/etc/group` (user `vcap`, uid/gid 2000) over the
//! host's. Nothing else of the host is there: no `/root`, `/home`, `/var`, `/run`, `/srv`,
//! `/opt`, `/tmp`, and no data dir.
//!
//! Invariant: the stack directory holds only empty mount points and the two account files; it
//! is shared read-only by every container, so nothing one container does can reach another.

use std::path::{Path, PathBuf};

use crate::Error;

/// The unprivileged user every container runs as (Cloud Foundry's `vcap`).
pub const VCAP_UID: u32 = 2000;
/// Its group.
pub const VCAP_GID: u32 = 2000;
/// The droplet's directory inside a container (`HOME`).
pub const APP_DIR: &str = "/home/vcap/app";
/// The instance's own temporary directory inside a container (`TMPDIR`).
pub const TMP_DIR: &str = "/home/vcap/tmp";

/// Host trees bound read-only into every container, in mount order.
pub(crate) const HOST_TREES: [&str; 8] = [
    "/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// A host tree as the stack shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tree {
    /// Bound read-only from the host.
    Bind(&'static str),
    /// A symbolic link, as on the host (merged `/usr`: `/bin -> usr/bin`); nothing to mount.
    Link,
}

/// The stack on disk.
#[derive(Debug, Clone)]
pub(crate) struct Stack {
    pub(crate) rootfs: PathBuf,
    pub(crate) passwd: PathBuf,
    pub(crate) group: PathBuf,
    pub(crate) trees: Vec<Tree>,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { what, path, source }
}

const PASSWD: &str = "root:x:0:0:root:/root:/usr/sbin/nologin\n\
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
vcap:x:2000:2000:vcap:/home/vcap/app:/bin/bash\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\nvcap:x:2000:\n";

impl Stack {
    /// Lays the stack out under `dir` (idempotent: an existing stack is brought up to date).
    pub(crate) fn prepare(dir: &Path) -> Result<Self, Error> {
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(io("cannot create stack directory", &rootfs))?;
        let mut trees = Vec::new();
        let mut dirs: Vec<PathBuf> = [
            "proc",
            "dev",
            "tmp",
            "home/vcap/app",
            "home/vcap/tmp",
            "opt/hydrant",
        ]
        .iter()
        .map(|d| rootfs.join(d))
        .collect();
        for tree in HOST_TREES {
            let host = Path::new(tree);
            let Ok(meta) = std::fs::symlink_metadata(host) else {
                continue;
            };
            let name = tree.trim_start_matches('/');
            let inside = rootfs.join(name);
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(host).map_err(io("cannot read link", host))?;
                if std::fs::read_link(&inside).ok().as_ref() != Some(&target) {
                    let _ = std::fs::remove_file(&inside);
                    std::os::unix::fs::symlink(&target, &inside)
                        .or_else(|e| {
                            // Another owner laying out the same stack got there first.
                            if e.kind() == std::io::ErrorKind::AlreadyExists {
                                Ok(())
                            } else {
                                Err(e)
                            }
                        })
                        .map_err(io("cannot create link", &inside))?;
                }
                trees.push(Tree::Link);
            } else if meta.is_dir() {
                dirs.push(inside);
                trees.push(Tree::Bind(tree));
            }
        }
        for d in &dirs {
            std::fs::create_dir_all(d).map_err(io("cannot create stack directory", d))?;
        }
        // runc gives a tmpfs the mode of the directory it covers: `/tmp` must be 1777.
        let tmp = rootfs.join("tmp");
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o1777))
            .map_err(io("cannot set permissions of", &tmp))?;
        let passwd = dir.join("passwd");
        let group = dir.join("group");
        std::fs::write(&passwd, PASSWD).map_err(io("cannot write", &passwd))?;
        std::fs::write(&group, GROUP).map_err(io("cannot write", &group))?;
        Ok(Self {
            rootfs,
            passwd,
            group,
            trees,
        })
    }

    /// The host trees bound into containers.
    pub(crate) fn binds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.trees.iter().filter_map(|t| match t {
            Tree::Bind(path) => Some(*path),
            Tree::Link => None,
        })
    }
}

/// Gives a directory tree to `vcap`, so the app can write its own files. Symbolic links are
/// changed themselves, never followed (a droplet's link must not give away a host file).
///
/// # Errors
/// [`Error::Io`] for the first entry that could not be changed.
pub fn chown_to_vcap(dir: &Path) -> Result<(), Error> {
    chown_tree(dir, (VCAP_UID, VCAP_GID))
}

/// Gives a directory tree to `(uid, gid)`, symbolic links changed themselves, never followed.
pub(crate) fn chown_tree(dir: &Path, (uid, gid): (u32, u32)) -> Result<(), Error> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
            .map_err(io("cannot give to the container user", &path))?;
        let is_dir = std::fs::symlink_metadata(&path)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        if is_dir {
            let entries = std::fs::read_dir(&path).map_err(io("cannot read", &path))?;
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
    Ok(())
}
