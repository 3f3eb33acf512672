//! `cargo xtask`: the kiln workspace's task runner (setup, test, pipeline, ci, bench).
//!
//! It depends on nothing (std only) so it builds in seconds, and it knows nothing of
//! kiln's crates: it runs `cargo`, `python3` and the `kiln` binary.

mod bench;
mod bench_cluster;
mod bench_cnn;
mod bench_prep;
mod bench_reliability;
mod bench_scale;
mod bench_serve;
mod bench_stages;
mod bench_tabular;
mod bench_ui;
mod browser;
mod cmd;
mod paths;
mod setup;
mod tasks;

use std::process::ExitCode;

use cmd::Failure;

/// The usage text printed by `cargo xtask help` and with no arguments.
const USAGE: &str = "\
usage: cargo xtask <command> [args...]

commands:
  setup                      fetch ONNX Runtime 1.31.1 and make the python venv (onnx,
                             onnxruntime) in the kiln cache; prints their paths
  test [args...]             setup (and headless Chromium with ChromeDriver for kiln ui's
                             browser tests: Debian's chromium, chromium-driver via apt-get
                             when missing), then `cargo test --workspace [args...]`
  pipeline [NAME|FILE] [args...]
                             setup, build `kiln` in release and run `kiln run FILE [args...]`;
                             NAME means pipelines/NAME.toml, the default is mnist-mlp
  ci [--no-test]             what CI runs: format check, clippy and rustdoc (warnings are
                             errors), tests (unless --no-test), feature checks
  bench [preprocess|train|cnn|optimize|e2e|serve|tabular|scale|ui|cluster|all] [--peers] [--pairs N]
        [--seconds N] [--clients N] [--flood-seconds N] [--soak-seconds N] [--seeds N]
        [--rows N,N] [--write-docs]
                             kiln vs PyTorch (+ onnxruntime) side by side, A B A B after a
                             warm-up; medians, ratios; results in target/bench/; --peers
                             installs the peers into target/bench-venv (several GB);
                             --write-docs updates docs/benchmarks.md; serve: kiln serve
                             under --clients N (8) keep-alive clients for --seconds N (30),
                             tabular (not in all): 13 public tables through `kiln init`'s
                             pipelines against scikit-learn's defaults, --seeds N (3);
                             its latency under a flood (--flood-seconds N, 15) and RSS over
                             a keep-alive soak (--soak-seconds N, 60), and kiln predict vs
                             Python onnxruntime at batch 1 and 1024; scale (not in all):
                             seeded 30-column tables of --rows N,N (1M, 5M, 20M) through
                             the whole pipeline, the stages after preprocess streamed and in
                             memory, and kiln predict; wall time and peak memory; ui (not in
                             all): kiln ui over 200 runs, server answers, page loads in
                             headless Chromium (installed as for `test`) and server RSS;
                             cluster (not in all): one preprocess of a --rows N (20M)
                             table on polars streaming, DataFusion in-process and a
                             loopback Ballista cluster of 1 and 2 executors
  help                       this text

environment:
  KILN_CACHE_DIR             cache folder (default ~/.cache/kiln)
  ORT_DYLIB_PATH             an existing libonnxruntime.so to use instead of the cached one
  CARGO_TARGET_DIR           where cargo builds (default <workspace>/target)

child processes get ORT_DYLIB_PATH=<onnx runtime library> and KILN_PYTHON=<venv python>";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, rest) = match args.split_first() {
        Some((command, rest)) => (command.as_str(), rest),
        None => ("help", &[][..]),
    };
    let result = match command {
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(())
        }
        "setup" => setup::setup().map(|tools| tools.print()),
        "test" => tasks::test(rest),
        "pipeline" => tasks::pipeline(rest),
        "ci" => tasks::ci(rest),
        "bench" => bench::bench(rest),
        other => Err(Failure::Usage(format!(
            "unknown command `{other}`; run `cargo xtask help` for the list"
        ))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}
