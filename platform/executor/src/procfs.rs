//! What an instance is using, read from `/proc` (cpu time and resident memory of its process
//! group) and from its directory (disk bytes): the raw material of container metrics and of
//! the memory quota.
//!
//! Invariant: reading never fails loudly. Processes come and go while `/proc` is walked, so a
//! vanished or unreadable entry is skipped and a group with no process reads as zero.

use std::path::Path;
use std::sync::OnceLock;

/// One sample of a process group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct GroupUsage {
    /// Processes in the group.
    pub(crate) processes: u32,
    /// Resident memory summed over the group, bytes.
    pub(crate) rss_bytes: u64,
    /// CPU time of the group (user + system, plus reaped children of its members), nanoseconds.
    pub(crate) cpu_nanos: u64,
}

fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| sysconf_or(nix::unistd::SysconfVar::CLK_TCK, 100))
}

fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| sysconf_or(nix::unistd::SysconfVar::PAGE_SIZE, 4096))
}

/// The kernel's `var` when it gives a positive one, else Linux's usual `default`.
fn sysconf_or(var: nix::unistd::SysconfVar, default: u64) -> u64 {
    nix::unistd::sysconf(var)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(default)
}

/// The fields of `/proc/<pid>/stat` we use: (pgrp, utime+stime+cutime+cstime ticks, rss pages).
pub(crate) fn parse_stat(stat: &str) -> Option<(i32, u64, u64)> {
    // The command name (field 2) may hold spaces and parentheses; everything after the last
    // ')' is whitespace-separated, starting at field 3 (state).
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).copied();
    let pgrp = field(5)?.parse().ok()?;
    let mut ticks = 0u64;
    for n in 14..=17 {
        // cutime/cstime are signed in the kernel's format; negative never happens in practice.
        ticks = ticks.saturating_add(field(n)?.parse::<i64>().ok()?.max(0).unsigned_abs());
    }
    let rss = field(24)?.parse::<i64>().ok()?.max(0).unsigned_abs();
    Some((pgrp, ticks, rss))
}

/// Samples every process whose process group is `pgid`.
pub(crate) fn sample_group(pgid: i32) -> GroupUsage {
    let mut usage = GroupUsage::default();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return usage;
    };
    let mut ticks = 0u64;
    let mut pages = 0u64;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((pgrp, t, rss)) = parse_stat(&stat)
            && pgrp == pgid
        {
            usage.processes += 1;
            ticks = ticks.saturating_add(t);
            pages = pages.saturating_add(rss);
        }
    }
    usage.rss_bytes = pages.saturating_mul(page_size());
    usage.cpu_nanos = ticks.saturating_mul(1_000_000_000 / clock_ticks());
    usage
}

/// Bytes used by the files under `dir` (apparent sizes; symlinks not followed). Stops counting
/// after `max_entries` entries so a pathological tree cannot stall the sampler.
pub(crate) fn dir_size(dir: &Path, max_entries: usize) -> u64 {
    let mut total = 0u64;
    let mut seen = 0usize;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > max_entries {
                return total;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total = total.saturating_add(meta.len());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_names() {
        let stat = "4242 (my (evil) app) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 1 2 20 0 1 0 \
                    100 123456 321 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((4242, 13, 321)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1"), None);
    }

    #[test]
    fn samples_our_own_group() {
        let pgid = nix::unistd::getpgrp().as_raw();
        let usage = sample_group(pgid);
        assert!(usage.processes >= 1);
        assert!(usage.rss_bytes > 0);
    }

    #[test]
    fn measures_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a"), vec![0u8; 1000]).unwrap();
        std::fs::write(dir.path().join("sub/b"), vec![0u8; 24]).unwrap();
        assert_eq!(dir_size(dir.path(), 100), 1024);
    }
}
