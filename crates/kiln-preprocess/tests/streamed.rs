//! A table preprocessed in bounded memory (`load = "stream"`) against the same table in
//! memory: the same split, fitted statistics, profile and features, on a table of
//! nulls, skewed and repeated numbers, small and large categories and dropped rows,
//! written as many tiny shards: the very same artifact, byte for byte.

use kiln_core::dataset::shards::{Split as Part, read_split};
use kiln_core::{Dataset, Schema};
use kiln_preprocess::{
    Columns, Config, ImputeStrategy, Load, Source, Split, Step, run, run_streamed, streams,
};
use std::collections::BTreeMap;
use std::path::Path;

fn named(v: &[&str]) -> Columns {
    Columns::Named(v.iter().map(|s| s.to_string()).collect())
}

/// 3,000 rows from a seeded generator: `id` (the row), `a` (5 % empty), `b` (repeated
/// values, empty cells), `c` (skewed, positive), `d`, `e` (a few empty: those rows are
/// dropped), `cat` (6 values and empty cells), `big` (200 values), `free` (dropped),
/// `label` (3 classes, a few empty: those rows are dropped).
fn table(path: &Path) {
    let mut s: u64 = 0x5eed;
    let mut next = || {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut out = String::from("id,a,b,c,d,e,cat,big,free,label\n");
    for i in 0..3000 {
        let u: Vec<f64> = (0..10).map(|_| next()).collect();
        let a = if u[0] < 0.05 {
            String::new()
        } else {
            format!("{:.4}", u[1] * 20.0 - 7.0)
        };
        let b = if u[2] < 0.03 {
            String::new()
        } else {
            format!("{:.1}", (u[3] * 4.0).floor() / 2.0)
        };
        let c = format!("{:.5}", (u[4] * 6.0).exp() - 0.9);
        let d = format!("{:.3}", (u[5] - 0.5) * 1000.0);
        let e = if i % 211 == 7 {
            String::new()
        } else {
            format!("{:.6}", u[6] * 3.0)
        };
        let cat = if u[7] < 0.04 {
            String::new()
        } else {
            ["red", "green", "blue", "cyan", "teal", "gold"][(u[7] * u[7] * 6.0) as usize]
                .to_string()
        };
        let big = format!("k{}", (u[8] * u[8] * 200.0) as usize);
        let label = if i % 397 == 3 {
            String::new()
        } else {
            let score = u[1] + 0.5 * u[5] + if cat == "red" { 0.4 } else { 0.0 };
            ["x", "y", "z"][((score * 1.7) as usize).min(2)].to_string()
        };
        out.push_str(&format!(
            "{i},{a},{b},{c},{d},{e},{cat},{big},note {i},{label}\n"
        ));
    }
    std::fs::write(path, out).unwrap();
}

fn config(path: &Path, load: Load) -> Config {
    Config {
        source: Source::Csv {
            path: Some(path.to_path_buf()),
            train: None,
            test: None,
            delimiter: ',',
            has_header: true,
            null_values: vec![],
        },
        target: "label".into(),
        task: None,
        positive_class: None,
        column_types: Default::default(),
        steps: Some(vec![
            Step::DropNulls {
                columns: named(&["e"]),
            },
            Step::Drop {
                columns: vec!["free".into()],
            },
            Step::Impute {
                strategy: ImputeStrategy::Median,
                value: None,
                columns: named(&["a"]),
            },
            Step::Impute {
                strategy: ImputeStrategy::MostFrequent,
                value: None,
                columns: named(&["b", "cat"]),
            },
            Step::Log1p {
                columns: named(&["c"]),
            },
            Step::PiecewiseLinear {
                columns: named(&["c"]),
                bins: 8,
            },
            Step::Clip {
                min: None,
                max: None,
                lower_quantile: Some(0.05),
                upper_quantile: Some(0.95),
                columns: named(&["d"]),
            },
            Step::MinMax {
                columns: named(&["d"]),
            },
            Step::Standardize {
                columns: named(&["a", "b", "e"]),
            },
            Step::OneHot {
                columns: named(&["cat"]),
                max_categories: Some(4),
            },
            Step::Ordinal {
                columns: named(&["big"]),
            },
        ]),
        split: Split {
            valid: 0.15,
            test: Some(0.15),
            stratify: true,
            row_id: None,
        },
        augment: Default::default(),
        shard_rows: Some(97),
        load,
        memory_mb: 1024,
        seed: 11,
        engine: Default::default(),
        scheduler: None,
    }
}

/// The phases a run reported: (name, total, rows advanced).
#[derive(Default)]
struct Phases(std::sync::Mutex<Vec<(String, u64, u64)>>);

impl kiln_core::Progress for Phases {
    fn start(&self, name: &str, total: u64) {
        self.0.lock().unwrap().push((name.to_string(), total, 0));
    }
    fn advance(&self, n: u64) {
        if let Some(p) = self.0.lock().unwrap().last_mut() {
            p.2 += n;
        }
    }
    fn message(&self, _: &str) {}
    fn finish(&self) {}
}

/// A split's rows by their `id` feature: (features, label).
fn by_id(ds: &Dataset) -> BTreeMap<u32, (Vec<f32>, u32)> {
    let id = ds.feature_names.iter().position(|f| f == "id").unwrap();
    let w = ds.n_features();
    (0..ds.n_rows())
        .map(|i| {
            let row = ds.features[i * w..(i + 1) * w].to_vec();
            (row[id] as u32, (row, ds.labels[i]))
        })
        .collect()
}

#[test]
fn a_streamed_table_gives_what_memory_gives() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("t.csv");
    table(&csv);
    let (mem_dir, str_dir) = (dir.path().join("memory"), dir.path().join("stream"));
    assert!(
        !streams(&config(&csv, Load::Auto)).unwrap(),
        "a small table stays in memory"
    );
    assert!(streams(&config(&csv, Load::Stream)).unwrap());
    let memory = run(&config(&csv, Load::Memory), &mem_dir).unwrap();
    let seen = Phases::default();
    let streamed =
        kiln_preprocess::run_streamed_with(&config(&csv, Load::Stream), &str_dir, &seen).unwrap();
    // every pass shows its rows: the file's 3,000, then the kept 2,977 a pass
    let phases = seen.0.lock().unwrap().clone();
    assert_eq!(
        phases.first().map(|p| (p.1, p.2)),
        Some((3000, 3000)),
        "{phases:?}"
    );
    assert!(
        phases[0].0.starts_with("preprocess: reading "),
        "{phases:?}"
    );
    assert!(
        phases
            .iter()
            .any(|p| p.0.starts_with("preprocess: fit pass"))
    );
    assert_eq!(
        phases.last().map(|p| p.0.as_str()),
        Some("preprocess: writing the shards")
    );
    for (name, total, done) in &phases[1..] {
        assert_eq!((*total, *done), (2977, 2977), "{name}");
    }

    // the same rows in each split, and the same fitted statistics
    assert_eq!(streamed.rows, memory.rows);
    assert_eq!(memory.profile.dropped_rows.null_target, 8);
    assert_eq!(memory.profile.dropped_rows.null_features, 15);
    let read = |d: &Path| -> Schema { kiln_core::read_json(&d.join("schema.json")).unwrap() };
    assert_eq!(read(&str_dir), read(&mem_dir));
    assert_eq!(streamed.schema, memory.schema);

    // the profile: counts exact, means to 1e-12
    let (p, q) = (&streamed.profile, &memory.profile);
    assert_eq!((p.rows, p.n_features), (q.rows, q.n_features));
    assert_eq!(p.train_class_counts, q.train_class_counts);
    assert_eq!(p.dropped_rows, q.dropped_rows);
    assert_eq!(p.columns.len(), q.columns.len());
    for (x, y) in p.columns.iter().zip(&q.columns) {
        assert_eq!(
            (
                &x.name,
                &x.dtype,
                x.missing,
                x.distinct,
                x.distinct_estimated
            ),
            (
                &y.name,
                &y.dtype,
                y.missing,
                y.distinct,
                y.distinct_estimated
            )
        );
        for (u, v) in [
            (x.min, y.min),
            (x.max, y.max),
            (x.mean, y.mean),
            (x.null_share, y.null_share),
        ] {
            assert!(
                (u.is_nan() && v.is_nan()) || (u - v).abs() <= 1e-12 * v.abs().max(1.0),
                "{}: {u} against {v}",
                x.name
            );
        }
    }

    // every row's features, bit for bit
    for part in [Part::Train, Part::Valid, Part::Test] {
        let (s, m) = (
            read_split(&str_dir, part).unwrap(),
            read_split(&mem_dir, part).unwrap(),
        );
        assert_eq!(s.feature_names, m.feature_names);
        let (s, m) = (by_id(&s), by_id(&m));
        assert_eq!(s.len(), m.len());
        for ((i, (a, la)), (j, (b, lb))) in s.iter().zip(&m) {
            assert_eq!((i, la), (j, lb));
            assert_eq!(
                a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "row {i} of {part:?}"
            );
        }
    }
    // the very same artifact: shards (by their hashes), schema.json and profile.json
    let bytes = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap();
    for f in ["manifest.json", "schema.json", "profile.json"] {
        assert_eq!(bytes(&str_dir, f), bytes(&mem_dir, f), "{f}");
    }
    let manifest: kiln_core::dataset::shards::Manifest =
        kiln_core::artifact::load(&str_dir).unwrap();
    assert_eq!(manifest.train.shards.len(), memory.rows[0].div_ceil(97));
    assert!(!str_dir.join(".spill").exists(), "the spill is removed");
}

