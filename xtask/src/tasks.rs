//! The subcommands that run cargo and kiln: `test`, `pipeline` and `ci`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::{self, Failure, Result};
use crate::paths;
use crate::setup::{self, Tools};

/// Hint for a missing cargo.
const NO_CARGO: &str =
    "install Rust with rustup (https://rustup.rs) and run it through `cargo xtask`";

/// The pipeline `cargo xtask pipeline` runs when given no name.
const DEFAULT_PIPELINE: &str = "mnist-mlp";

/// `cargo xtask test [args…]`: setup, then `cargo test --workspace [args…]`.
pub fn test(args: &[String]) -> Result {
    // snapshot tests rewrite their expectation under this variable (and then fail); CI
    // must compare, never rewrite
    if std::env::var_os("KILN_UPDATE_SNAPSHOTS").is_some()
        && std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
    {
        return Err(Failure::Usage(
            "KILN_UPDATE_SNAPSHOTS is set under CI; snapshots are only rewritten by hand, \
             and the rewrite reviewed with `git diff`"
                .into(),
        ));
    }
    let mut tools = setup::setup()?;
    tools.browser = crate::browser::ensure()?;
    cargo_test(&tools, args)
}

/// Runs `cargo test --workspace [args…]` in the workspace root with the tools' env vars.
fn cargo_test(tools: &Tools, args: &[String]) -> Result {
    let mut cargo = cmd::cargo();
    cargo
        .current_dir(paths::workspace_root())
        .args(["test", "--workspace"])
        .args(args);
    cmd::run(tools.apply(&mut cargo), NO_CARGO)
}

/// `cargo xtask pipeline [NAME|FILE] [args…]`: setup, build `kiln` in release and run
/// `kiln run FILE [args…]`, exiting with kiln's exit code.
pub fn pipeline(args: &[String]) -> Result {
    let (file, rest) = match args.split_first() {
        Some((first, rest)) if !first.starts_with('-') => (resolve_pipeline(first)?, rest),
        _ => (resolve_pipeline(DEFAULT_PIPELINE)?, args),
    };
    let tools = setup::setup()?;
    let root = paths::workspace_root();
    let mut build = cmd::cargo();
    build
        .current_dir(&root)
        .args(["build", "--release", "-p", "kiln-cli"]);
    cmd::run(tools.apply(&mut build), NO_CARGO)?;

    let kiln = paths::target_dir()
        .join("release")
        .join(format!("kiln{}", std::env::consts::EXE_SUFFIX));
    if !kiln.is_file() {
        return Err(Failure::msg(format!(
            "the build succeeded but {} is missing; if cargo's target folder is set in a \
             config file, set CARGO_TARGET_DIR to it instead",
            kiln.display()
        )));
    }
    let mut run = Command::new(&kiln);
    run.arg("run").arg(&file).args(rest);
    cmd::run(
        tools.apply(&mut run),
        "run `cargo build --release -p kiln-cli` and try again",
    )
}

/// The pipeline file for `NAME` (→ `<root>/pipelines/NAME.toml`) or `FILE` (a path that
/// has a slash or ends in `.toml`, taken from the current directory).
fn resolve_pipeline(arg: &str) -> Result<PathBuf> {
    let root = paths::workspace_root();
    let is_file = arg.contains('/') || arg.ends_with(".toml");
    let path = if is_file {
        paths::absolute(Path::new(arg))?
    } else {
        root.join("pipelines").join(format!("{arg}.toml"))
    };
    if path.is_file() {
        return Ok(path);
    }
    let known = pipeline_names(&root.join("pipelines"));
    let known = if known.is_empty() {
        "there are none in pipelines/ yet".to_string()
    } else {
        format!("known names: {}", known.join(", "))
    };
    Err(Failure::msg(format!(
        "pipeline file {} not found; give a file path or a name from pipelines/ ({known})",
        path.display()
    )))
}

/// The names of the `*.toml` files in `dir`, sorted.
fn pipeline_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            if path.extension()? != "toml" {
                return None;
            }
            Some(path.file_stem()?.to_string_lossy().into_owned())
        })
        .collect();
    names.sort();
    names
}

