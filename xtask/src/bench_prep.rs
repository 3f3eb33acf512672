//! `cargo xtask bench preprocess`, the table job of issue 4: a seeded 1,000,000-row CSV
//! (20 numeric columns, 2 categorical, a 3-class label, ~1 % empty cells) read, imputed,
//! standardized, one-hot encoded, split (stratified) and written as Arrow IPC, by kiln's
//! preprocess stage and by pandas + scikit-learn and Python polars scripts doing the same
//! work; wall time and peak memory (GNU time) of each process, A B A B.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::process::Command;

use crate::bench::{Figure, timed};
use crate::cmd::{Failure, Result};
use crate::paths;
use crate::setup;

/// Rows of the generated table.
pub(crate) const ROWS: usize = 1_000_000;
const CAT_A: usize = 8;
const CAT_B: usize = 40;

/// The columns of a generated table: `numeric` numbers (`f0`, …; about 1 % empty),
/// `cat_a` (8 skewed categories), `cat_b` (40), and with `high_card` above 0 `cat_c`
/// with that many (Zipf-like), then a 3-class `label` that depends on `f0`–`f2` and
/// `cat_a`.
#[derive(Clone, Copy)]
pub(crate) struct TableShape {
    pub numeric: usize,
    pub high_card: usize,
    /// A first column `id` holding the row's index (a row identity for hash splits).
    pub id: bool,
}

/// The table of `cargo xtask bench preprocess`.
const PREP: TableShape = TableShape {
    numeric: 20,
    high_card: 0,
    id: false,
};

/// SplitMix64: a tiny seeded generator (xtask has no dependencies).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u = self.unit().max(1e-300);
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// Writes the table (once: an existing file of the same generator version is reused).
/// The same seed and draws for every shape, so the first columns of a wider table are
/// not those of a narrower one but each shape is reproducible.
pub(crate) fn make_table(path: &Path, rows: usize, shape: TableShape) -> Result<()> {
    if path.is_file() {
        return Ok(());
    }
    let err = |e: std::io::Error| Failure::msg(format!("{}: {e}", path.display()));
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).map_err(err)?;
    }
    let tmp = path.with_extension("csv.partial");
    let mut f = std::io::BufWriter::with_capacity(1 << 20, fs::File::create(&tmp).map_err(err)?);
    let mut rng = Rng(20_261_129);
    let mut line = String::new();
    if shape.id {
        line.push_str("id,");
    }
    for j in 0..shape.numeric {
        let _ = write!(line, "f{j},");
    }
    line.push_str(if shape.high_card > 0 {
        "cat_a,cat_b,cat_c,label\n"
    } else {
        "cat_a,cat_b,label\n"
    });
    f.write_all(line.as_bytes()).map_err(err)?;
    for i in 0..rows {
        line.clear();
        if shape.id {
            let _ = write!(line, "{i},");
        }
        let mut score = 0.0;
        for j in 0..shape.numeric {
            let x = rng.normal() * (1.0 + j as f64) + j as f64 * 10.0;
            if j < 3 {
                score += (x - j as f64 * 10.0) / (1.0 + j as f64);
            }
            if rng.unit() < 0.01 {
                line.push(',');
            } else {
                let _ = write!(line, "{x:.4},");
            }
        }
        // skewed categories: the first ones are the most frequent
        let a = ((rng.unit().powi(2)) * CAT_A as f64) as usize;
        let b = ((rng.unit().powi(3)) * CAT_B as f64) as usize;
        score += a as f64 * 0.3 + rng.normal() * 0.5;
        let mut cells = vec![
            (format!("a{a}"), rng.unit()),
            (format!("b{b:02}"), rng.unit()),
        ];
        if shape.high_card > 0 {
            let c = ((rng.unit().powi(4)) * shape.high_card as f64) as usize;
            cells.push((format!("c{c}"), rng.unit()));
        }
        for (v, p) in cells {
            if p >= 0.01 {
                line.push_str(&v);
            }
            line.push(',');
        }
        line.push_str(if score < 0.8 {
            "low"
        } else if score < 2.0 {
            "mid"
        } else {
            "high"
        });
        line.push('\n');
        f.write_all(line.as_bytes()).map_err(err)?;
    }
    f.flush().map_err(err)?;
    drop(f);
    fs::rename(&tmp, path).map_err(err)
}