/// What cannot stream says so, and what to do.
#[test]
fn a_source_that_cannot_stream_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("t.csv");
    table(&csv);
    let mut c = config(&csv, Load::Stream);
    c.steps.as_mut().unwrap().push(Step::Dedupe {});
    let e = streams(&c).unwrap_err().to_string();
    assert!(
        e.contains("dedupe") && e.contains("load = \"memory\""),
        "{e}"
    );
    c.load = Load::Auto;
    assert!(!streams(&c).unwrap());
}

/// Preprocesses `config` in memory and streamed into two folders under `dir` and checks
/// that the artifacts are the same bytes; returns the streamed output.
fn same_artifact(dir: &Path, mut config: Config) -> kiln_preprocess::Streamed {
    let (mem_dir, str_dir) = (dir.join("m"), dir.join("s"));
    config.load = Load::Memory;
    run(&config, &mem_dir).unwrap();
    config.load = Load::Stream;
    let out = run_streamed(&config, &str_dir).unwrap();
    for f in ["manifest.json", "schema.json", "profile.json"] {
        assert_eq!(
            std::fs::read_to_string(str_dir.join(f)).unwrap(),
            std::fs::read_to_string(mem_dir.join(f)).unwrap(),
            "{f}"
        );
    }
    out
}

/// A Parquet file with a float (regression) target, null numbers and an integer column:
/// the same artifact either way.
#[test]
fn a_streamed_parquet_regression_table_gives_what_memory_gives() {
    use polars::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    let n = 2500;
    let x: Vec<Option<f64>> = (0..n)
        .map(|i| (i % 13 != 4).then(|| ((i * 7919) % 1000) as f64 / 37.0))
        .collect();
    let k: Vec<i64> = (0..n).map(|i| (i * 31 % 17) as i64).collect();
    let c: Vec<&str> = (0..n).map(|i| ["u", "v", "w"][i % 3]).collect();
    let y: Vec<f64> = (0..n).map(|i| (i as f64).sqrt() * 1.5 - 3.0).collect();
    let mut df = DataFrame::new(
        n,
        vec![
            Column::new("x".into(), x),
            Column::new("k".into(), k),
            Column::new("c".into(), c),
            Column::new("y".into(), y),
        ],
    )
    .unwrap();
    let pq = dir.path().join("t.parquet");
    ParquetWriter::new(std::fs::File::create(&pq).unwrap())
        .finish(&mut df)
        .unwrap();
    let mut c = config(&pq, Load::Stream);
    c.source = Source::Parquet {
        path: Some(pq.clone()),
        train: None,
        test: None,
    };
    c.target = "y".into();
    c.steps = Some(vec![
        Step::Impute {
            strategy: ImputeStrategy::Mean,
            value: None,
            columns: Columns::Group("numeric".into()),
        },
        Step::PiecewiseLinear {
            columns: named(&["x"]),
            bins: 5,
        },
        Step::Standardize {
            columns: Columns::Group("numeric".into()),
        },
        Step::OneHot {
            columns: named(&["c"]),
            max_categories: None,
        },
    ]);
    c.split.stratify = false;
    let out = same_artifact(dir.path(), c);
    assert_eq!(out.schema.task, kiln_core::Task::Regression);
    assert_eq!(out.rows.iter().sum::<usize>(), n);
}

