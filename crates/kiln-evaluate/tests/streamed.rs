//! The evaluation of a split streamed from its shards equals the evaluation of the same
//! split in memory: every metric, the confusion matrix, the slices, the permutation
//! importance and the baselines.

use kiln_core::dataset::SplitData;
use kiln_core::dataset::shards::{self, Shards, Split};
use kiln_core::{Activation, Dataset, ModelSpec, NativeModel, Predictor, Task, TensorStore};
use kiln_evaluate::{Config, Extras, run_split};

/// `n` rows of 3 features (the third a category code 0..4) with 3 classes that the
/// first two features mostly decide.
fn rows(n: usize, offset: usize) -> Dataset {
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for i in offset..offset + n {
        let a = ((i * 37) % 101) as f32 / 50.0 - 1.0;
        let b = ((i * 53) % 97) as f32 / 48.0 - 1.0;
        features.extend([a, b, (i % 4) as f32]);
        // a noisy rule, so that no metric is trivially 1
        let l = if a + 0.3 * b > 0.2 {
            2
        } else if a < -0.4 {
            0
        } else {
            1
        };
        labels.push(if i % 11 == 0 { (l + 1) % 3 } else { l });
    }
    Dataset {
        feature_names: vec!["a".into(), "b".into(), "c".into()],
        target: "y".into(),
        features,
        labels,
        values: vec![],
    }
}

fn model() -> NativeModel {
    let spec = ModelSpec::mlp(3, &[], Activation::Identity, Task::Classification, 3);
    let mut w = TensorStore::default();
    w.insert_f32(
        "layers.0.weight",
        vec![3, 3],
        vec![-2.0, 0.1, 2.0, 0.0, 0.2, 0.6, 0.05, -0.05, 0.0],
    );
    w.insert_f32("layers.0.bias", vec![3], vec![-0.5, 0.4, -0.3]);
    NativeModel::new(spec, w).unwrap()
}

#[test]
fn a_streamed_split_scores_exactly_as_in_memory() {
    let (train, valid, test) = (rows(900, 0), rows(300, 900), rows(611, 1200));
    let dir = tempfile::tempdir().unwrap();
    shards::write(dir.path(), [&train, &valid, &test], 37).unwrap();
    let s = Shards::open(dir.path()).unwrap();
    assert_eq!(s.manifest.test.shards.len(), 611_usize.div_ceil(37));
    let config = Config {
        slice_by: Some("c".into()),
        importance: Some(serde_json::from_str(r#"{ "rows": 250 }"#).unwrap()),
        baselines: true,
        ..Config::default()
    };
    let labels = ["x".to_string(), "y".to_string(), "z".to_string()];
    let score = |data: [SplitData<'_>; 3], out: &str| {
        let mut m = model();
        let mut variants: Vec<(String, &mut dyn Predictor)> = vec![("fp32".into(), &mut m)];
        let [train, valid, test] = data;
        let extras = Extras {
            valid: Some(valid),
            train: Some(train),
            seed: 3,
            ..Extras::default()
        };
        let out_dir = dir.path().join(out);
        let o = run_split(&config, &mut variants, test, &labels, extras, &out_dir).unwrap();
        (
            o,
            std::fs::read_to_string(out_dir.join("metrics.json")).unwrap(),
        )
    };
    let (memory, memory_json) = score(
        [
            SplitData::Memory(&train),
            SplitData::Memory(&valid),
            SplitData::Memory(&test),
        ],
        "memory",
    );
    let (streamed, streamed_json) = score(
        [
            SplitData::Shards(&s, Split::Train),
            SplitData::Shards(&s, Split::Valid),
            SplitData::Shards(&s, Split::Test),
        ],
        "streamed",
    );
    let (m, st) = (&memory.variants[0], &streamed.variants[0]);
    // the figures are real: neither perfect nor chance
    let acc = m.scalars["accuracy"];
    assert!(acc > 0.6 && acc < 0.99, "{acc}");
    assert_eq!(m.confusion, st.confusion);
    assert_eq!(m.confusion.iter().flatten().sum::<u64>(), 611);
    for (k, v) in &m.scalars {
        assert!(
            (v - st.scalars[k]).abs() <= 1e-12,
            "{k}: {v} vs {}",
            st.scalars[k]
        );
    }
    assert_eq!(m.slices.len(), 4);
    assert_eq!(m.slices, st.slices);
    assert_eq!(memory.importance.len(), 3);
    assert_eq!(memory.importance, streamed.importance);
    // the baselines fit on every train row either way (fewer than their sample)
    assert_eq!(memory.baselines.len(), 2);
    for (a, b) in memory.baselines.iter().zip(&streamed.baselines) {
        assert_eq!(a.scalars, b.scalars, "{}", a.name);
    }
    assert_eq!(memory_json, streamed_json);
}

/// The baselines' sample of a streamed split: the asked number of rows, each a row of the
/// split with its label, spread over the whole split, the same for the same seed.
#[test]
fn the_baseline_sample_is_seeded_and_uniform_over_the_shards() {
    let train = rows(900, 0);
    let dir = tempfile::tempdir().unwrap();
    shards::write(dir.path(), [&train, &rows(5, 900), &rows(5, 905)], 50).unwrap();
    let s = Shards::open(dir.path()).unwrap();
    let split = SplitData::Shards(&s, Split::Train);
    let a = kiln_evaluate::baseline::sample_rows(&split, 100, 1).unwrap();
    assert_eq!((a.n_rows(), a.labels.len(), a.n_features()), (100, 100, 3));
    // rows are found in the split, with their own labels, in row order
    let index = |x: &[f32]| (0..900).find(|&i| train.row(i) == x).unwrap();
    let found: Vec<usize> = (0..100).map(|r| index(a.row(r))).collect();
    assert!(found.windows(2).all(|w| w[0] < w[1]), "{found:?}");
    for (r, &i) in found.iter().enumerate() {
        assert_eq!(a.labels[r], train.labels[i]);
    }
    // spread: every third of the split gives 20 to 47 rows
    for third in 0..3 {
        let k = found.iter().filter(|&&i| i / 300 == third).count();
        assert!((20..=47).contains(&k), "third {third}: {k} rows");
    }
    assert_eq!(
        kiln_evaluate::baseline::sample_rows(&split, 100, 1).unwrap(),
        a
    );
    assert_ne!(
        kiln_evaluate::baseline::sample_rows(&split, 100, 2).unwrap(),
        a
    );
    // a sample larger than the split is the split
    let all = kiln_evaluate::baseline::sample_rows(&split, 5000, 1).unwrap();
    assert_eq!(
        (all.features, all.labels),
        (train.features.clone(), train.labels.clone())
    );
}
