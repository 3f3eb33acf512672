//! Failures and helpers for running child processes (cargo, python, kiln).

use std::ffi::OsString;
use std::fmt::Display;
use std::io;
use std::process::{Command, ExitCode, ExitStatus};

/// Why a task stopped early.
#[derive(Debug)]
pub enum Failure {
    /// Something the user can fix; the message is lowercase and says what to do next.
    Message(String),
    /// The command line was wrong; reported like `Message` but exits with code 2.
    Usage(String),
    /// A child process failed and already said why; exit with its code.
    Exit(u8),
}

impl Failure {
    /// Builds a [`Failure::Message`] from anything printable.
    pub fn msg(message: impl Display) -> Self {
        Failure::Message(message.to_string())
    }

    /// Prints the failure (if it has a message) and returns the process exit code.
    pub fn report(self) -> ExitCode {
        match self {
            Failure::Message(message) => {
                eprintln!("xtask: error: {message}");
                ExitCode::FAILURE
            }
            Failure::Usage(message) => {
                eprintln!("xtask: error: {message}");
                ExitCode::from(2)
            }
            Failure::Exit(code) => ExitCode::from(code),
        }
    }
}

/// Result of a task.
pub type Result<T = ()> = std::result::Result<T, Failure>;

/// A `cargo` command: the cargo that runs xtask (env `CARGO`), else `cargo` on PATH,
/// without the variables `cargo run` set for xtask itself.
///
/// Build scripts may ask cargo to rerun when a variable changes (ring's asks for
/// `CARGO_MANIFEST_DIR`), and cargo compares the value in its own environment: a child
/// cargo that inherited xtask's `CARGO_MANIFEST_DIR` saw a change against a plain
/// `cargo build`, rebuilt ring and everything above it (polars: 8-15 minutes), and the
/// next plain build rebuilt it back. Without these variables both see the same.
pub fn cargo() -> Command {
    let mut command =
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")));
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(set_by_cargo_run) {
            command.env_remove(&key);
        }
    }
    command
}

/// Whether `cargo run` sets this variable for the program it runs (the package's own
/// metadata), as opposed to configuration that a child cargo should inherit.
fn set_by_cargo_run(key: &str) -> bool {
    [
        "CARGO_MANIFEST_",
        "CARGO_PKG_",
        "CARGO_CRATE_",
        "CARGO_BIN_",
    ]
    .iter()
    .any(|p| key.starts_with(p))
        || key == "CARGO_PRIMARY_PACKAGE"
}

/// A printable form of a command line, for logs and error messages.
pub fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Runs `command` with inherited stdio and returns its exit status.
///
/// Failing to start it is an error that names the program; `hint` says what to do
/// when the program is missing.
pub fn status(command: &mut Command, hint: &str) -> Result<ExitStatus> {
    command
        .status()
        .map_err(|err| spawn_error(command, &err, hint))
}

/// Runs `command` with inherited stdio and fails, passing on its exit code, unless it
/// succeeds.
pub fn run(command: &mut Command, hint: &str) -> Result {
    eprintln!("xtask: running {}", describe(command));
    let status = status(command, hint)?;
    if status.success() {
        Ok(())
    } else {
        eprintln!("xtask: `{}` failed ({status})", describe(command));
        Err(Failure::Exit(exit_code(status)))
    }
}

/// Runs `command` with its output captured; `Ok(true)` if it exited with 0.
///
/// Used for probes ("does this work?"), so a missing program is `Ok(false)`.
pub fn probe(command: &mut Command) -> bool {
    command
        .stdin(std::process::Stdio::null())
        .output()
        .map(|output| output.status.success())
        .unwrap_or(false)
}

/// The error for a program that could not be started.
pub fn spawn_error(command: &Command, err: &io::Error, hint: &str) -> Failure {
    let program = command.get_program().to_string_lossy();
    if err.kind() == io::ErrorKind::NotFound {
        Failure::msg(format!("`{program}` was not found; {hint}"))
    } else {
        Failure::msg(format!("could not start `{program}`: {err}; {hint}"))
    }
}

/// The exit code to pass on for a child's status (128 + signal when it was killed).
pub fn exit_code(status: ExitStatus) -> u8 {
    if let Some(code) = status.code() {
        return u8::try_from(code)
            .ok()
            .filter(|code| *code != 0)
            .unwrap_or(1);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return u8::try_from(128 + signal).unwrap_or(1);
        }
    }
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The child cargo does not see what `cargo run` set for xtask (under `cargo xtask
    /// test` this process has them all), and keeps cargo's configuration.
    #[test]
    fn child_cargo_drops_what_cargo_run_set() {
        for key in [
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
            "CARGO_CRATE_NAME",
            "CARGO_BIN_NAME",
            "CARGO_PRIMARY_PACKAGE",
        ] {
            assert!(set_by_cargo_run(key), "{key}");
        }
        for key in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_JOBS",
            "PATH",
        ] {
            assert!(!set_by_cargo_run(key), "{key}");
        }
        // the test binary itself runs with CARGO_MANIFEST_DIR set by cargo
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let c = cargo();
        let removed: Vec<_> = c
            .get_envs()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        assert!(
            removed.contains(&"CARGO_MANIFEST_DIR".to_string()),
            "{removed:?}"
        );
        assert!(!removed.contains(&"CARGO_HOME".to_string()));
    }
}
