//! Sources made of several files (globs, separate train / test files of every tabular
//! format), the train-only augmentation (its counts, that valid / test and the fitted
//! statistics stay untouched, that copies are shifted images of their rows, determinism),
//! and the column profile.

use kiln_core::dataset::shards::{Shards, Split as Part, read_split};
use kiln_preprocess::{Augment, Config, Source, Split, Step, read_artifact, run, shift_image};
use polars::prelude::*;
use std::path::{Path, PathBuf};

fn csv_source(path: &Path) -> Source {
    Source::Csv {
        path: Some(path.to_path_buf()),
        train: None,
        test: None,
        delimiter: ',',
        has_header: true,
        null_values: vec![],
    }
}

fn config(source: Source, steps: Vec<Step>) -> Config {
    Config {
        source,
        target: "y".into(),
        task: None,
        positive_class: None,
        column_types: Default::default(),
        steps: Some(steps),
        split: Split {
            valid: 0.2,
            test: Some(0.2),
            stratify: true,
            row_id: None,
        },
        augment: Augment::default(),
        shard_rows: None,
        load: Default::default(),
        memory_mb: 1024,
        seed: 3,
        engine: Default::default(),
        scheduler: None,
    }
}

/// Row `i` of a small table: two features and a class (`a` twice as often as `b`).
fn row(i: usize) -> String {
    format!(
        "{},{}.5,{}\n",
        i,
        (i * 7) % 11,
        if i % 3 == 2 { "b" } else { "a" }
    )
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[test]
fn a_glob_reads_its_files_as_one_table() {
    let dir = tempfile::tempdir().unwrap();
    let mut whole = String::from("x,z,y\n");
    for part in 0..3 {
        let mut s = String::from("x,z,y\n");
        for i in part * 20..(part + 1) * 20 {
            s += &row(i);
            whole += &row(i);
        }
        std::fs::write(dir.path().join(format!("part-{part}.csv")), s).unwrap();
    }
    std::fs::write(dir.path().join("whole.csv"), whole).unwrap();
    let steps = || {
        vec![Step::Standardize {
            columns: Default::default(),
        }]
    };
    let from_glob = run(
        &config(csv_source(&dir.path().join("part-*.csv")), steps()),
        &dir.path().join("g"),
    )
    .unwrap();
    let from_one = run(
        &config(csv_source(&dir.path().join("whole.csv")), steps()),
        &dir.path().join("w"),
    )
    .unwrap();
    assert_eq!(from_glob.rows, [36, 12, 12]);
    assert_eq!(from_glob.rows, from_one.rows);
    // manifest.json records every shard's content hash: equal manifests, equal shards
    for f in ["manifest.json", "schema.json"] {
        assert_eq!(
            bytes(&dir.path().join("g").join(f)),
            bytes(&dir.path().join("w").join(f)),
            "{f}"
        );
    }
    let files: Vec<String> =
        kiln_preprocess::source_files(&csv_source(&dir.path().join("part-*.csv")))
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
    assert_eq!(files, ["part-0.csv", "part-1.csv", "part-2.csv"]);

    // A bad cell in the second file is named by that file and its own row number.
    std::fs::write(
        dir.path().join("part-1.csv"),
        "x,z,y\n20,1.5,a\n21,oops,b\n22,2.5,a\n",
    )
    .unwrap();
    let e = run(
        &config(csv_source(&dir.path().join("part-*.csv")), steps()),
        &dir.path().join("bad"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("part-1.csv: row 2") && e.contains("`z`") && e.contains("oops"),
        "{e}"
    );
    assert!(!dir.path().join("bad").exists());

    // Files with other columns, and a pattern that matches nothing.
    std::fs::write(dir.path().join("part-1.csv"), "x,w,y\n1,2,a\n").unwrap();
    let e = run(
        &config(csv_source(&dir.path().join("part-*.csv")), steps()),
        &dir.path().join("bad"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("part-1.csv") && e.contains("missing: [z]") && e.contains("extra: [w]"),
        "{e}"
    );
    let e = run(
        &config(csv_source(&dir.path().join("nothing-*.csv")), steps()),
        &dir.path().join("bad"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("nothing-*.csv") && e.contains("no file matches"),
        "{e}"
    );
}

fn write_parquet(path: &Path, range: std::ops::Range<usize>) {
    let x: Vec<f64> = range.clone().map(|i| i as f64).collect();
    let y: Vec<&str> = range
        .map(|i| if i % 2 == 0 { "even" } else { "odd" })
        .collect();
    let mut df = df!("x" => x, "y" => y).unwrap();
    let f = std::fs::File::create(path).unwrap();
    ParquetWriter::new(f).finish(&mut df).unwrap();
}

#[test]
fn parquet_and_arrow_take_separate_train_and_test_files() {
    let dir = tempfile::tempdir().unwrap();
    let (tr, te) = (
        dir.path().join("train.parquet"),
        dir.path().join("test.parquet"),
    );
    write_parquet(&tr, 0..40);
    write_parquet(&te, 100..110);
    let mut c = config(
        Source::Parquet {
            path: None,
            train: Some(tr.clone()),
            test: Some(te.clone()),
        },
        vec![Step::Standardize {
            columns: Default::default(),
        }],
    );
    c.split.test = None;
    c.split.valid = 0.25;
    let out = run(&c, &dir.path().join("pq")).unwrap();
    assert_eq!(out.rows, [30, 10, 10]);
    let (schema, [train, _, test]) = read_artifact(&dir.path().join("pq")).unwrap();
    // the test rows are the test file's, standardized with the train statistics
    let kiln_core::Transform::Standardize { mean, std, .. } = &schema.transforms[0] else {
        panic!("{:?}", schema.transforms)
    };
    let want: Vec<f32> = (100..110).map(|i| (i as f32 - mean[0]) / std[0]).collect();
    assert_eq!(test.features, want);
    assert_eq!(test.labels, (0..10).map(|i| i % 2).collect::<Vec<u32>>());
    // ... and those statistics are the train split's own: its standardized column has
    // mean 0 and population variance 1
    let n = train.features.len() as f64;
    let m = train.features.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = train
        .features
        .iter()
        .map(|&v| (f64::from(v) - m).powi(2))
        .sum::<f64>()
        / n;
    assert_eq!(n, 30.0);
    assert!(m.abs() < 1e-5, "{m}");
    assert!((var - 1.0).abs() < 1e-4, "{var}");
    // With every train-file row in train, the statistics are those of 0..40 worked out
    // by hand: mean 19.5, population std sqrt((40² - 1) / 12) = sqrt(1599 / 12).
    let mut all = c.clone();
    all.split.valid = 0.0;
    let out = run(&all, &dir.path().join("pq-all")).unwrap();
    assert_eq!(out.rows, [40, 0, 10]);
    let kiln_core::Transform::Standardize { mean, std, .. } = &out.schema.transforms[0] else {
        panic!("{:?}", out.schema.transforms)
    };
    let want_std = (1599.0f64 / 12.0).sqrt();
    assert!((want_std - 11.543_396).abs() < 1e-6);
    assert!((f64::from(mean[0]) - 19.5).abs() < 1e-5, "{mean:?}");
    assert!((f64::from(std[0]) - want_std).abs() < 1e-5, "{std:?}");
    let test = &out.splits[2];
    for (i, &v) in test.features.iter().enumerate() {
        let want = (100.0 + i as f64 - 19.5) / want_std;
        assert!(
            (f64::from(v) - want).abs() < 1e-5,
            "test row {i}: {v} vs {want}"
        );
    }

    // Arrow IPC the same way, from the same tables.
    let ipc = |src: &Path, dst: &Path| {
        let mut df = kiln_preprocess::table::read_parquet(src).unwrap();
        IpcWriter::new(std::fs::File::create(dst).unwrap())
            .finish(&mut df)
            .unwrap();
    };
    let (atr, ate) = (
        dir.path().join("train.arrow"),
        dir.path().join("test.arrow"),
    );
    ipc(&tr, &atr);
    ipc(&te, &ate);
    c.source = Source::Arrow {
        path: None,
        train: Some(atr),
        test: Some(ate),
    };
    run(&c, &dir.path().join("ar")).unwrap();
    // manifest.json records every shard's content hash: equal manifests, equal shards
    for f in ["manifest.json", "schema.json"] {
        assert_eq!(
            bytes(&dir.path().join("pq").join(f)),
            bytes(&dir.path().join("ar").join(f)),
            "{f}"
        );
    }
    // path and train together is refused
    c.source = Source::Parquet {
        path: Some(tr.clone()),
        train: Some(tr),
        test: None,
    };
    let e = run(&c, &dir.path().join("bad")).unwrap_err().to_string();
    assert!(e.contains("either `path`, or `train`"), "{e}");
}

/// 4 × 4 "images": 60 rows, pixel p of row i = (i + 3p) % 17, class `big` for 45 rows
/// and `small` for 15.
fn write_images(dir: &Path) -> PathBuf {
    let mut s = (0..16).map(|p| format!("p{p},")).collect::<String>() + "y\n";
    for i in 0..60 {
        for p in 0..16 {
            s += &format!("{},", (i + 3 * p) % 17);
        }
        s += if i % 4 == 0 { "small\n" } else { "big\n" };
    }
    let path = dir.join("images.csv");
    std::fs::write(&path, s).unwrap();
    path
}

fn scaled() -> Vec<Step> {
    vec![Step::Scale {
        by: 17.0,
        columns: Default::default(),
    }]
}

#[test]
fn augmentation_adds_balanced_shifted_copies_to_train_only() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write_images(dir.path());
    let plain = config(csv_source(&csv), scaled());
    let mut aug = plain.clone();
    aug.augment = Augment {
        copies: 2,
        image: Some([4, 4]),
        shift: 1,
        oversample: true,
        ..Default::default()
    };
    let base = run(&plain, &dir.path().join("plain")).unwrap();
    let out = run(&aug, &dir.path().join("aug")).unwrap();
    // 36 train rows: 27 big, 9 small -> 18 small oversampled -> 54, and 2 copies each.
    assert_eq!(base.rows, [36, 12, 12]);
    assert_eq!(
        out.augmented,
        kiln_preprocess::AugmentCounts {
            before: 36,
            oversampled: 18,
            copies: 108,
            after: 162
        }
    );
    assert_eq!(out.rows, [162, 12, 12]);
    // Valid, test and the fitted schema are those of the plain run.
    let manifest = |d: &str| Shards::open(&dir.path().join(d)).unwrap().manifest;
    let (plain, augmented) = (manifest("plain"), manifest("aug"));
    assert_eq!(plain.valid, augmented.valid);
    assert_eq!(plain.test, augmented.test);
    assert_eq!(
        bytes(&dir.path().join("plain/schema.json")),
        bytes(&dir.path().join("aug/schema.json"))
    );
    let plain_train = read_split(&dir.path().join("plain"), Part::Train).unwrap();
    let train = read_split(&dir.path().join("aug"), Part::Train).unwrap();
    assert_eq!(train.features[..36 * 16], plain_train.features[..]);
    let small = train.labels.iter().filter(|&&l| l == 1).count();
    assert_eq!((small, train.labels.len() - small), (81, 81));
    // Every copy is its source row shifted by at most one pixel each way (sources cycle
    // through originals ++ oversampled), and the shifts vary.
    let mut shifts = std::collections::BTreeSet::new();
    for (k, copy) in train.features[54 * 16..].chunks(16).enumerate() {
        let src = &train.features[(k % 54) * 16..(k % 54 + 1) * 16];
        assert_eq!(train.labels[54 + k], train.labels[k % 54]);
        let hit = (-1..=1)
            .flat_map(|dy| (-1..=1).map(move |dx| (dy, dx)))
            .find(|&(dy, dx)| shift_image(src, 4, 4, dy, dx) == copy);
        shifts.insert(hit.unwrap_or_else(|| panic!("copy {k} is no shift of its row")));
    }
    assert!(shifts.len() >= 5, "{shifts:?}");
    // Seeded: a rerun writes the same bytes.
    run(&aug, &dir.path().join("aug2")).unwrap();
    assert_eq!(
        bytes(&dir.path().join("aug/manifest.json")),
        bytes(&dir.path().join("aug2/manifest.json"))
    );
    let profile: serde_json::Value =
        serde_json::from_slice(&bytes(&dir.path().join("aug/profile.json"))).unwrap();
    assert_eq!(profile["augmentation"]["after"], 162);
    assert_eq!(profile["train_class_counts"][1][1], 9);
}

#[test]
fn noisy_copies_and_augmentation_errors() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write_images(dir.path());
    let mut c = config(csv_source(&csv), scaled());
    c.augment = Augment {
        copies: 1,
        noise: 0.1,
        ..Default::default()
    };
    let out = run(&c, &dir.path().join("noise")).unwrap();
    assert_eq!(out.rows, [72, 12, 12]);
    let train = read_split(&dir.path().join("noise"), Part::Train).unwrap();
    let (orig, copies) = train.features.split_at(36 * 16);
    let d: Vec<f64> = orig
        .iter()
        .zip(copies)
        .map(|(a, b)| f64::from(b - a))
        .collect();
    let mean = d.iter().sum::<f64>() / d.len() as f64;
    let std = (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / d.len() as f64).sqrt();
    assert!(
        mean.abs() < 0.02 && (std - 0.1).abs() < 0.02,
        "{mean} {std}"
    );

    // shift without a layout, a layout that does not fit, oversampling a regression target
    let err = |c: &Config| run(c, &dir.path().join("bad")).unwrap_err().to_string();
    c.augment = Augment {
        copies: 1,
        shift: 2,
        ..Default::default()
    };
    assert!(err(&c).contains("image = [height, width]"), "{}", err(&c));
    c.augment.image = Some([3, 5]);
    assert!(err(&c).contains("16 raw feature columns"), "{}", err(&c));
    c.augment = Augment {
        oversample: true,
        ..Default::default()
    };
    c.target = "p3".into();
    c.task = Some(kiln_core::Task::Regression);
    c.steps.get_or_insert_default().insert(
        0,
        Step::Drop {
            columns: vec!["y".into()],
        },
    );
    assert!(err(&c).contains("oversample"), "{}", err(&c));
    c.augment = Augment {
        copies: 3,
        ..Default::default()
    };
    assert!(err(&c).starts_with("augment.copies"), "{}", err(&c));
    assert!(!dir.path().join("bad").exists());
}

#[test]
fn the_profile_gives_type_missing_share_and_distinct_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.csv");
    // 10 rows; all rows are train (no valid / test from 10 rows at these fractions would
    // be too few), so use a test file instead.
    let mut s = String::from("n,f,y\n");
    for i in 0..10 {
        let f = if i == 3 {
            String::new()
        } else {
            format!("{}.5", i % 4)
        };
        s += &format!("{},{f},{}\n", i % 3, if i % 2 == 0 { "a" } else { "b" });
    }
    std::fs::write(&path, &s).unwrap();
    let test = dir.path().join("t.csv");
    std::fs::write(&test, "n,f,y\n1,1.5,a\n2,2.5,b\n").unwrap();
    let mut c = config(
        Source::Csv {
            path: None,
            train: Some(path),
            test: Some(test),
            delimiter: ',',
            has_header: true,
            null_values: vec![],
        },
        vec![Step::Impute {
            strategy: kiln_preprocess::ImputeStrategy::Mean,
            value: None,
            columns: Default::default(),
        }],
    );
    c.split = Split {
        valid: 0.0,
        test: None,
        stratify: true,
        row_id: None,
    };
    run(&c, &dir.path().join("out")).unwrap();
    let p: serde_json::Value =
        serde_json::from_slice(&bytes(&dir.path().join("out/profile.json"))).unwrap();
    let cols = &p["columns"];
    assert_eq!(cols[0]["name"], "n");
    assert_eq!(cols[0]["dtype"], "i64");
    assert_eq!(cols[0]["distinct"], 3);
    assert_eq!(cols[0]["null_share"], 0.0);
    assert_eq!(cols[1]["dtype"], "f64");
    assert_eq!(cols[1]["null_share"], 0.1);
    // present values: 0.5, 1.5, 2.5, 0.5, 1.5, 2.5, 3.5, 0.5, 1.5 -> 4 distinct
    assert_eq!(cols[1]["distinct"], 4);
    assert_eq!(cols[1]["min"], 0.5);
    assert_eq!(cols[1]["max"], 3.5);
}

/// Each bad input of the list fails with a message naming the place and the fix,
/// and writes nothing.
#[test]
fn each_bad_input_is_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let err = |c: &Config| {
        let e = run(c, &out).unwrap_err().to_string();
        assert!(!out.exists(), "{e}");
        e
    };
    let good: String = std::iter::once("x,y\n".to_string())
        .chain((0..30).map(|i| format!("{i},{}\n", i % 2)))
        .collect();
    let cases: Vec<(PathBuf, &str, &[&str])> = vec![
        (
            dir.path().join("absent.csv"),
            "y",
            &["absent.csv", "No such file or directory"],
        ),
        (
            write("empty.csv", ""),
            "y",
            &["empty.csv", "the file is empty"],
        ),
        (
            write("header.csv", "x,y\n"),
            "y",
            &["header.csv", "a header but no rows"],
        ),
        (
            write("good.csv", &good),
            "why",
            &["target column `why` not found", "did you mean `y`?"],
        ),
        (
            write("one.csv", "x,y\n1,a\n2,a\n3,a\n4,a\n5,a\n"),
            "y",
            &["single class (a)", "at least two"],
        ),
        (
            write("ragged.csv", &format!("{good}3,1,9\n")),
            "y",
            // polars (pinned) names no row; its phrase says what is wrong
            &["ragged.csv: line 32 has 3 field(s) but the header has 2"],
        ),
    ];
    for (path, target, want) in cases {
        let mut c = config(csv_source(&path), vec![]);
        c.target = target.into();
        let e = err(&c);
        for w in want {
            assert!(e.contains(w), "{}: {e}", path.display());
        }
    }
    // A value that the steps turn into -inf (log1p of -1 in the test file).
    let test = write("t.csv", "x,y\n-1,0\n2,1\n");
    let mut c = config(
        Source::Csv {
            path: None,
            train: Some(dir.path().join("good.csv")),
            test: Some(test),
            delimiter: ',',
            has_header: true,
            null_values: vec![],
        },
        vec![Step::Log1p {
            columns: Default::default(),
        }],
    );
    c.split.test = None;
    let e = err(&c);
    assert!(e.contains("t.csv: row 1: feature `x` is -inf"), "{e}");
}