/// Three CSV files read through a glob, `;`-separated with `NA` as null, and one class
/// against the rest: the same artifact either way, and messages name each file's row.
#[test]
fn a_streamed_glob_with_a_positive_class_gives_what_memory_gives() {
    let dir = tempfile::tempdir().unwrap();
    for f in 0..3 {
        let mut text = String::from("a;b;animal\n");
        for i in 0..400 {
            let a = if (i + f) % 29 == 0 {
                "NA".to_string()
            } else {
                format!("{}", (i * (f + 3)) % 50)
            };
            let animal = ["cat", "dog", "eel", "fox"][(i * 7 + f) % 4];
            text.push_str(&format!("{a};{:.2};{animal}\n", i as f64 / 9.0));
        }
        std::fs::write(dir.path().join(format!("part-{f}.csv")), text).unwrap();
    }
    let glob = dir.path().join("part-*.csv");
    let mut c = config(&glob, Load::Stream);
    c.source = Source::Csv {
        path: Some(glob.clone()),
        train: None,
        test: None,
        delimiter: ';',
        has_header: true,
        null_values: vec!["NA".into()],
    };
    c.target = "animal".into();
    c.positive_class = Some("dog".into());
    c.steps = Some(vec![
        Step::Impute {
            strategy: ImputeStrategy::Median,
            value: None,
            columns: named(&["a"]),
        },
        Step::Clip {
            min: None,
            max: None,
            lower_quantile: Some(0.1),
            upper_quantile: None,
            columns: named(&["a", "b"]),
        },
    ]);
    let out = same_artifact(&dir.path().join("ok"), c.clone());
    assert_eq!(out.schema.class_labels, ["not dog", "dog"]);
    assert_eq!(out.profile.train_class_counts.len(), 2);

    // a column the steps leave missing names the file and its row
    c.steps = Some(vec![]);
    let e = run_streamed(&c, &dir.path().join("bad"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("part-0.csv: row 1") && e.contains("`a`") && e.contains("impute"),
        "{e}"
    );
}
