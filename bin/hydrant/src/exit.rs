//! Exit codes a script can rely on, and the error type that carries one.
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | success |
//! | 1 | the operation failed (the platform refused it, staging failed, an instance crashed) |
//! | 2 | bad input: a flag, a size, a directory that does not exist (clap uses 2 as well) |
//! | 3 | `hydrant bench`: the ledger did not balance |
//! | 4 | not found: no such app, route or user (or not visible to you) |
//! | 5 | cannot reach the platform, or not logged in |
//! | 6 | timed out waiting (staging or instances starting) |

use std::fmt;
use std::process::ExitCode;

/// Bad input.
pub const USAGE: u8 = 2;
/// Not found.
pub const NOT_FOUND: u8 = 4;
/// Cannot reach the platform or not logged in.
pub const UNREACHABLE: u8 = 5;
/// A wait ran out.
pub const TIMEOUT: u8 = 6;

/// An error with the exit code it should end the process with.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

/// Bad input (exit 2).
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    CliError {
        code: USAGE,
        message: message.into(),
    }
    .into()
}

/// What the command names does not exist, or is not the caller's to see (exit 4).
pub fn not_found(message: impl Into<String>) -> anyhow::Error {
    CliError {
        code: NOT_FOUND,
        message: message.into(),
    }
    .into()
}

/// No platform to ask: none targeted, or it did not answer (exit 5).
pub fn unreachable(message: impl Into<String>) -> anyhow::Error {
    CliError {
        code: UNREACHABLE,
        message: message.into(),
    }
    .into()
}

/// A wait that ran out (exit 6).
pub fn timeout(message: impl Into<String>) -> anyhow::Error {
    CliError {
        code: TIMEOUT,
        message: message.into(),
    }
    .into()
}

/// The exit code for an error anywhere in a command.
pub fn code_for(error: &anyhow::Error) -> ExitCode {
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<CliError>() {
            return ExitCode::from(e.code);
        }
        if let Some(e) = cause.downcast_ref::<hydrant_api::Error>() {
            return ExitCode::from(match e {
                hydrant_api::Error::Api { status: 404, .. } => NOT_FOUND,
                hydrant_api::Error::Api { status: 401, .. }
                | hydrant_api::Error::Transport { .. } => UNREACHABLE,
                hydrant_api::Error::Api {
                    status: 400 | 413 | 422,
                    ..
                }
                | hydrant_api::Error::Invalid(_) => USAGE,
                _ => 1,
            });
        }
    }
    ExitCode::FAILURE
}
