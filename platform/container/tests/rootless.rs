//! A platform started by an unprivileged user is told exactly why it gets no containers: this
//! test (run as root, as CI does) runs the host check again as `nobody` through `setpriv`, and
//! checks the answer against what the kernel itself says about user namespaces and cgroup
//! delegation, so it names the real blocker on whatever kernel runs it.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::process::Command;

use hydrant_container::{Config, Containers};

const NOBODY: u32 = 65_534;
const PROBE_ENV: &str = "HYDRANT_ROOTLESS_PROBE";
const MARK: &str = "HOST-CHECK: ";

/// Run by [`an_unprivileged_user_is_told_what_blocks_rootless_containers`] as `nobody`: prints
/// the host check's answer.
#[test]
#[ignore = "a helper: the rootless test runs it as an unprivileged user"]
fn host_check_as_the_invoking_user() {
    assert!(
        std::env::var_os(PROBE_ENV).is_some(),
        "run only by an_unprivileged_user_is_told_what_blocks_rootless_containers"
    );
    match Containers::check_host(&Config::default()) {
        Ok(()) => println!("{MARK}OK"),
        Err(e) => println!("{MARK}{e}"),
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_owned())
}

#[test]
fn an_unprivileged_user_is_told_what_blocks_rootless_containers() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test switches to the unprivileged user nobody with setpriv, which needs root: \
         run it as root, as CI does"
    );
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--",
        ])
        .arg(&exe)
        .args([
            "--ignored",
            "--exact",
            "host_check_as_the_invoking_user",
            "--nocapture",
        ])
        .env(PROBE_ENV, "1")
        .output()
        .expect("setpriv (Debian package util-linux) must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the probe failed: {stdout}{stderr}");
    let answer = stdout
        .lines()
        .find_map(|l| l.strip_prefix(MARK))
        .unwrap_or_else(|| panic!("the probe printed no answer: {stdout}{stderr}"));
    eprintln!("as nobody: {answer}");

    // Refused, as this user, with the way out.
    assert!(answer.contains("runs as uid 65534"), "{answer}");
    assert!(answer.contains("--isolation none"), "{answer}");
    assert!(answer.contains("run hydrant as root"), "{answer}");

    // The blocker the kernel itself reports is the one named.
    let clone_off = read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0");
    let max_zero = read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0");
    let apparmor =
        read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1");
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if clone_off {
        assert!(
            answer.contains("unprivileged_userns_clone is 0"),
            "{answer}"
        );
    } else if max_zero {
        assert!(answer.contains("max_user_namespaces is 0"), "{answer}");
    } else if apparmor {
        assert!(
            answer.contains("apparmor_restrict_unprivileged_userns is 1"),
            "{answer}"
        );
    }
    if v2 {
        // nobody runs in root's cgroup here, which is not delegated to it.
        assert!(answer.contains("not delegated to uid 65534"), "{answer}");
    } else {
        assert!(answer.contains("cgroup v1"), "{answer}");
        assert!(
            answer.contains("systemd.unified_cgroup_hierarchy=1"),
            "{answer}"
        );
    }
    assert!(
        answer.contains("cannot be made here either"),
        "a blocker was found, so the answer must not suggest rootless works: {answer}"
    );
}
