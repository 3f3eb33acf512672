//! `cargo xtask bench preprocess|train|optimize|e2e`: kiln's stages against their peers
//! (pandas + scikit-learn and Python polars, PyTorch, fp32 against its compressed forms,
//! a PyTorch + onnxruntime script), each an A B A B loop after a warm-up returning
//! [`Figure`]s for bench.rs to print and write.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::bench::{Figure, field, json_line, tempdir_in, timed, wall_time};
use crate::cmd::{self, Failure, Result};
use crate::paths;
use crate::setup;

/// Training throughput: one epoch of MNIST at 1 and 2 threads, kiln vs PyTorch, and the
/// sgemm peak that bounds both.
pub(crate) fn bench_train(
    root: &Path,
    python: &Path,
    peer: bool,
    pairs: usize,
) -> Result<Vec<Figure>> {
    let exe = paths::target_dir().join("release/examples/bench_train");
    let data = root.join("fixtures/mnist/train");
    let mut figures = Vec::new();
    for threads in [1usize, 2] {
        let kiln = || -> Result<f64> {
            let mut c = Command::new(&exe);
            c.arg(&data).env("RAYON_NUM_THREADS", threads.to_string());
            field(&json_line(&mut c)?, "samples_per_sec")
        };
        let torch = || -> Result<f64> {
            let mut c = Command::new(python);
            c.current_dir(root.join("bench/peers"))
                .arg("train_torch.py")
                .arg(&data)
                .arg(threads.to_string());
            field(&json_line(&mut c)?, "samples_per_sec")
        };
        let mut f = Figure {
            name: format!(
                "train samples/s, {threads} thread{}",
                if threads > 1 { "s" } else { "" }
            ),
            unit: "samples/s",
            higher_is_better: true,
            kiln: Vec::new(),
            peer: Vec::new(),
        };
        // warm-up (page cache, CPU clocks), then A B A B ...
        kiln()?;
        if peer {
            torch()?;
        }
        for i in 0..pairs {
            eprintln!("xtask: train, {threads} thread(s), pair {}/{pairs}", i + 1);
            f.kiln.push(kiln()?);
            if peer {
                f.peer.push(torch()?);
            }
        }
        let mut c = Command::new(&exe);
        c.args(["--sgemm", "2048"])
            .env("RAYON_NUM_THREADS", threads.to_string());
        let peak = field(&json_line(&mut c)?, "sgemm_gflops")?;
        // 784-128-64-10: forward 2 * 109,184 FLOP per sample, the weight gradients as much
        // again, and the gradients of the hidden activations (not of the input, which
        // neither kiln nor PyTorch computes) 2 * (128 * 64 + 64 * 10)
        let macs = 784.0 * 128.0 + 128.0 * 64.0 + 64.0 * 10.0;
        let per_sample = 4.0 * macs + 2.0 * (128.0 * 64.0 + 64.0 * 10.0);
        let share = |v: &[f64]| -> Vec<f64> {
            v.iter()
                .map(|s| s * per_sample / 1e9 / peak * 100.0)
                .collect()
        };
        let flops = Figure {
            name: format!(
                "training FLOP/s as % of a 2048³ sgemm ({peak:.1} GFLOP/s), {threads} thread(s)"
            ),
            unit: "%",
            higher_is_better: true,
            kiln: share(&f.kiln),
            peer: share(&f.peer),
        };
        figures.push(f);
        figures.push(flops);
    }
    Ok(figures)
}

/// The whole MNIST pipeline: kiln's default pipeline vs a PyTorch + onnxruntime script
/// doing the same work; wall time and peak memory (from /usr/bin/time).
pub(crate) fn bench_e2e(
    root: &Path,
    tools: &setup::Tools,
    python: &Path,
    peer: bool,
    pairs: usize,
) -> Result<Vec<Figure>> {
    let kiln = paths::target_dir().join("release/kiln");
    let runs = tempdir_in(&paths::target_dir().join("bench"))?;
    let timed = |c: &mut Command| timed(tools, c);
    let mut run_kiln = Command::new(&kiln);
    run_kiln
        .arg("run")
        .arg(root.join("pipelines/mnist-mlp.toml"))
        // the peer script quantizes to int8 and nothing else: so does kiln here (the
        // default pipeline also tries static int8 and pruning, see `bench optimize`)
        .args(["--set", "stages.compress.candidates=[]"])
        .arg("--force")
        .arg("--runs-dir")
        .arg(&runs);
    let mut run_torch = Command::new(python);
    run_torch
        .current_dir(root.join("bench/peers"))
        .arg("e2e_torch.py")
        .arg(root.join("fixtures/mnist"))
        .arg(&runs);
    let mut wall = Figure {
        name: "MNIST pipeline wall time (load, train 10 epochs, int8, evaluate, export, verify)"
            .into(),
        unit: "s",
        higher_is_better: false,
        kiln: vec![],
        peer: vec![],
    };
    let mut mem = Figure {
        name: "MNIST pipeline peak memory".into(),
        unit: "MiB",
        higher_is_better: false,
        kiln: vec![],
        peer: vec![],
    };
    timed(&mut run_kiln)?;
    if peer {
        timed(&mut run_torch)?;
    }
    for i in 0..pairs {
        eprintln!("xtask: e2e pair {}/{pairs}", i + 1);
        let (w, m) = timed(&mut run_kiln)?;
        wall.kiln.push(w);
        mem.kiln.push(m);
        if peer {
            let (w, m) = timed(&mut run_torch)?;
            wall.peer.push(w);
            mem.peer.push(m);
        }
    }
    let _ = fs::remove_dir_all(&runs);
    Ok(vec![wall, mem])
}

