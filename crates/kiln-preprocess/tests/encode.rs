//! Text (categorical) columns: categorical impute, one-hot (with a cap), ordinal and
//! hashed bag of words on a small CSV written by hand, with values worked out by hand;
//! the categories fitted on the train split only; `kiln predict`'s way of reading raw
//! rows reproducing the training features; clear errors with nothing written.

use kiln_core::dataset::shards::{Split as Part, read_split};
use kiln_core::{Schema, TextColumn, Transform};
use kiln_preprocess::table::read_rows_with_text;
use kiln_preprocess::{Columns, Config, ImputeStrategy, ImputeValue, Source, Split, Step, run};
use std::path::{Path, PathBuf};

fn config(train: &Path, test: &Path, steps: Vec<Step>) -> Config {
    Config {
        source: Source::Csv {
            path: None,
            train: Some(train.to_path_buf()),
            test: Some(test.to_path_buf()),
            delimiter: ',',
            has_header: true,
            null_values: vec!["NA".into()],
        },
        target: "y".into(),
        task: None,
        positive_class: None,
        column_types: Default::default(),
        steps: Some(steps),
        // every train-source row is in train, in file order
        split: Split {
            valid: 0.0,
            test: None,
            stratify: false,
            row_id: None,
        },
        augment: Default::default(),
        shard_rows: None,
        load: Default::default(),
        memory_mb: 1024,
        seed: 1,
        engine: Default::default(),
        scheduler: None,
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn named(v: &[&str]) -> Columns {
    Columns::Named(v.iter().map(|s| s.to_string()).collect())
}

/// color: red 3, blue 2, green 1; size: S 2, M 2, L 1 and one missing; review: free text.
const CSV: &str = "color,size,review,x,y\n\
red,S,Late delivery!! late-fee,1,a\n\
blue,M,great value,2,b\n\
red,,ok,3,a\n\
green,L,,4,b\n\
red,M,ok,5,a\n\
blue,S,great value,6,b\n";

fn steps() -> Vec<Step> {
    vec![
        Step::Impute {
            strategy: ImputeStrategy::MostFrequent,
            value: None,
            columns: named(&["size"]),
        },
        Step::OneHot {
            columns: named(&["color"]),
            max_categories: Some(2),
        },
        Step::Ordinal {
            columns: named(&["size"]),
        },
        Step::HashText {
            columns: vec!["review".into()],
            n_features: 4,
        },
    ]
}

fn text(cells: &[Option<&str>]) -> TextColumn {
    TextColumn::from_cells(cells.iter().copied())
}

#[test]
fn encoders_worked_by_hand_and_reproduced_on_raw_rows() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write(dir.path(), "d.csv", CSV);
    let out_dir = dir.path().join("out");
    let out = run(&config(&csv, &csv, steps()), &out_dir).unwrap();
    // the splits handed to the next stages in memory are the files' contents exactly
    let (_, read_back) = kiln_preprocess::read_artifact(&out_dir).unwrap();
    assert_eq!(out.splits, read_back);
    let s = &out.schema;
    assert_eq!(s.input_columns, ["color", "size", "review", "x"]);
    assert_eq!(s.text_columns(), ["color", "size", "review"]);
    assert_eq!(
        s.feature_names,
        [
            "color=blue",
            "color=red",
            "size",
            "review#0",
            "review#1",
            "review#2",
            "review#3",
            "x"
        ]
    );
    // size: S and M tie at 2, the smaller name wins
    assert_eq!(
        s.transforms[0],
        Transform::ImputeCategorical {
            columns: vec!["size".into()],
            strategy: "most_frequent".into(),
            values: vec!["M".into()],
        }
    );
    // the cap keeps red (3) and blue (2), recorded by name; green is left out
    assert_eq!(
        s.transforms[1],
        Transform::OneHot {
            columns: vec!["color".into()],
            categories: vec![vec!["blue".into(), "red".into()]],
        }
    );
    assert_eq!(
        s.transforms[2],
        Transform::Ordinal {
            columns: vec!["size".into()],
            categories: vec![vec!["L".into(), "M".into(), "S".into()]],
        }
    );
    // FNV-1a 64 mod 4: late -> 1, delivery -> 1, fee -> 3, great -> 2, value -> 2, ok -> 3
    #[rustfmt::skip]
    let want: Vec<f32> = vec![
        0., 1., 2., 0., 3., 0., 1., 1.,
        1., 0., 1., 0., 0., 2., 0., 2.,
        0., 1., 1., 0., 0., 0., 1., 3.,
        0., 0., 0., 0., 0., 0., 0., 4.,
        0., 1., 1., 0., 0., 0., 1., 5.,
        1., 0., 2., 0., 0., 2., 0., 6.,
    ];
    let train = read_split(&out_dir, Part::Train).unwrap();
    assert_eq!(train.features, want);
    // kiln predict's reading of the same file gives the same features
    let rows = read_rows_with_text(&csv, &s.input_columns, &s.text_columns()).unwrap();
    assert_eq!(s.apply_with_text(&rows.values, rows.text).unwrap(), want);
    // unseen category -> zeros, unseen size -> -1, tokens are lowercased
    let raw = [f32::NAN, f32::NAN, f32::NAN, 9.0];
    let cells = vec![
        ("color".to_string(), text(&[Some("purple")])),
        ("size".to_string(), text(&[Some("XL")])),
        ("review".to_string(), text(&[Some("LATE, Late")])),
    ];
    assert_eq!(
        s.apply_with_text(&raw, cells).unwrap(),
        [0., 0., -1., 0., 2., 0., 0., 9.]
    );
    // schema.json round-trips, and profile.json has no min / max for text columns
    let back: Schema = kiln_core::read_json(&out_dir.join("schema.json")).unwrap();
    assert_eq!(&back, s);
    let p: serde_json::Value = kiln_core::read_json(&out_dir.join("profile.json")).unwrap();
    assert!(p["columns"][0]["min"].is_null(), "{}", p["columns"][0]);
    assert_eq!(p["columns"][1]["missing"], 1);
}

#[test]
fn constant_impute_and_the_categorical_group() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write(dir.path(), "d.csv", CSV);
    let steps = vec![
        Step::Impute {
            strategy: ImputeStrategy::Constant,
            value: Some(ImputeValue::Text("none".into())),
            columns: Columns::Group("categorical".into()),
        },
        // the default columns of one_hot are the categorical ones
        Step::OneHot {
            columns: Columns::Group("categorical".into()),
            max_categories: None,
        },
    ];
    let out = run(&config(&csv, &csv, steps), &dir.path().join("out")).unwrap();
    let s = &out.schema;
    assert_eq!(
        s.transforms[0],
        Transform::ImputeCategorical {
            columns: ["color", "size", "review"].map(String::from).to_vec(),
            strategy: "constant".into(),
            values: ["none"; 3].map(String::from).to_vec(),
        }
    );
    let names = &s.feature_names;
    // byte order: upper case before lower case; the fill `none` is a category of the
    // columns that had a missing cell, and only of those
    assert_eq!(
        names[..],
        [
            "color=blue",
            "color=green",
            "color=red",
            "size=L",
            "size=M",
            "size=S",
            "size=none",
            "review=Late delivery!! late-fee",
            "review=great value",
            "review=none",
            "review=ok",
            "x"
        ]
    );
    // every train row in file order: row 3's missing size and row 4's missing review are
    // the `none` features
    let train = read_split(&dir.path().join("out"), Part::Train).unwrap();
    #[rustfmt::skip]
    let want = vec![
        0., 0., 1.,  0., 0., 1., 0.,  1., 0., 0., 0.,  1.,
        1., 0., 0.,  0., 1., 0., 0.,  0., 1., 0., 0.,  2.,
        0., 0., 1.,  0., 0., 0., 1.,  0., 0., 0., 1.,  3.,
        0., 1., 0.,  1., 0., 0., 0.,  0., 0., 1., 0.,  4.,
        0., 0., 1.,  0., 1., 0., 0.,  0., 0., 0., 1.,  5.,
        1., 0., 0.,  0., 0., 1., 0.,  0., 1., 0., 0.,  6.,
    ];
    assert_eq!(train.features, want);
    assert_eq!(train.row(2)[6], 1.0, "row 3: size=none");
    assert_eq!(train.row(3)[9], 1.0, "row 4: review=none");
}

