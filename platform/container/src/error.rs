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
}
