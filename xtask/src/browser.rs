//! Headless Chromium and ChromeDriver for kiln ui's browser tests and `bench ui`: found
//! in /usr/bin or on PATH (or `KILN_CHROMIUM` / `KILN_CHROMEDRIVER`), else installed
//! from Debian's `chromium` and `chromium-driver` packages with apt-get when this runs
//! as root.

use std::path::PathBuf;
use std::process::Command;

use crate::cmd::{self, Failure, Result};
use crate::paths;
use crate::setup::in_ci;

/// The two programs.
#[derive(Debug, Clone)]
pub struct Browser {
    /// The Chromium binary.
    pub chromium: PathBuf,
    /// The matching ChromeDriver.
    pub chromedriver: PathBuf,
}

/// Debian's packages of the two.
const PACKAGES: [&str; 2] = ["chromium", "chromium-driver"];

/// `env`, else the first of `names` in /usr/bin or on PATH.
fn find(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = paths::env_path(env).filter(|p| p.is_file()) {
        return Some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::iter::once(PathBuf::from("/usr/bin"))
        .chain(std::env::split_paths(&path))
        .collect();
    names
        .iter()
        .flat_map(|n| dirs.iter().map(move |d| d.join(n)))
        .find(|p| p.is_file())
}

fn found() -> Option<Browser> {
    Some(Browser {
        chromium: find("KILN_CHROMIUM", &["chromium", "chromium-browser"])?,
        chromedriver: find("KILN_CHROMEDRIVER", &["chromedriver"])?,
    })
}

/// Whether this process runs as root (apt-get needs it).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The browser, installed when missing. Where it cannot be installed: an error under
/// CI, a warning elsewhere (the browser tests then fail and say what to install).
pub fn ensure() -> Result<Option<Browser>> {
    if let Some(b) = found() {
        eprintln!(
            "setup: {:<24} {:<10} {}",
            "chromium",
            "found",
            b.chromium.display()
        );
        return Ok(Some(b));
    }
    let hint = format!(
        "install Debian's {} packages (`apt-get install {}`), or set KILN_CHROMIUM and \
         KILN_CHROMEDRIVER to a Chromium and its ChromeDriver",
        PACKAGES.join(" and "),
        PACKAGES.join(" ")
    );
    let can_apt = is_root() && cmd::probe(Command::new("apt-get").arg("--version"));
    if can_apt {
        eprintln!(
            "setup: installing {} with apt-get (kiln ui's browser tests)",
            PACKAGES.join(", ")
        );
        let updated = cmd::status(Command::new("apt-get").args(["update", "-qq"]), &hint)?;
        let installed = updated.success()
            && cmd::status(
                Command::new("apt-get")
                    .args(["install", "-y", "-qq", "--no-install-recommends"])
                    .args(PACKAGES)
                    .env("DEBIAN_FRONTEND", "noninteractive"),
                &hint,
            )?
            .success();
        if installed && let Some(b) = found() {
            eprintln!(
                "setup: {:<24} {:<10} {}",
                "chromium",
                "installed",
                b.chromium.display()
            );
            return Ok(Some(b));
        }
    }
    let message = format!("headless Chromium for kiln ui's browser tests is missing: {hint}");
    if in_ci() {
        return Err(Failure::msg(message));
    }
    eprintln!("setup: warning: {message}; the browser tests will fail until then");
    Ok(None)
}
