//! Whether this host could give containers to an unprivileged user ("rootless"), and if not,
//! exactly why and what to change. Asked by [`crate::Containers::check_host`] and
//! [`crate::Containers::open`] when the platform does not run as root, so `hydrant up` never
//! answers a plain "needs root" where the kernel is what stands in the way.
//!
//! Two things must hold: the kernel lets an unprivileged user make a user namespace (where
//! uid 2000 inside maps to the invoking uid outside), and the user owns a cgroup v2 subtree
//! with the memory, pids and cpu controllers delegated to it (runc's rootless mode sets limits
//! only there; on cgroup v1 an unprivileged user gets no limits at all).
//!
//! Invariant: reading only; every verdict names the file it read and the command that changes
//! it. The verdicts are pure functions of what was read, so each case is tested without the
//! kernel having to be in that state.

use std::path::Path;

/// What the kernel says about unprivileged user namespaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct UsernsFacts {
    /// `/proc/sys/kernel/unprivileged_userns_clone` (Debian and Ubuntu kernels only).
    pub(crate) unprivileged_clone: Option<String>,
    /// `/proc/sys/user/max_user_namespaces`.
    pub(crate) max_user_namespaces: Option<String>,
    /// `/proc/sys/kernel/apparmor_restrict_unprivileged_userns` (Ubuntu 23.10 and later).
    pub(crate) apparmor_restrict: Option<String>,
}

/// What the cgroup hierarchy says about delegation to this user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CgroupFacts {
    /// Whether `/sys/fs/cgroup` is a cgroup v2 (unified) mount.
    pub(crate) v2: bool,
    /// This process's cgroup v2 path (the `0::` line of `/proc/self/cgroup`).
    pub(crate) own: Option<String>,
    /// That cgroup's `cgroup.controllers`.
    pub(crate) controllers: Option<String>,
    /// Whether this user may write that cgroup (make children, move processes).
    pub(crate) writable: bool,
}

/// The controllers a rootless container's limits need.
const WANTED: [&str; 3] = ["memory", "pids", "cpu"];

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_owned())
}

impl UsernsFacts {
    /// Reads the kernel's settings.
    pub(crate) fn read() -> Self {
        Self {
            unprivileged_clone: read("/proc/sys/kernel/unprivileged_userns_clone"),
            max_user_namespaces: read("/proc/sys/user/max_user_namespaces"),
            apparmor_restrict: read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
        }
    }

    /// `Ok(what allows it)`, or `Err(why not; how to fix it)`.
    pub(crate) fn verdict(&self) -> Result<String, String> {
        if self.unprivileged_clone.as_deref() == Some("0") {
            return Err("the kernel forbids unprivileged user namespaces \
                 (/proc/sys/kernel/unprivileged_userns_clone is 0; as root: \
                 `sysctl -w kernel.unprivileged_userns_clone=1`)"
                .to_owned());
        }
        let max = self
            .max_user_namespaces
            .as_deref()
            .and_then(|m| m.parse::<u64>().ok());
        match max {
            None => {
                return Err("this kernel has no user namespaces \
                     (/proc/sys/user/max_user_namespaces is missing: build it with \
                     CONFIG_USER_NS=y)"
                    .to_owned());
            }
            Some(0) => {
                return Err("the kernel allows no user namespaces \
                     (/proc/sys/user/max_user_namespaces is 0; as root: \
                     `sysctl -w user.max_user_namespaces=15000`)"
                    .to_owned());
            }
            Some(_) => {}
        }
        if self.apparmor_restrict.as_deref() == Some("1") {
            return Err("AppArmor restricts unprivileged user namespaces \
                 (/proc/sys/kernel/apparmor_restrict_unprivileged_userns is 1; as root: \
                 `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`, or an AppArmor \
                 profile for runc that allows userns)"
                .to_owned());
        }
        Ok(format!(
            "unprivileged user namespaces are allowed (max_user_namespaces {})",
            max.unwrap_or(0)
        ))
    }
}