/// The kiln pipeline of the job.
fn pipeline(csv: &Path) -> String {
    pipeline_head(
        "prep-table",
        csv,
        r#"{ op = "one_hot" },"#,
        "valid = 0.1, test = 0.2",
    )
}

/// A pipeline file's header and its preprocess stage `data` on a generated table at
/// `csv`: both imputations and standardize, then the `encode` steps, then the
/// stratified `split`.
pub(crate) fn pipeline_head(name: &str, csv: &Path, encode: &str, split: &str) -> String {
    format!(
        r#"version = 1
name = "{name}"
seed = 42

[stages.data]
uses = "preprocess"
source = {{ format = "csv", path = "{}", null_values = [""] }}
target = "label"
steps = [
  {{ op = "impute", strategy = "mean", columns = "numeric" }},
  {{ op = "impute", strategy = "most_frequent", columns = "categorical" }},
  {{ op = "standardize" }},
  {encode}
]
split = {{ {split}, stratify = true }}
"#,
        csv.display()
    )
}

/// The figures of the table job: wall time and peak memory against each peer.
pub(crate) fn bench_table(
    root: &Path,
    tools: &setup::Tools,
    python: &Path,
    have_peers: bool,
    pairs: usize,
) -> Result<Vec<Figure>> {
    let dir = paths::target_dir().join("bench/prep-table");
    let csv = dir.join("table.csv");
    eprintln!("xtask: generating {} (once)", csv.display());
    make_table(&csv, ROWS, PREP)?;
    let pipe = dir.join("pipeline.toml");
    fs::write(&pipe, pipeline(&csv))
        .map_err(|e| Failure::msg(format!("{}: {e}", pipe.display())))?;
    let scratch = crate::bench::tempdir_in(&dir)?;
    let mut kiln = Command::new(paths::target_dir().join("release/kiln"));
    kiln.arg("run")
        .arg(&pipe)
        .args(["--only", "data", "--force", "--runs-dir"])
        .arg(scratch.join("kiln"));
    let peer = |script: &str| -> Command {
        let mut c = Command::new(python);
        c.current_dir(root.join("bench/peers"))
            .arg(script)
            .arg(&csv)
            .arg(scratch.join(script));
        c
    };
    let mut pandas = peer("prep_table_pandas.py");
    let mut polars = peer("prep_table_polars.py");
    let fig = |what: &str, unit: &'static str, peer: &str| Figure {
        name: format!(
            "1M-row table {what} (CSV -> impute, standardize, one-hot, stratified split -> Arrow IPC), vs {peer}"
        ),
        unit,
        higher_is_better: false,
        kiln: vec![],
        peer: vec![],
    };
    let mut t_pd = fig("wall time", "s", "pandas + scikit-learn");
    let mut t_pl = fig("wall time", "s", "Python polars");
    let mut m_pd = fig("peak memory", "MiB", "pandas + scikit-learn");
    let mut m_pl = fig("peak memory", "MiB", "Python polars");
    // warm-up: the file into the page cache, each program once
    timed(tools, &mut kiln)?;
    if have_peers {
        timed(tools, &mut pandas)?;
        timed(tools, &mut polars)?;
    }
    for i in 0..pairs {
        eprintln!("xtask: preprocess table pair {}/{pairs}", i + 1);
        let (w, m) = timed(tools, &mut kiln)?;
        for f in [&mut t_pd, &mut t_pl] {
            f.kiln.push(w);
        }
        for f in [&mut m_pd, &mut m_pl] {
            f.kiln.push(m);
        }
        if have_peers {
            let (w, m) = timed(tools, &mut pandas)?;
            t_pd.peer.push(w);
            m_pd.peer.push(m);
            let (w, m) = timed(tools, &mut polars)?;
            t_pl.peer.push(w);
            m_pl.peer.push(m);
        }
    }
    let _ = fs::remove_dir_all(&scratch);
    Ok(vec![t_pd, t_pl, m_pd, m_pl])
}