/// Writes an uncompressed IDX pair at `prefix`: `n` images of 4 × 4 (pixel p of image i
/// = (i * 5 + p) % 256) and labels i % 2.
fn write_idx(prefix: &Path, n: u32) {
    let mut img = vec![0, 0, 8, 3];
    for d in [n, 4, 4] {
        img.extend(d.to_be_bytes());
    }
    img.extend((0..n).flat_map(|i| (0..16).map(move |p| ((i * 5 + p) % 256) as u8)));
    let mut lab = vec![0, 0, 8, 1];
    lab.extend(n.to_be_bytes());
    lab.extend((0..n).map(|i| (i % 2) as u8));
    let name = prefix.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::write(
        prefix.with_file_name(format!("{name}-images-idx3-ubyte")),
        img,
    )
    .unwrap();
    std::fs::write(
        prefix.with_file_name(format!("{name}-labels-idx1-ubyte")),
        lab,
    )
    .unwrap();
}

#[test]
fn idx_pixels_go_straight_to_rows_and_give_the_image_layout() {
    let dir = tempfile::tempdir().unwrap();
    let (tr, te) = (dir.path().join("train"), dir.path().join("t10k"));
    write_idx(&tr, 50);
    write_idx(&te, 10);
    let mut c = config(
        Source::Idx {
            train: tr,
            test: Some(te),
        },
        vec![Step::Scale {
            by: 255.0,
            columns: Default::default(),
        }],
    );
    c.target = "label".into();
    c.split = Split {
        valid: 0.2,
        test: None,
        stratify: true,
        row_id: None,
    };
    c.augment = Augment {
        copies: 1,
        shift: 1,
        ..Default::default()
    };
    let out = run(&c, &dir.path().join("out")).unwrap();
    assert_eq!(out.rows, [80, 10, 10]);
    assert_eq!(out.augmented.copies, 40);
    let (schema, [train, _, test]) = read_artifact(&dir.path().join("out")).unwrap();
    assert_eq!(schema.input_columns.len(), 16);
    assert_eq!(schema.input_columns[15], "pixel_15");
    // test image i, pixel p = ((i * 5 + p) % 256) / 255
    let want: Vec<f32> = (0..10u32)
        .flat_map(|i| (0..16).map(move |p| ((i * 5 + p) % 256) as f32 / 255.0))
        .collect();
    assert_eq!(test.features, want);
    assert_eq!(test.labels, (0..10).map(|i| i % 2).collect::<Vec<u32>>());
    // copy k is row k shifted by one (dy, dx) in [-1, 1]², and keeps row k's label; the
    // copies are not all shifted the same way
    let mut shifts = std::collections::BTreeSet::new();
    for (k, copy) in train.features[40 * 16..].chunks(16).enumerate() {
        let src = &train.features[k * 16..(k + 1) * 16];
        let found: Vec<(i64, i64)> = (-1..=1)
            .flat_map(|dy| (-1..=1).map(move |dx| (dy, dx)))
            .filter(|&(dy, dx)| shift_image(src, 4, 4, dy, dx) == copy)
            .collect();
        assert_eq!(found.len(), 1, "copy {k}: {found:?}");
        shifts.insert(found[0]);
        assert_eq!(train.labels[40 + k], train.labels[k], "copy {k}");
    }
    assert!(shifts.len() >= 2, "{shifts:?}");
    let profile: serde_json::Value =
        serde_json::from_slice(&bytes(&dir.path().join("out/profile.json"))).unwrap();
    assert_eq!(profile["columns"][0]["dtype"], "u8");
}

