//! Where things live: the workspace root, the kiln cache and cargo's target folder.

use std::env;
use std::path::{Path, PathBuf};

use crate::cmd::{Failure, Result};

/// The ONNX Runtime version kiln is built against (ort's `api-31`).
pub const ORT_VERSION: &str = "1.31.1";

/// The workspace root: the folder above xtask's manifest.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// A non-empty environment variable, or `None`.
pub fn env_path(name: &str) -> Option<PathBuf> {
    env::var_os(name)
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
}

/// `path` made absolute against the current directory (it is passed to children that
/// may run elsewhere).
pub fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|err| {
        Failure::msg(format!(
            "cannot make {} absolute: {err}; give an absolute path",
            path.display()
        ))
    })
}

/// The kiln cache: `$KILN_CACHE_DIR`, else `$HOME/.cache/kiln`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = env_path("KILN_CACHE_DIR") {
        return absolute(&dir);
    }
    match env_path("HOME") {
        Some(home) => absolute(&home.join(".cache").join("kiln")),
        None => Err(Failure::msg(
            "HOME is not set, so there is no ~/.cache/kiln; set HOME or KILN_CACHE_DIR",
        )),
    }
}

/// Cargo's target folder: `$CARGO_TARGET_DIR` (relative to the workspace root, where
/// xtask runs cargo), else `<workspace root>/target`.
pub fn target_dir() -> PathBuf {
    let root = workspace_root();
    match env_path("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}