/// The categories come from the train source only: other test rows (new categories,
/// other texts) leave schema.json byte for byte as it was, and map unseen categories to
/// zeros.
#[test]
fn categories_are_fitted_on_train_only() {
    let dir = tempfile::tempdir().unwrap();
    let train = write(dir.path(), "train.csv", CSV);
    let test_a = write(dir.path(), "a.csv", "color,size,review,x,y\nred,S,ok,1,a\n");
    let test_b = write(
        dir.path(),
        "b.csv",
        "color,size,review,x,y\npurple,XXL,brand new words,7,b\nteal,,,8,a\n",
    );
    let schema_of = |test: &Path, out: &str| {
        let o = dir.path().join(out);
        run(&config(&train, test, steps()), &o).unwrap();
        (
            std::fs::read(o.join("schema.json")).unwrap(),
            read_split(&o, Part::Test).unwrap(),
        )
    };
    let (a, _) = schema_of(&test_a, "out-a");
    let (b, test) = schema_of(&test_b, "out-b");
    assert_eq!(a, b, "schema.json must not depend on the test rows");
    // purple: zeros; XXL: -1; teal with a missing size: zeros, size imputed to M (1)
    assert_eq!(test.features[..3], [0., 0., -1.]);
    assert_eq!(test.features[8..11], [0., 0., 1.]);
}