/// Compressed MNIST models vs the fp32 one, all exported by kiln and run by ONNX Runtime
/// (one thread) at batch 1 and 1024: here the "peer" column is fp32, so the ratio is the
/// speed-up of compression. The model comes from a run of the default pipeline.
pub(crate) fn bench_optimize(
    root: &Path,
    tools: &setup::Tools,
    pairs: usize,
) -> Result<Vec<Figure>> {
    let runs = paths::target_dir().join("bench/runs-optimize");
    let mut run = Command::new(paths::target_dir().join("release/kiln"));
    run.arg("run")
        .arg(root.join("pipelines/mnist-mlp.toml"))
        .arg("--runs-dir")
        .arg(&runs);
    cmd::run(tools.apply(&mut run), "see the pipeline's error above")?;
    let mut c = Command::new(paths::target_dir().join("release/examples/bench_optimize"));
    c.arg(runs.join("mnist-mlp/latest")).arg(pairs.to_string());
    tools.apply(&mut c);
    let out = c
        .output()
        .map_err(|e| cmd::spawn_error(&c, &e, "build it first"))?;
    if !out.status.success() {
        return Err(Failure::msg(format!(
            "bench_optimize failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with('{')).collect();
    let variant = |l: &str| -> String {
        l.split("\"variant\": \"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("?")
            .to_string()
    };
    let values = |name: &str, key: &str| -> Result<Vec<f64>> {
        lines
            .iter()
            .filter(|l| variant(l) == name)
            .map(|l| field(l, key))
            .collect()
    };
    let mut names: Vec<String> = lines.iter().map(|l| variant(l)).collect();
    names.dedup();
    names.sort();
    names.dedup();
    let mut figures = Vec::new();
    for (key, label, unit) in [
        ("batch1024_rows_per_s", "batch 1024", "rows/s"),
        ("batch1_per_s", "batch 1", "calls/s"),
    ] {
        let base = values("fp32", key)?;
        for n in names.iter().filter(|n| *n != "fp32") {
            let bytes = lines
                .iter()
                .find(|l| variant(l) == *n)
                .map(|l| field(l, "onnx_bytes"))
                .transpose()?
                .unwrap_or(f64::NAN);
            let fp_bytes = lines
                .iter()
                .find(|l| variant(l) == "fp32")
                .map(|l| field(l, "onnx_bytes"))
                .transpose()?
                .unwrap_or(f64::NAN);
            figures.push(Figure {
                name: format!(
                    "{n} vs fp32, ONNX Runtime {label} ({:.0} % of fp32's ONNX size)",
                    bytes / fp_bytes * 100.0
                ),
                unit,
                higher_is_better: true,
                kiln: values(n, key)?,
                peer: base.clone(),
            });
        }
    }
    Ok(figures)
}

/// The preprocess stage of the default pipeline (MNIST IDX -> scaled features ->
/// stratified split -> Arrow IPC) as `kiln run --only data`, against pandas +
/// scikit-learn and Python polars scripts doing the same; wall time of each process.
pub(crate) fn bench_preprocess(
    root: &Path,
    tools: &setup::Tools,
    python: &Path,
    pairs: usize,
) -> Result<Vec<Figure>> {
    let scratch = tempdir_in(&paths::target_dir().join("bench"))?;
    let have =
        cmd::probe(Command::new(python).args(["-c", "import pandas, sklearn, polars, pyarrow"]));
    if !have {
        eprintln!(
            "xtask: peers missing: pandas, scikit-learn, polars, pyarrow (not in {}); kiln runs alone. `cargo xtask bench --peers` installs them",
            python.display()
        );
    }
    let wall = |c: &mut Command| wall_time(tools.apply(c));
    let mut kiln = Command::new(paths::target_dir().join("release/kiln"));
    kiln.arg("run")
        .arg(root.join("pipelines/mnist-mlp.toml"))
        .args(["--only", "data", "--force", "--runs-dir"])
        .arg(scratch.join("kiln"));
    let peer = |script: &str| {
        let mut c = Command::new(python);
        c.current_dir(root.join("bench/peers"))
            .arg(script)
            .arg(root.join("fixtures/mnist"))
            .arg(scratch.join(script));
        c
    };
    let (mut pandas, mut polars) = (peer("prep_pandas.py"), peer("prep_polars.py"));
    let name = |peer: &str| {
        format!(
            "MNIST preprocess wall time (IDX -> rows, scale, stratified split, Arrow IPC), vs {peer}"
        )
    };
    let mut vs_pandas = Figure {
        name: name("pandas + scikit-learn"),
        unit: "s",
        higher_is_better: false,
        kiln: vec![],
        peer: vec![],
    };
    let mut vs_polars = Figure {
        name: name("Python polars"),
        unit: "s",
        higher_is_better: false,
        kiln: vec![],
        peer: vec![],
    };
    wall(&mut kiln)?;
    if have {
        wall(&mut pandas)?;
        wall(&mut polars)?;
    }
    for i in 0..pairs {
        eprintln!("xtask: preprocess pair {}/{pairs}", i + 1);
        let k = wall(&mut kiln)?;
        vs_pandas.kiln.push(k);
        vs_polars.kiln.push(k);
        if have {
            vs_pandas.peer.push(wall(&mut pandas)?);
            vs_polars.peer.push(wall(&mut polars)?);
        }
    }
    let _ = fs::remove_dir_all(&scratch);
    Ok(vec![vs_pandas, vs_polars])
}
