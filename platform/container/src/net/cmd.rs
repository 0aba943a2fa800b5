//! Running `ip` (iproute2) and `nft` (nftables): arguments as a list, never through a shell;
//! scripts (an `ip -batch` or an nft ruleset) on stdin.
//!
//! Invariant: a missing program is reported with the Debian package that provides it, and a
//! failed command with its arguments and what it printed, so the operator can rerun it by hand.

use std::process::Stdio;

use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

use crate::Error;

/// The external programs this module runs, with the Debian package that provides each.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Program {
    /// `ip`, from `iproute2`.
    Ip,
    /// `nft`, from `nftables`.
    Nft,
}

impl Program {
    fn name(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::Nft => "nft",
        }
    }

    fn package(self) -> &'static str {
        match self {
            Self::Ip => "iproute2",
            Self::Nft => "nftables",
        }
    }
}

/// Runs `program args...`, feeding `stdin` when given; returns stdout, or an error carrying
/// stderr.
pub(crate) async fn run(
    program: Program,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, Error> {
    let name = program.name();
    let shown = || {
        let mut shown = args.join(" ");
        if let Some(script) = stdin {
            shown.push_str(" <<EOF\n");
            shown.push_str(script);
            shown.push_str("EOF");
        }
        shown
    };
    let mut command = Command::new(name);
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::MissingProgram {
            program: name,
            package: program.package(),
        },
        _ => Error::Command {
            program: name,
            args: shown(),
            message: e.to_string(),
        },
    })?;
    if let (Some(script), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error means the program exited early; its stderr below says why.
        let _ = pipe.write_all(script.as_bytes()).await;
        drop(pipe);
    }
    let output = child.wait_with_output().await.map_err(|e| Error::Command {
        program: name,
        args: shown(),
        message: e.to_string(),
    })?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let message = match stderr.trim() {
        "" => format!("exited with {}", output.status),
        text => text.to_owned(),
    };
    Err(Error::Command {
        program: name,
        args: shown(),
        message,
    })
}

/// Whether an error says the object was already gone, which removal treats as done.
pub(crate) fn is_gone(error: &Error) -> bool {
    match error {
        Error::Command { message, .. } => {
            message.contains("No such file or directory")
                || message.contains("Cannot find device")
                || message.contains("No such device")
                || message.contains("does not exist")
        }
        _ => false,
    }
}
