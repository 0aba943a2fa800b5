//! The seccomp profile of every container: allow by default, refuse with `EPERM` the system
//! calls that reach past the container (kernel modules, mounts, namespaces, tracing, keyrings,
//! BPF, reboot, swap, clock changes), in the spirit of Docker's and Garden's default profiles.
//!
//! Invariant: a refused call fails with an error the program can report (`EPERM`, or `ENOSYS`
//! for `clone3` so libc falls back to `clone`, whose namespace flags are filtered), never by
//! killing the process.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};

/// System calls refused outright.
const DENIED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "personality",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "sysfs",
    "syslog",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vhangup",
    "vm86",
    "vm86old",
];

/// `clone` flags that would make a new namespace.
const NAMESPACE_FLAGS: [u64; 7] = [
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

fn rule(names: &[&str], errno: u32, args: Option<Vec<LinuxSeccompArg>>) -> LinuxSyscall {
    let mut syscall = LinuxSyscall::default();
    syscall.set_names(names.iter().map(|n| (*n).to_owned()).collect());
    syscall.set_action(LinuxSeccompAction::ScmpActErrno);
    syscall.set_errno_ret(Some(errno));
    syscall.set_args(args);
    syscall
}

/// The profile.
pub(crate) fn profile() -> Result<LinuxSeccomp, oci_spec::OciSpecError> {
    let mut syscalls = vec![rule(DENIED, EPERM, None), rule(&["clone3"], ENOSYS, None)];
    // One rule per flag: seccomp can only compare, so "any of these bits" is seven rules, each
    // matching when its bit is set. (On s390 the flags are the second argument; not a target.)
    for flag in NAMESPACE_FLAGS {
        // MASKED_EQ compares (arg & value) == value_two.
        let arg = LinuxSeccompArgBuilder::default()
            .index(0usize)
            .value(flag)
            .value_two(flag)
            .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
            .build()?;
        syscalls.push(rule(&["clone"], EPERM, Some(vec![arg])));
    }
    let mut seccomp = LinuxSeccomp::default();
    seccomp.set_default_action(LinuxSeccompAction::ScmpActAllow);
    // The native architecture and the compat ones its kernel runs, so a 32-bit binary cannot
    // slip past the filter.
    let architectures = if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    };
    seccomp.set_architectures(Some(architectures));
    seccomp.set_syscalls(Some(syscalls));
    Ok(seccomp)
}
