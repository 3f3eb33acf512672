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

/// A `cargo` command: the cargo that runs xtask (env `CARGO`), else `cargo` on PATH.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")))
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
