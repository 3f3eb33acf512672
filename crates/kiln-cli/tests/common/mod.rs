//! Helpers shared by the kiln-cli integration tests: the built `kiln` binary, the
//! workspace root, and running a command that must succeed.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The `kiln` binary of this build.
pub fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

/// The workspace root (pipelines/, fixtures/).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `c`, failing the test with its stderr unless it exits with status 0.
pub fn ok(c: &mut Command) -> Output {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
