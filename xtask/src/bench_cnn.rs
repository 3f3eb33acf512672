//! `cargo xtask bench cnn`: kiln and PyTorch training the same CNNs on the CPU (one epoch
//! over MNIST images in memory, batch 64, Adam) at 1 and 2 threads — the pipeline's
//! conv16-conv32 net and PyTorch's examples/mnist conv32-conv64 net — and the pipeline
//! net's static int8 ONNX file against its fp32 one in ONNX Runtime at batch 256.

use std::path::Path;
use std::process::Command;

use crate::bench::{Figure, field, json_line};
use crate::cmd::{Failure, Result};
use crate::paths;

/// Training images per run: the examples net costs about 8 times the pipeline net.
const ROWS: [(&str, usize); 2] = [("pipeline", 12_000), ("examples", 3_000)];

pub(crate) fn bench_cnn(
    root: &Path,
    python: &Path,
    peer: bool,
    pairs: usize,
) -> Result<Vec<Figure>> {
    let exe = paths::target_dir().join("release/examples/bench_cnn");
    let train = root.join("fixtures/mnist/train");
    let mut figures = Vec::new();
    for (net, rows) in ROWS {
        for threads in [1usize, 2] {
            let kiln = || -> Result<f64> {
                let mut c = Command::new(&exe);
                c.arg(&train)
                    .args([net, &rows.to_string()])
                    .env("RAYON_NUM_THREADS", threads.to_string());
                field(&json_line(&mut c)?, "samples_per_sec")
            };
            let torch = || -> Result<f64> {
                let mut c = Command::new(python);
                c.current_dir(root.join("bench/peers"))
                    .arg("train_cnn_torch.py")
                    .arg(&train)
                    .args([&threads.to_string(), net, &rows.to_string()]);
                field(&json_line(&mut c)?, "samples_per_sec")
            };
            let mut f = Figure {
                name: format!(
                    "CNN train samples/s, {net} net, {threads} thread{}",
                    if threads > 1 { "s" } else { "" }
                ),
                unit: "samples/s",
                higher_is_better: true,
                kiln: Vec::new(),
                peer: Vec::new(),
            };
            // warm-up, then A B A B ...
            kiln()?;
            if peer {
                torch()?;
            }
            for i in 0..pairs {
                eprintln!(
                    "xtask: cnn, {net} net, {threads} thread(s), pair {}/{pairs}",
                    i + 1
                );
                f.kiln.push(kiln()?);
                if peer {
                    f.peer.push(torch()?);
                }
            }
            figures.push(f);
        }
    }
    // int8 against fp32 in ONNX Runtime: the same trained pipeline net, both files
    let test = root.join("fixtures/mnist/t10k");
    for threads in [1usize, 2] {
        let mut int8 = Vec::new();
        let mut fp32 = Vec::new();
        let mut accuracy = (0.0, 0.0);
        for i in 0..pairs {
            eprintln!(
                "xtask: cnn, int8 vs fp32, {threads} thread(s), run {}/{pairs}",
                i + 1
            );
            let mut c = Command::new(&exe);
            c.arg(&train)
                .args(["pipeline", "12000", "--onnx"])
                .arg(&test)
                .arg(threads.to_string())
                .env("RAYON_NUM_THREADS", "2");
            let out = c
                .output()
                .map_err(|e| Failure::msg(format!("bench_cnn: {e}; build it first")))?;
            let text = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                return Err(Failure::msg(format!(
                    "bench_cnn --onnx failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
            for l in text.lines().filter(|l| l.contains("\"variant\"")) {
                let v = field(l, "batch256_rows_per_s")?;
                let acc = field(l, "test_accuracy")?;
                if l.contains("\"int8-static\"") {
                    int8.push(v);
                    accuracy.1 = acc;
                } else {
                    fp32.push(v);
                    accuracy.0 = acc;
                }
            }
        }
        figures.push(Figure {
            name: format!(
                "CNN int8-static vs fp32, ONNX Runtime batch 256, {threads} thread{} (test accuracy after one epoch on 12,000 images: {:.2} % vs {:.2} %)",
                if threads > 1 { "s" } else { "" },
                accuracy.1 * 100.0,
                accuracy.0 * 100.0
            ),
            unit: "rows/s",
            higher_is_better: true,
            kiln: int8,
            peer: fp32,
        });
    }
    Ok(figures)
}
