//! Build identity for run.json and the stage cache: the compiler version
//! (`KILN_RUSTC_VERSION`), and a SHA-256 of the sources of every kiln crate and of
//! Cargo.lock (`KILN_SRC_<NAME>`), so a stage reruns when the code that computes it
//! changes and never otherwise (see src/key.rs). Outside this workspace (a packaged
//! crate) the sources of the other crates are not there and the version stands in.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The crates whose sources are hashed, and the env var suffix of each.
const CRATES: [(&str, &str); 7] = [
    ("kiln-core", "CORE"),
    ("kiln-preprocess", "PREPROCESS"),
    ("kiln-train", "TRAIN"),
    ("kiln-optimize", "OPTIMIZE"),
    ("kiln-evaluate", "EVALUATE"),
    ("kiln-deploy", "DEPLOY"),
    ("kiln-pipeline", "PIPELINE"),
];

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=KILN_RUSTC_VERSION={version}");
    println!("cargo:rerun-if-env-changed=RUSTC");

    let here = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let crates = here.join("..");
    let fallback = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    for (name, key) in CRATES {
        let dir = crates.join(name);
        let hash = if dir.join("src").is_dir() {
            for p in ["src", "Cargo.toml", "build.rs", "proto"] {
                if dir.join(p).exists() {
                    println!("cargo:rerun-if-changed={}", dir.join(p).display());
                }
            }
            tree_hash(&dir)
        } else {
            fallback.clone()
        };
        println!("cargo:rustc-env=KILN_SRC_{key}={hash}");
    }
    // each stage kind's glue in this crate, on its own, and the glue they share
    for kind in [
        "preprocess",
        "train",
        "optimize",
        "evaluate",
        "deploy",
        "mod",
    ] {
        let file = here.join("src/stage").join(format!("{kind}.rs"));
        let hash = std::fs::read(&file)
            .map(|b| hex(&Sha256::digest(&b)))
            .unwrap_or_else(|_| fallback.clone());
        println!(
            "cargo:rustc-env=KILN_SRC_{}={hash}",
            if kind == "mod" {
                "PIPELINE_STAGE_MOD".to_string()
            } else {
                format!("STAGE_{}", kind.to_uppercase())
            }
        );
    }
    let lock = crates.join("../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let lock_hash = std::fs::read(&lock)
        .map(|b| hex(&Sha256::digest(&b)))
        .unwrap_or(fallback);
    println!("cargo:rustc-env=KILN_SRC_LOCK={lock_hash}");
}

/// SHA-256 over the crate's `src/` files, `Cargo.toml`, `build.rs` and `proto/`: each
/// file's path (relative, `/`-separated), a NUL and its bytes' own hash, in path order.
fn tree_hash(dir: &Path) -> String {
    let mut files = Vec::new();
    for p in ["src", "proto"] {
        collect(&dir.join(p), &mut files);
    }
    for p in ["Cargo.toml", "build.rs"] {
        if dir.join(p).is_file() {
            files.push(dir.join(p));
        }
    }
    let mut rel: Vec<(String, PathBuf)> = files
        .into_iter()
        .filter_map(|f| {
            let r = f
                .strip_prefix(dir)
                .ok()?
                .to_string_lossy()
                .replace('\\', "/");
            Some((r, f))
        })
        .collect();
    rel.sort();
    let mut h = Sha256::new();
    for (r, f) in rel {
        h.update(r.as_bytes());
        h.update([0]);
        h.update(Sha256::digest(std::fs::read(&f).unwrap_or_default()));
    }
    hex(&h.finalize())
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
