//! What the caller asks to run ([`ContainerSpec`]) and the OCI runtime spec (`config.json`)
//! made from it: namespaces, user `vcap`, no capabilities, masked and read-only paths, seccomp,
//! the stack's mounts and the container's own writable directories.
//!
//! Invariant: every container gets the same isolation; a spec can choose what to run, its
//! directories, limits, extra read-only files and its network namespace, never a weaker
//! container.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, LinuxBuilder, LinuxCapabilities, LinuxDeviceCgroupBuilder, LinuxNamespace,
    LinuxNamespaceType, LinuxResourcesBuilder, Mount, PosixRlimitBuilder, PosixRlimitType, Process,
    Root, Spec, User, get_default_maskedpaths, get_default_readonly_paths,
};

use crate::stack::{APP_DIR, Stack, TMP_DIR, VCAP_GID, VCAP_UID};
use crate::{Error, seccomp};

/// Open files a container's processes may hold (Cloud Foundry's `fds` limit).
pub const NOFILE: u64 = 16_384;

/// The container's init: `sh` runs the command as its child and passes SIGTERM on, because
/// the first process of a pid namespace ignores every signal it has no handler for, so an app
/// run directly as init could never be stopped gracefully. Its exit status is the command's.
const INIT: &str = "\"$@\" & child=$!\n\
trap 'kill -TERM \"$child\" 2>/dev/null' TERM INT\n\
while :; do wait \"$child\"; status=$?; kill -0 \"$child\" 2>/dev/null || exit \"$status\"; done";

/// The kernel-enforced limits of one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Memory (and swap) the container may use, bytes; past it the kernel OOM-kills.
    pub memory_bytes: u64,
    /// Processes and threads it may hold at once.
    pub pids: u32,
    /// Its CPU weight against other containers, in v1 shares (1024 = a full share).
    pub cpu_shares: u64,
    /// Size of its `/tmp` tmpfs, bytes (counted against its memory).
    pub tmp_bytes: u64,
}

impl Limits {
    /// Limits as Diego sets them for an instance of `memory_mb`: that memory, CPU shares
    /// proportional to it, and the given pids limit and `/tmp` size.
    #[must_use]
    pub fn for_memory_mb(memory_mb: u64, pids: u32, tmp_mb: u64) -> Self {
        Self {
            memory_bytes: memory_mb.saturating_mul(1024 * 1024),
            pids,
            cpu_shares: crate::cgroup::cpu_shares_for(memory_mb),
            tmp_bytes: tmp_mb.saturating_mul(1024 * 1024),
        }
    }
}

/// A host file or directory shown read-only inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// On the host.
    pub host: PathBuf,
    /// Inside the container (absolute; not under a bound host tree such as `/usr`).
    pub container: PathBuf,
}

/// Which network the container is in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Network {
    /// A network namespace of its own with only loopback: no way in or out.
    #[default]
    Private,
    /// An existing network namespace (from the container network: a veth on the bridge).
    Join(PathBuf),
    /// The host's network. Only for platforms without a container network: the app reaches
    /// every port on the host's loopback, so the platform says so loudly when it uses this.
    Host,
}

/// What to run, where, and within which limits.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// The container's id: letters, digits, `-` and `_` (the instance guid or staging task).
    pub id: String,
    /// The command and its arguments (e.g. `["bash", "-c", start_command]`).
    pub args: Vec<String>,
    /// The whole environment, `NAME=value` pairs.
    pub env: Vec<(String, String)>,
    /// The working directory inside the container; default [`APP_DIR`].
    pub cwd: Option<PathBuf>,
    /// The host directory shown writable at `/home/vcap/app`.
    pub app_dir: PathBuf,
    /// The host directory shown writable at `/home/vcap/tmp`.
    pub tmp_dir: PathBuf,
    /// More host paths shown read-only (e.g. the `hydrant` binary for static sites).
    pub binds: Vec<Bind>,
    /// The limits.
    pub limits: Limits,
    /// The network.
    pub network: Network,
}