impl CgroupFacts {
    /// Reads the hierarchy and this process's place in it.
    pub(crate) fn read() -> Self {
        let root = Path::new("/sys/fs/cgroup");
        let v2 = root.join("cgroup.controllers").exists();
        let own = read("/proc/self/cgroup").and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
        });
        let dir = own.as_deref().map(|p| root.join(p.trim_start_matches('/')));
        let controllers = dir
            .as_ref()
            .filter(|_| v2)
            .and_then(|d| std::fs::read_to_string(d.join("cgroup.controllers")).ok())
            .map(|t| t.trim().to_owned());
        let writable = dir.as_deref().is_some_and(|d| {
            v2 && writable(d)
                && writable(&d.join("cgroup.procs"))
                && writable(&d.join("cgroup.subtree_control"))
        });
        Self {
            v2,
            own,
            controllers,
            writable,
        }
    }

    /// `Ok(where the limits would live)`, or `Err(why not; how to fix it)`.
    pub(crate) fn verdict(&self, uid: u32) -> Result<String, String> {
        if !self.v2 {
            return Err(
                "the host mounts cgroup v1 (or a hybrid of v1 and v2) at /sys/fs/cgroup, \
                 where an unprivileged user cannot be given memory, pids and CPU limits \
                 (boot with `systemd.unified_cgroup_hierarchy=1` for cgroup v2)"
                    .to_owned(),
            );
        }
        let own = self.own.clone().unwrap_or_else(|| "/".to_owned());
        if !self.writable {
            return Err(format!(
                "the cgroup {own} this process runs in is not delegated to uid {uid} (start \
                 hydrant from your systemd user session, e.g. `systemd-run --user --scope -p \
                 Delegate=yes hydrant up`)"
            ));
        }
        let have: Vec<&str> = self
            .controllers
            .as_deref()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let missing: Vec<&str> = WANTED.into_iter().filter(|w| !have.contains(w)).collect();
        if !missing.is_empty() {
            return Err(format!(
                "the cgroup {own} delegated to uid {uid} lacks the {} controller(s) (as root: \
                 `systemctl edit user@.service` with `[Service]` `Delegate=cpu cpuset io memory \
                 pids`, then log in again)",
                missing.join(", ")
            ));
        }
        Ok(format!(
            "the cgroup {own} is delegated to uid {uid} with memory, pids and cpu"
        ))
    }
}