/// `cargo xtask ci [--no-test]`: format check, clippy and rustdoc with warnings as
/// errors, setup + workspace tests (`--no-test` leaves them to a separate `cargo xtask
/// test`, as .ci/run does), then the `ci-check` feature check of kiln-train when that
/// feature exists.
pub fn ci(args: &[String]) -> Result {
    let run_tests = match args {
        [] => true,
        [a] if a == "--no-test" => false,
        _ => {
            return Err(Failure::Usage("usage: cargo xtask ci [--no-test]".into()));
        }
    };
    let root = paths::workspace_root();

    if cmd::probe(cmd::cargo().args(["fmt", "--version"])) {
        cmd::run(
            cmd::cargo()
                .current_dir(&root)
                .args(["fmt", "--all", "--", "--check"]),
            NO_CARGO,
        )
        .inspect_err(|_| eprintln!("xtask: run `cargo fmt --all` to fix the formatting"))?;
    } else {
        eprintln!(
            "xtask: note: rustfmt is not installed, skipping the format check \
             (`rustup component add rustfmt` adds it)"
        );
    }

    // lints and docs as errors (clippy and rustdoc come with rustup's default profile)
    if !cmd::probe(cmd::cargo().args(["clippy", "--version"])) {
        eprintln!("xtask: clippy is missing; trying `rustup component add clippy`");
        let _ = cmd::probe(Command::new("rustup").args(["component", "add", "clippy"]));
    }
    if cmd::probe(cmd::cargo().args(["clippy", "--version"])) {
        cmd::run(
            cmd::cargo().current_dir(&root).args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
            NO_CARGO,
        )
        .inspect_err(|_| {
            eprintln!("xtask: clippy found problems; fix them (or run `cargo clippy --fix`)")
        })?;
    } else {
        return Err(Failure::msg(
            "clippy is not installed; `rustup component add clippy` adds it (CI runs it with -D warnings)",
        ));
    }
    cmd::run(
        cmd::cargo()
            .current_dir(&root)
            .env("RUSTDOCFLAGS", "-D warnings")
            .args(["doc", "--workspace", "--no-deps"]),
        NO_CARGO,
    )
    .inspect_err(|_| eprintln!("xtask: rustdoc found problems in the doc comments"))?;

    let tools = setup::setup()?;
    if run_tests {
        cargo_test(&tools, &[])?;
    }

    let manifest = root.join("crates").join("kiln-train").join("Cargo.toml");
    let text = fs::read_to_string(&manifest).map_err(|err| {
        Failure::msg(format!(
            "cannot read {}: {err}; run from a complete checkout",
            manifest.display()
        ))
    })?;
    if has_feature(&text, "ci-check") {
        let mut check = cmd::cargo();
        check
            .current_dir(&root)
            .args(["check", "-p", "kiln-train", "--features", "cuda,ci-check"]);
        cmd::run(tools.apply(&mut check), NO_CARGO)?;
    } else {
        eprintln!(
            "xtask: note: kiln-train has no `ci-check` feature, skipping its cuda feature check"
        );
    }
    // kiln with the DataFusion / Ballista engines (`--features cluster`) still compiles
    cmd::run(
        tools.apply(cmd::cargo().current_dir(&root).args([
            "check",
            "-p",
            "kiln-cli",
            "--features",
            "cluster",
        ])),
        NO_CARGO,
    )?;
    eprintln!("xtask: ci passed");
    Ok(())
}

/// Whether a Cargo.toml text declares `feature` in its `[features]` table.
fn has_feature(manifest: &str, feature: &str) -> bool {
    let mut in_features = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_features = line.trim_end_matches(|c: char| c != ']') == "[features]";
            continue;
        }
        if !in_features {
            continue;
        }
        if let Some((key, _)) = line.split_once('=') {
            let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
            if key == feature {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::has_feature;

    #[test]
    fn finds_feature_only_in_features_table() {
        let manifest = "[package]\nname = \"kiln-train\"\n\n[features]\ncuda = [\"dfdx/cuda\"]\n\
                        \"ci-check\" = []\n\n[dependencies]\nci-check = \"1\"\n";
        assert!(has_feature(manifest, "ci-check"));
        assert!(has_feature(manifest, "cuda"));
        assert!(!has_feature(manifest, "std"));
        let without = "[features]\ncuda = []\n[dependencies]\nci-check = \"1\"\n";
        assert!(!has_feature(without, "ci-check"));
        let commented = "[features] # stage features\nci-check = [\"cuda\"]\n";
        assert!(has_feature(commented, "ci-check"));
    }
}