/// What a container that is not an app (a service node) needs beyond a [`ContainerSpec`]:
/// its own unprivileged user, and host directories it writes at their own paths (so the
/// files and sockets it makes there are where the host's tools look for them).
/// `SpawnOptions::default()` is an app's container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpawnOptions {
    /// `(uid, gid)` the container's processes run as instead of `vcap`; never 0. The
    /// container's `app_dir` and `tmp_dir` are given to it. Only `vcap` and `nobody` have
    /// names inside (the stack's `/etc/passwd`).
    pub user: Option<(u32, u32)>,
    /// Host directories shown writable at the same path inside (absolute, outside the host
    /// trees such as `/usr` and `/etc`). They are not given to the user: the caller owns them.
    pub writable: Vec<PathBuf>,
}

fn mount(destination: &str, typ: &str, source: &Path, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(destination));
    m.set_typ(Some(typ.to_owned()));
    m.set_source(Some(source.to_path_buf()));
    m.set_options(Some(options.iter().map(|o| (*o).to_owned()).collect()));
    m
}

fn bind(destination: &str, source: &Path, read_only: bool) -> Mount {
    let options: &[&str] = if read_only {
        &["rbind", "ro", "nosuid", "nodev"]
    } else {
        &["rbind", "rw", "nosuid", "nodev"]
    };
    mount(destination, "bind", source, options)
}

