//! The one error type of the container crate. Messages reach operators (why `hydrant up` cannot
//! isolate apps, and how to fix it) and users (why their instance could not start), so each says
//! what failed and what to do about it.

/// Why a container, its cgroup or its network could not be made, used or removed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An external command (runc, ip, nft) failed.
    #[error("{program} {args}: {message}")]
    Command {
        /// The program run.
        program: &'static str,
        /// Its arguments, for the operator.
        args: String,
        /// What it printed on stderr, or why it could not run.
        message: String,
    },
    /// A file or directory the container needs could not be used.
    #[error("{what} {path:?}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A configuration value cannot be used.
    #[error("invalid container config: {field}: {message}")]
    Config {
        /// The field, as written in the config file.
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A program the platform runs is not installed.
    #[error(
        "`{program}` is not installed: install the Debian package `{package}` (apt-get install {package})"
    )]
    MissingProgram {
        /// The program.
        program: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// An egress rule cannot be used.
    #[error("egress rule `{rule}`: {message}")]
    InvalidRule {
        /// The rule, as protocol, destination and ports.
        rule: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// Every address of the container network's pool is in use.
    #[error(
        "no free address left in the container network {subnet}: stop some instances or give `network.subnet` a shorter prefix"
    )]
    PoolExhausted {
        /// The pool.
        subnet: String,
    },
    /// The container network clashes with something already on the host (another live
    /// process on the same bridge, or an interface inside the subnet); the message says which.
    #[error("cannot set up the container network: {0}")]
    NetworkConflict(String),
    /// This host cannot run containers (not root, no cgroups, no runtime): the message says
    /// why and how to fix it.
    #[error("cannot run apps in containers on this host: {reason}; {fix}")]
    Host {
        /// What is missing.
        reason: String,
        /// How to fix it (install, mount, run as root, or run with `--isolation none`).
        fix: String,
    },
    /// The OCI runtime spec could not be built from a container spec.
    #[error("cannot describe container {id} for the runtime: {message}")]
    Spec {
        /// The container.
        id: String,
        /// What was wrong.
        message: String,
    },
}