/// `column_types` turns numeric codes into categories (leading zeros kept) and makes a
/// text cell in a number column an error naming its row.
#[test]
fn column_types_override_inference() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = String::from("zip,x,y\n");
    for i in 0..30 {
        s += &format!(
            "{:03},{}.5,{}\n",
            [7, 12, 7][i % 3],
            i,
            if i % 2 == 0 { "a" } else { "b" }
        );
    }
    let path = dir.path().join("z.csv");
    std::fs::write(&path, &s).unwrap();
    let mut c = config(
        csv_source(&path),
        vec![Step::OneHot {
            columns: kiln_preprocess::Columns::Named(vec!["zip".into()]),
            max_categories: None,
        }],
    );
    c.column_types = [("zip".to_string(), kiln_preprocess::ColumnType::Text)].into();
    let out = run(&c, &dir.path().join("ok")).unwrap();
    assert_eq!(out.schema.feature_names, ["zip=007", "zip=012", "x"]);
    // without the override zip is a number column and one_hot refuses it
    c.column_types.clear();
    let e = run(&c, &dir.path().join("bad")).unwrap_err().to_string();
    assert!(
        e.contains("steps[0] (one_hot): column `zip` holds numbers, and one_hot encodes text"),
        "{e}"
    );
    // a text cell in a column declared numeric
    std::fs::write(
        &path,
        s.replace("\n3.5,", "\nthree,").replace(",3.5,", ",three,"),
    )
    .unwrap();
    let mut c = config(csv_source(&path), vec![]);
    c.column_types = [("x".to_string(), kiln_preprocess::ColumnType::Number)].into();
    let e = run(&c, &dir.path().join("bad")).unwrap_err().to_string();
    assert!(
        e.contains("z.csv: row 4 column `x` holds `three`, not a number"),
        "{e}"
    );
    c.column_types = [("zpi".to_string(), kiln_preprocess::ColumnType::Text)].into();
    let e = run(&c, &dir.path().join("bad")).unwrap_err().to_string();
    assert!(
        e.contains("column_types: column `zpi`") && e.contains("did you mean `zip`?"),
        "{e}"
    );
    assert!(!dir.path().join("bad").exists());
}