/// Whether `id` can name a container, a cgroup and a directory.
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Paths to hide inside the container: those of `hidden` that a bound host tree would show,
/// except whole trees that programs need (hiding `/usr/bin` would break every container).
pub(crate) fn masks_for(hidden: &[PathBuf], trees: &[&str]) -> Vec<String> {
    const KEEP: [&str; 6] = [
        "/usr",
        "/usr/bin",
        "/usr/local/bin",
        "/usr/sbin",
        "/bin",
        "/etc",
    ];
    hidden
        .iter()
        .filter(|p| trees.iter().any(|t| p.starts_with(t)))
        .filter(|p| !KEEP.iter().any(|k| p.as_path() == Path::new(k)))
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

impl ContainerSpec {
    /// The OCI runtime spec for this container, on `stack`, in cgroup `cgroups_path`, hiding
    /// `hidden` host paths that a bound tree would otherwise show, with `options`.
    pub(crate) fn oci(
        &self,
        stack: &Stack,
        cgroups_path: PathBuf,
        hidden: &[PathBuf],
        options: &SpawnOptions,
    ) -> Result<Spec, Error> {
        let fail = |e: oci_spec::OciSpecError| Error::Spec {
            id: self.id.clone(),
            message: e.to_string(),
        };
        if !valid_id(&self.id) {
            return Err(Error::Spec {
                id: self.id.chars().take(64).collect(),
                message: "a container id is 1-128 letters, digits, '-' or '_'".to_owned(),
            });
        }
        if self.args.is_empty() {
            return Err(Error::Spec {
                id: self.id.clone(),
                message: "nothing to run: args is empty".to_owned(),
            });
        }

        let (uid, gid) = options.user.unwrap_or((VCAP_UID, VCAP_GID));
        if uid == 0 || gid == 0 {
            return Err(Error::Spec {
                id: self.id.clone(),
                message: "a container never runs as root: name an unprivileged user".to_owned(),
            });
        }
        let mut user = User::default();
        user.set_uid(uid);
        user.set_gid(gid);
        user.set_additional_gids(Some(vec![]));
        user.set_umask(Some(0o022));
        let none = || Some(Capabilities::new());
        let mut caps = LinuxCapabilities::default();
        caps.set_bounding(none());
        caps.set_effective(none());
        caps.set_inheritable(none());
        caps.set_permitted(none());
        caps.set_ambient(none());
        let nofile = PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(NOFILE)
            .soft(NOFILE)
            .build()
            .map_err(fail)?;
        let mut args = vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            INIT.to_owned(),
            "hydrant-init".to_owned(),
        ];
        args.extend(self.args.iter().cloned());
        let mut process = Process::default();
        process.set_terminal(Some(false));
        process.set_user(user);
        process.set_args(Some(args));
        process.set_env(Some(
            self.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        ));
        process.set_cwd(self.cwd.clone().unwrap_or_else(|| PathBuf::from(APP_DIR)));
        process.set_capabilities(Some(caps));
        process.set_rlimits(Some(vec![nofile]));
        process.set_no_new_privileges(Some(true));
        process.set_oom_score_adj(None);

        let mut root = Root::default();
        root.set_path(stack.rootfs.clone());
        root.set_readonly(Some(true));

        let none_path = Path::new("none");
        let tmp_size = format!("size={}", self.limits.tmp_bytes.max(4096));
        let mut mounts = vec![
            mount(
                "/proc",
                "proc",
                Path::new("proc"),
                &["nosuid", "noexec", "nodev"],
            ),
            mount(
                "/dev",
                "tmpfs",
                Path::new("tmpfs"),
                &["nosuid", "strictatime", "mode=755", "size=65536k"],
            ),
            mount(
                "/dev/pts",
                "devpts",
                Path::new("devpts"),
                &[
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                ],
            ),
            mount(
                "/dev/shm",
                "tmpfs",
                Path::new("shm"),
                &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            ),
            mount(
                "/dev/mqueue",
                "mqueue",
                Path::new("mqueue"),
                &["nosuid", "noexec", "nodev"],
            ),
        ];
        for tree in stack.binds() {
            mounts.push(bind(tree, Path::new(tree), true));
        }
        mounts.push(bind("/etc/passwd", &stack.passwd, true));
        mounts.push(bind("/etc/group", &stack.group, true));
        mounts.push(mount(
            "/tmp",
            "tmpfs",
            none_path,
            &["nosuid", "nodev", "mode=1777", &tmp_size],
        ));
        mounts.push(bind(APP_DIR, &self.app_dir, false));
        mounts.push(bind(TMP_DIR, &self.tmp_dir, false));
        for extra in &self.binds {
            let destination = extra.container.to_string_lossy();
            if !extra.container.is_absolute()
                || stack.binds().any(|t| extra.container.starts_with(t))
            {
                return Err(Error::Spec {
                    id: self.id.clone(),
                    message: format!(
                        "bind destination {destination:?} must be absolute and outside the \
                         host trees (use e.g. /opt/hydrant/...)"
                    ),
                });
            }
            mounts.push(bind(&destination, &extra.host, true));
        }
        for dir in &options.writable {
            let destination = dir.to_string_lossy();
            if !dir.is_absolute()
                || stack.binds().any(|t| dir.starts_with(t))
                || dir
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
            {
                return Err(Error::Spec {
                    id: self.id.clone(),
                    message: format!(
                        "writable directory {destination:?} must be absolute and outside the \
                         host trees (/usr, /etc, /bin, /sbin, /lib*)"
                    ),
                });
            }
            mounts.push(bind(&destination, dir, false));
        }

        let namespace = |typ, path: Option<PathBuf>| {
            let mut ns = LinuxNamespace::default();
            ns.set_typ(typ);
            ns.set_path(path);
            ns
        };
        let mut namespaces = vec![
            namespace(LinuxNamespaceType::Pid, None),
            namespace(LinuxNamespaceType::Mount, None),
            namespace(LinuxNamespaceType::Ipc, None),
            namespace(LinuxNamespaceType::Uts, None),
            namespace(LinuxNamespaceType::Cgroup, None),
        ];
        match &self.network {
            Network::Private => namespaces.push(namespace(LinuxNamespaceType::Network, None)),
            Network::Join(path) => {
                namespaces.push(namespace(LinuxNamespaceType::Network, Some(path.clone())));
            }
            Network::Host => {}
        }

        let mut masked = get_default_maskedpaths();
        masked.extend(
            [
                "/etc/shadow",
                "/etc/gshadow",
                "/etc/shadow-",
                "/etc/gshadow-",
            ]
            .map(str::to_owned),
        );
        let trees: Vec<&str> = stack.binds().collect();
        masked.extend(masks_for(hidden, &trees));

        // The devices cgroup: nothing but the default devices runc always allows.
        let devices = LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .map_err(fail)?;
        let resources = LinuxResourcesBuilder::default()
            .devices(vec![devices])
            .build()
            .map_err(fail)?;
        let linux = LinuxBuilder::default()
            .namespaces(namespaces)
            .cgroups_path(cgroups_path)
            .resources(resources)
            .masked_paths(masked)
            .readonly_paths(get_default_readonly_paths())
            .seccomp(seccomp::profile().map_err(fail)?)
            .devices(vec![])
            .uid_mappings(vec![])
            .gid_mappings(vec![])
            .build()
            .map_err(fail)?;

        let mut spec = Spec::default();
        spec.set_version("1.0.2".to_owned());
        spec.set_hostname(Some(self.id.chars().take(63).collect()));
        spec.set_root(Some(root));
        spec.set_process(Some(process));
        spec.set_mounts(Some(mounts));
        spec.set_linux(Some(linux));
        spec.set_hooks(None);
        spec.set_annotations(None);
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_paths_are_masked_only_where_a_tree_shows_them() {
        let hidden = vec![
            PathBuf::from("/etc/hydrant/data"),
            PathBuf::from("/var/lib/hydrant"),
            PathBuf::from("/usr/local/bin"),
        ];
        assert_eq!(
            masks_for(&hidden, &["/usr", "/etc"]),
            vec!["/etc/hydrant/data"]
        );
    }

    fn service_spec(dir: &Path) -> ContainerSpec {
        ContainerSpec {
            id: "redis-1".to_owned(),
            args: vec!["/usr/bin/redis-server".to_owned()],
            env: Vec::new(),
            cwd: Some(dir.to_path_buf()),
            app_dir: dir.join("app"),
            tmp_dir: dir.join("tmp"),
            binds: Vec::new(),
            limits: Limits::for_memory_mb(64, 64, 16),
            network: Network::Host,
        }
    }

    #[test]
    fn a_service_container_runs_as_its_own_user_and_writes_only_its_directories() {
        let dir = tempfile::tempdir().unwrap();
        let stack = Stack::prepare(&dir.path().join("stack")).unwrap();
        let data = PathBuf::from("/var/lib/hydrant/broker-nodes/x/redis-1");
        let options = SpawnOptions {
            user: Some((65_534, 65_534)),
            writable: vec![data.clone()],
        };
        let spec = service_spec(&data)
            .oci(&stack, PathBuf::from("/p/redis-1"), &[], &options)
            .unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!(
            (process.user().uid(), process.user().gid()),
            (65_534, 65_534)
        );
        let mounts = spec.mounts().as_ref().unwrap();
        let own = mounts
            .iter()
            .find(|m| m.destination() == &data)
            .expect("its directory is mounted at its own path");
        assert!(own.options().as_ref().unwrap().iter().any(|o| o == "rw"));
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));

        for (user, writable) in [
            (Some((0, 0)), data.clone()),
            (Some((65_534, 65_534)), PathBuf::from("/usr/lib/x")),
            (Some((65_534, 65_534)), PathBuf::from("relative")),
        ] {
            let options = SpawnOptions {
                user,
                writable: vec![writable.clone()],
            };
            assert!(
                service_spec(&data)
                    .oci(&stack, PathBuf::from("/p/redis-1"), &[], &options)
                    .is_err(),
                "{user:?} {}",
                writable.display()
            );
        }
        let app = service_spec(&data)
            .oci(
                &stack,
                PathBuf::from("/p/redis-1"),
                &[],
                &SpawnOptions::default(),
            )
            .unwrap();
        assert_eq!(
            app.process().as_ref().unwrap().user().uid(),
            VCAP_UID,
            "an app's container runs as vcap"
        );
    }

    #[test]
    fn ids_are_plain_names() {
        assert!(valid_id("inst-1_a"));
        assert!(!valid_id("../x"));
        assert!(!valid_id(""));
    }
}
