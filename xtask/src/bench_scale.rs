//! `cargo xtask bench scale`, the yardstick of the streaming issue: seeded tables of 1M,
//! 5M and 20M rows (30 columns: 26 numbers with empty cells, categories of 8, 40 and
//! 5,000 values, a 3-class label), and on each the whole pipeline — preprocess (impute,
//! standardize, one-hot, ordinal; stratified split) → train one epoch → evaluate →
//! deploy — then the stages after preprocess again (its artifact cached) with the splits
//! streamed from their shards and held in memory, then `kiln predict` over every row of
//! the CSV; wall time and peak resident memory (GNU time) of each process. With
//! `--peers`, the same pipeline and prediction in Python (`bench/peers/scale_polars_torch.py`:
//! polars' streaming engine from the CSV itself, PyTorch over an IterableDataset of what
//! polars wrote, ONNX Runtime) run beside kiln's, pair by pair.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::bench::{Figure, timed};
use crate::bench_prep::{TableShape, make_table, pipeline_head};
use crate::cmd::{Failure, Result};
use crate::paths;
use crate::setup;

/// Rows of the tables measured when `--rows` is not given.
pub(crate) const SIZES: [usize; 3] = [1_000_000, 5_000_000, 20_000_000];

/// 26 numbers + `cat_a`, `cat_b`, `cat_c` + `label`: 30 columns.
const SHAPE: TableShape = TableShape {
    numeric: 26,
    high_card: 5_000,
    id: false,
};

/// The pipeline run on a table of `rows` rows at `csv`.
fn pipeline(csv: &Path, rows: usize) -> String {
    let data = pipeline_head(
        &format!("scale-{rows}"),
        csv,
        r#"{ op = "one_hot", columns = ["cat_a", "cat_b"] },
  { op = "ordinal", columns = ["cat_c"] },"#,
        "valid = 0.1, test = 0.1",
    );
    format!(
        r#"{data}
[stages.train]
uses = "train"
input = "data"
model = {{ hidden = [64] }}
optimizer = {{ kind = "adam", lr = 1e-3 }}
epochs = 1
batch_size = 256

[stages.eval]
uses = "evaluate"
inputs = ["train"]

[stages.ship]
uses = "deploy"
input = "train"
requires = ["eval"]
"#
    )
}

/// Wall time and peak memory of the pipeline and of `kiln predict`, per table size.
pub(crate) fn bench_scale(
    root: &Path,
    tools: &setup::Tools,
    python: &Path,
    have_peers: bool,
    sizes: &[usize],
    pairs: usize,
) -> Result<Vec<Figure>> {
    let dir = paths::target_dir().join("bench/scale");
    let kiln = paths::target_dir().join("release/kiln");
    let mut figures = Vec::new();
    for &rows in sizes {
        let csv = dir.join(format!("table-{rows}.csv"));
        eprintln!("xtask: generating {} (once)", csv.display());
        make_table(&csv, rows, SHAPE)?;
        let pipe = dir.join(format!("pipeline-{rows}.toml"));
        fs::write(&pipe, pipeline(&csv, rows))
            .map_err(|e| Failure::msg(format!("{}: {e}", pipe.display())))?;
        let scratch = crate::bench::tempdir_in(&dir)?;
        let runs = scratch.join("runs");
        let mut run = Command::new(&kiln);
        run.arg("run")
            .arg(&pipe)
            .arg("--force")
            .arg("--runs-dir")
            .arg(&runs);
        // the stages after preprocess (cached by the run above), the splits read as `load`
        let downstream = |load: &str| {
            let mut c = Command::new(&kiln);
            c.arg("run")
                .arg(&pipe)
                .args(["--from", "train", "--runs-dir"])
                .arg(&runs)
                .arg("--set")
                .arg(format!("stages.train.data.load=\"{load}\""));
            c
        };
        let (mut streamed, mut in_memory) = (downstream("stream"), downstream("memory"));
        let peer = |mode: &str| {
            let mut c = Command::new(python);
            c.current_dir(root.join("bench/peers"))
                .arg("scale_polars_torch.py")
                .arg(mode)
                .arg(&csv)
                .arg(scratch.join("peer"));
            c
        };
        let (mut peer_run, mut peer_predict) = (peer("pipeline"), peer("predict"));
        let mut predict = Command::new(&kiln);
        predict
            .arg("predict")
            .arg("--model")
            .arg(runs.join(format!("scale-{rows}/latest/ship")))
            .arg("--input")
            .arg(&csv)
            .arg("--output")
            .arg(scratch.join("predictions.parquet"));
        let label = if rows % 1_000_000 == 0 {
            format!("{}M rows", rows / 1_000_000)
        } else {
            format!("{rows} rows")
        };
        let fig = |what: &str, unit: &'static str| Figure {
            name: format!("{label}: {what}"),
            unit,
            higher_is_better: false,
            kiln: vec![],
            peer: vec![],
        };
        let mut run_t = fig(
            "pipeline wall time (preprocess, 1 epoch, evaluate, deploy)",
            "s",
        );
        let mut run_m = fig("pipeline peak memory", "MiB");
        let after = "train, evaluate, deploy (preprocess cached)";
        let mut stream_t = fig(&format!("{after}, splits streamed: wall time"), "s");
        let mut stream_m = fig(&format!("{after}, splits streamed: peak memory"), "MiB");
        let mut memory_t = fig(&format!("{after}, splits in memory: wall time"), "s");
        let mut memory_m = fig(&format!("{after}, splits in memory: peak memory"), "MiB");
        let mut pred_t = fig(
            "kiln predict wall time (every row, CSV in, Parquet out)",
            "s",
        );
        let mut pred_m = fig("kiln predict peak memory", "MiB");
        for i in 0..pairs {
            eprintln!("xtask: scale {label}, run {}/{pairs}", i + 1);
            let (w, m) = timed(tools, &mut run)?;
            run_t.kiln.push(w);
            run_m.kiln.push(m);
            if have_peers {
                let (w, m) = timed(tools, &mut peer_run)?;
                run_t.peer.push(w);
                run_m.peer.push(m);
            }
            for (c, t, mem) in [
                (&mut streamed, &mut stream_t, &mut stream_m),
                (&mut in_memory, &mut memory_t, &mut memory_m),
            ] {
                let (w, m) = timed(tools, c)?;
                t.kiln.push(w);
                mem.kiln.push(m);
            }
            let (w, m) = timed(tools, &mut predict)?;
            pred_t.kiln.push(w);
            pred_m.kiln.push(m);
            if have_peers {
                let (w, m) = timed(tools, &mut peer_predict)?;
                pred_t.peer.push(w);
                pred_m.peer.push(m);
            }
        }
        let _ = fs::remove_dir_all(&scratch);
        figures.extend([
            run_t, run_m, stream_t, stream_m, memory_t, memory_m, pred_t, pred_m,
        ]);
    }
    Ok(figures)
}