fn writable(path: &Path) -> bool {
    nix::unistd::access(path, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// Why this non-root process cannot have containers, as the reason and the fix of
/// [`crate::Error::Host`].
pub(crate) fn refusal(uid: u32, userns: &UsernsFacts, cgroups: &CgroupFacts) -> (String, String) {
    let verdicts = [userns.verdict(), cgroups.verdict(uid)];
    let blockers: Vec<&str> = verdicts
        .iter()
        .filter_map(|v| v.as_ref().err().map(String::as_str))
        .collect();
    let reason = if blockers.is_empty() {
        // The kernel would allow it; what is missing is ours to build.
        let allowed: Vec<&str> = verdicts
            .iter()
            .filter_map(|v| v.as_ref().ok().map(String::as_str))
            .collect();
        format!(
            "containers need root, and this process runs as uid {uid}. This kernel would allow \
             rootless containers ({}), but Hydrant does not run them yet: a rootless container \
             has no network the router can reach",
            allowed.join("; ")
        )
    } else {
        format!(
            "containers need root, and this process runs as uid {uid}; rootless containers \
             (a user namespace mapping uid {uid} to {} inside) cannot be made here either: {}",
            crate::VCAP_UID,
            blockers.join("; ")
        )
    };
    let fix = "run hydrant as root, or run `hydrant up --isolation none` (apps then run \
               unisolated as your user)"
        .to_owned();
    (reason, fix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn userns(clone: Option<&str>, max: Option<&str>, apparmor: Option<&str>) -> UsernsFacts {
        UsernsFacts {
            unprivileged_clone: clone.map(str::to_owned),
            max_user_namespaces: max.map(str::to_owned),
            apparmor_restrict: apparmor.map(str::to_owned),
        }
    }

    fn delegated(controllers: &str) -> CgroupFacts {
        CgroupFacts {
            v2: true,
            own: Some("/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope".into()),
            controllers: Some(controllers.into()),
            writable: true,
        }
    }

    #[test]
    fn each_user_namespace_blocker_names_its_file_and_the_sysctl_that_lifts_it() {
        let err = userns(Some("0"), Some("15000"), None)
            .verdict()
            .unwrap_err();
        assert!(err.contains("unprivileged_userns_clone is 0"), "{err}");
        assert!(
            err.contains("sysctl -w kernel.unprivileged_userns_clone=1"),
            "{err}"
        );
        let err = userns(None, Some("0"), None).verdict().unwrap_err();
        assert!(err.contains("max_user_namespaces is 0"), "{err}");
        assert!(err.contains("sysctl -w user.max_user_namespaces="), "{err}");
        let err = userns(None, None, None).verdict().unwrap_err();
        assert!(err.contains("CONFIG_USER_NS"), "{err}");
        let err = userns(Some("1"), Some("100"), Some("1"))
            .verdict()
            .unwrap_err();
        assert!(
            err.contains("apparmor_restrict_unprivileged_userns is 1"),
            "{err}"
        );
        let ok = userns(Some("1"), Some("100"), Some("0")).verdict().unwrap();
        assert!(ok.contains("max_user_namespaces 100"), "{ok}");
        // Kernels without Debian's switch allow them when the count does.
        assert!(userns(None, Some("96367"), None).verdict().is_ok());
    }

    #[test]
    fn cgroup_delegation_needs_v2_a_writable_own_cgroup_and_the_three_controllers() {
        let v1 = CgroupFacts::default().verdict(1000).unwrap_err();
        assert!(v1.contains("cgroup v1"), "{v1}");
        assert!(v1.contains("systemd.unified_cgroup_hierarchy=1"), "{v1}");
        let not_mine = CgroupFacts {
            writable: false,
            ..delegated("memory pids cpu")
        };
        let err = not_mine.verdict(1000).unwrap_err();
        assert!(err.contains("not delegated to uid 1000"), "{err}");
        assert!(
            err.contains("systemd-run --user --scope -p Delegate=yes"),
            "{err}"
        );
        // systemd's default delegation: memory and pids only.
        let err = delegated("memory pids").verdict(1000).unwrap_err();
        assert!(err.contains("lacks the cpu controller"), "{err}");
        assert!(err.contains("Delegate=cpu cpuset io memory pids"), "{err}");
        assert!(delegated("cpuset cpu io memory pids").verdict(1000).is_ok());
    }

    #[test]
    fn the_refusal_lists_every_blocker_or_says_what_hydrant_lacks() {
        let (reason, fix) = refusal(
            1000,
            &userns(Some("0"), Some("15000"), None),
            &CgroupFacts::default(),
        );
        assert!(reason.contains("runs as uid 1000"), "{reason}");
        assert!(reason.contains("uid 1000 to 2000 inside"), "{reason}");
        assert!(
            reason.contains("unprivileged_userns_clone is 0"),
            "{reason}"
        );
        assert!(reason.contains("cgroup v1"), "{reason}");
        assert!(fix.contains("--isolation none"), "{fix}");
        assert!(fix.contains("root"), "{fix}");
        let (reason, _) = refusal(
            1000,
            &userns(None, Some("15000"), None),
            &delegated("memory pids cpu"),
        );
        assert!(
            reason.contains("would allow rootless containers"),
            "{reason}"
        );
        assert!(reason.contains("does not run them yet"), "{reason}");
    }
}