fn error(dir: &Path, text: &str, steps: Vec<Step>) -> String {
    let csv = write(dir, "e.csv", text);
    let out = dir.join("e-out");
    let e = run(&config(&csv, &csv, steps), &out)
        .unwrap_err()
        .to_string();
    assert!(!out.exists(), "nothing is written on error: {e}");
    e
}

#[test]
fn text_columns_need_an_encoder_and_the_right_steps() {
    let dir = tempfile::tempdir().unwrap();
    // no encoder: named, with where the text is and the steps that would encode it
    let e = error(dir.path(), CSV, vec![]);
    assert!(
        e.contains("column `color`")
            && e.contains("row 1 column `color` holds `red`, not a number")
            && e.contains("one_hot")
            && e.contains("ordinal")
            && e.contains("hash_text"),
        "{e}"
    );
    // a numeric step on a text column
    let e = error(
        dir.path(),
        CSV,
        vec![Step::Standardize {
            columns: named(&["x", "size"]),
        }],
    );
    assert!(
        e.contains("steps[0] (standardize)") && e.contains("`size` holds text"),
        "{e}"
    );
    // mean of a categorical column
    let e = error(
        dir.path(),
        CSV,
        vec![Step::Impute {
            strategy: ImputeStrategy::Mean,
            value: None,
            columns: named(&["size"]),
        }],
    );
    assert!(
        e.contains("`size` is categorical") && e.contains("most_frequent"),
        "{e}"
    );
    // a number as the constant of a categorical column
    let e = error(
        dir.path(),
        CSV,
        vec![Step::Impute {
            strategy: ImputeStrategy::Constant,
            value: Some(ImputeValue::Number(0.0)),
            columns: named(&["size"]),
        }],
    );
    assert!(e.contains("must be a string"), "{e}");
    // an encoder on a numeric column
    let e = error(
        dir.path(),
        CSV,
        vec![Step::OneHot {
            columns: named(&["x"]),
            max_categories: None,
        }],
    );
    assert!(e.contains("`x` holds numbers"), "{e}");
    // a typo names the nearest column
    let e = error(
        dir.path(),
        CSV,
        vec![Step::HashText {
            columns: vec!["reviw".into()],
            n_features: 4,
        }],
    );
    assert!(e.contains("did you mean `review`?"), "{e}");
    // config checks: n_features and the cap
    let e = error(
        dir.path(),
        CSV,
        vec![Step::HashText {
            columns: vec!["review".into()],
            n_features: 0,
        }],
    );
    assert!(e.contains("n_features"), "{e}");
    let e = error(
        dir.path(),
        CSV,
        vec![Step::OneHot {
            columns: Columns::Group("categorical".into()),
            max_categories: Some(0),
        }],
    );
    assert!(e.contains("max_categories"), "{e}");
}
