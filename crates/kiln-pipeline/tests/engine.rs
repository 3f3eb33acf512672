//! Tests of the run engine against what a user saw go wrong: stale metrics when only the
//! test file changed, code changes that never invalidated the cache, path-like stage ids,
//! a failed stage deleting what it promised to keep, a verdict that cannot be read, and
//! abandoned cache folders (`kiln gc`). Kills and concurrent runs are in kiln-cli's
//! tests/engine.rs (they need separate processes).

use kiln_core::artifact::metrics::Metrics;
use kiln_core::artifact::run::{RunManifest, StageStatus};
use kiln_pipeline::{BuildSources, PipelineError, RunOptions, load, parse, run};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn statuses(r: &kiln_pipeline::RunReport) -> Vec<(String, StageStatus)> {
    r.stages.iter().map(|s| (s.id.clone(), s.status)).collect()
}

/// iris.csv split by row into train.csv (4 of 5 rows) and test.csv (every 5th row).
fn iris_files(dir: &Path) {
    let text = std::fs::read_to_string(root().join("fixtures/iris.csv")).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let (mut train, mut test) = (vec![header.to_string()], vec![header.to_string()]);
    for (i, l) in lines.enumerate() {
        if i % 5 == 0 { &mut test } else { &mut train }.push(l.to_string());
    }
    std::fs::write(dir.join("train.csv"), train.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("test.csv"), test.join("\n") + "\n").unwrap();
}

const TRAIN_TEST: &str = r#"version = 1
name = "split-files"
seed = 4
[stages.data]
uses = "preprocess"
source = { format = "csv", train = "train.csv", test = "test.csv" }
target = "species"
steps = [{ op = "standardize" }]
split = { valid = 0.2 }
[stages.train]
uses = "train"
input = "data"
model = { hidden = [8] }
optimizer = { lr = 1e-2 }
epochs = 30
batch_size = 16
[stages.eval]
uses = "evaluate"
inputs = ["train"]
runtime = "native"
[stages.ship]
uses = "deploy"
input = "train"
requires = ["eval"]
"#;

/// The accuracy of the trained model on the run's test split, recomputed here.
fn test_accuracy(run_dir: &Path) -> f64 {
    let (_, [_, _, test]) = kiln_preprocess::read_artifact(&run_dir.join("data")).unwrap();
    let mut m = kiln_core::NativeModel::load(&run_dir.join("train")).unwrap();
    let pred = kiln_core::Predictor::predict(&mut m, &test.features, test.n_rows())
        .unwrap()
        .argmax();
    let right = pred
        .iter()
        .zip(&test.labels)
        .filter(|(a, b)| a == b)
        .count();
    right as f64 / test.n_rows() as f64
}

/// Changing only the test file reruns evaluate and deploy (they read the dataset's
/// test split, and their keys now cover it), which report the new metrics; training's
/// output is byte-identical, and the card in the bundle shows the new figure.
#[test]
fn changing_only_the_test_file_reruns_evaluate_and_deploy_with_new_metrics() {
    let dir = tempfile::tempdir().unwrap();
    iris_files(dir.path());
    let file = dir.path().join("p.toml");
    std::fs::write(&file, TRAIN_TEST).unwrap();
    let opts = RunOptions::new(dir.path().join("runs"));
    let first = run(&load(&file, &[]).unwrap(), &opts).unwrap();
    assert!(first.ok, "{:?}", first.failure);
    let acc = |r: &kiln_pipeline::RunReport| {
        kiln_core::artifact::load::<Metrics>(&r.run_dir.join("eval"))
            .unwrap()
            .get("train", "accuracy")
            .unwrap()
    };
    let before = acc(&first);
    assert_eq!(before, test_accuracy(&first.run_dir));
    assert!(before >= 0.9, "{before}");

    // every test label rotated to another class
    let test = std::fs::read_to_string(dir.path().join("test.csv")).unwrap();
    let rotated = test
        .replace("setosa", "TMP")
        .replace("virginica", "setosa")
        .replace("versicolor", "virginica")
        .replace("TMP", "versicolor");
    std::fs::write(dir.path().join("test.csv"), rotated).unwrap();
    let second = run(&load(&file, &[]).unwrap(), &opts).unwrap();
    assert!(second.ok, "{:?}", second.failure);
    use StageStatus::Executed;
    assert_eq!(
        statuses(&second),
        [
            ("data".to_string(), Executed),
            ("train".to_string(), Executed),
            ("eval".to_string(), Executed),
            ("ship".to_string(), Executed)
        ]
    );
    let bytes = |r: &kiln_pipeline::RunReport| {
        std::fs::read(r.run_dir.join("train/weights.safetensors")).unwrap()
    };
    assert_eq!(bytes(&first), bytes(&second), "train saw the same rows");
    let after = acc(&second);
    assert_eq!(after, test_accuracy(&second.run_dir));
    assert!(after <= 0.1, "rotated labels: {after}");
    let card = std::fs::read_to_string(second.run_dir.join("ship/model_card.md")).unwrap();
    assert!(card.contains(&format!("{after:.4}")), "{card}");
    assert!(!card.contains(&format!("{before:.4}")), "{card}");
    // the file is named in run.json, relative to the pipeline file, with its new hash
    let m: RunManifest = kiln_core::artifact::load(&second.run_dir).unwrap();
    assert_eq!(
        m.input_files["test.csv"],
        kiln_core::hash_file(&dir.path().join("test.csv")).unwrap()
    );
    let data = &m.stages[0];
    assert_eq!(data.rerun_because, ["file `test.csv` changed"]);
}

/// A new build of one crate reruns the stages whose code it is (with early cut-off: a
/// stage whose inputs did not change is cached again), and an unchanged rebuild reruns
/// nothing.
#[test]
fn a_changed_build_reruns_the_stages_of_the_changed_crate() {
    let runs = tempfile::tempdir().unwrap();
    let p = load(
        &root().join("pipelines/digits-mlp.toml"),
        &[
            "stages.train.epochs=3".to_string(),
            "stages.eval.gates.accuracy=\">= 0.5\"".to_string(),
        ],
    )
    .unwrap();
    let mut opts = RunOptions::new(runs.path());
    assert!(run(&p, &opts).unwrap().ok);
    // the same sources again: nothing runs
    let same = run(&p, &opts).unwrap();
    assert!(same.stages.iter().all(|s| s.status == StageStatus::Cached));
    // kiln-train changed: train and optimize (which fine-tunes with it) rerun; their
    // outputs are byte-identical, so evaluate and deploy stay cached
    opts.build = BuildSources {
        train: "another kiln-train".into(),
        ..BuildSources::built()
    };
    let r = run(&p, &opts).unwrap();
    assert!(r.ok, "{:?}", r.failure);
    let st: Vec<(String, StageStatus)> = statuses(&r);
    use StageStatus::{Cached, Executed};
    assert_eq!(
        st,
        [
            ("data".to_string(), Cached),
            ("train".to_string(), Executed),
            ("compress".to_string(), Executed),
            ("eval".to_string(), Cached),
            ("ship".to_string(), Cached)
        ]
    );
    assert_eq!(
        r.stages[1].rerun_because,
        ["kiln's code for this stage changed (a new build)"]
    );
    // kiln-core changed: everything reruns
    opts.build.core = "another kiln-core".into();
    let r = run(&p, &opts).unwrap();
    assert!(
        r.stages.iter().all(|s| s.status == Executed),
        "{:?}",
        statuses(&r)
    );
}

/// A stage id that could name a path outside the run folder (or nothing) is a located
/// validation error, and `run` never touches a file.
#[test]
fn path_like_and_empty_stage_ids_are_located_errors() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "keep me").unwrap();
    for id in ["../../victim", "/tmp/x", "", "a b", "a/b", ".."] {
        let text = format!(
            "version = 1\nname = \"ids\"\n[stages.{:?}]\nuses = \"preprocess\"\nsource = {{ format = \"csv\", path = \"iris.csv\" }}\n",
            id
        );
        let file = dir.path().join("p.toml");
        let errs = parse(&file, &text, &[]).unwrap_err();
        assert_eq!(errs.len(), 1, "{id:?}: {errs:?}");
        let e = errs[0].to_string();
        assert!(
            e.contains(&format!(
                "p.toml:3:9: stage id `{id}` must be non-empty and use only letters, digits, - and _"
            )),
            "{id:?}: {e}"
        );
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    assert!(kiln_pipeline::valid_name("data-2_x"));
}

/// An optimize stage whose candidates all miss the budget fails, and keeps what it
/// promised (candidates.json, every candidate's model) in the run folder as
/// `<id>.failed`, never in the cache.
#[test]
fn an_over_budget_optimize_stage_keeps_its_candidates() {
    let runs = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join("pipelines/digits-mlp.toml")).unwrap();
    let head = &text[..text.find("[stages.compress]").unwrap()];
    let with = |budget: &str| {
        format!(
            "{head}[stages.compress]\nuses = \"optimize\"\ninput = \"train\"\ncandidates = [{{ structured = 0.9 }}]\nmax_accuracy_drop = {budget}\nlatency = false\n"
        )
    };
    let file = root().join("pipelines/over-budget.toml");
    // a negative budget is refused when the file is read
    let e = parse(&file, &with("-1.0"), &["stages.train.epochs=3".to_string()]).unwrap_err();
    assert!(e[0].to_string().contains("max_accuracy_drop"), "{e:?}");
    // a zero budget, and a candidate that changes predictions: the stage fails
    let p = parse(&file, &with("0.0"), &["stages.train.epochs=3".to_string()]).unwrap();
    let r = run(&p, &RunOptions::new(runs.path())).unwrap();
    assert!(!r.ok);
    let f = r.failure.unwrap();
    assert!(
        matches!(&f, PipelineError::Stage { id, source: kiln_pipeline::StageError::Optimize(_) } if id == "compress"),
        "{f:?}"
    );
    let kept = r.run_dir.join("compress.failed");
    let cands: kiln_core::artifact::candidates::Candidates =
        kiln_core::artifact::load(&kept).unwrap();
    let names: Vec<&str> = cands.candidates.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["fp32", "structured-90"]);
    assert!(!cands.candidates[1].chosen && cands.candidates[1].accuracy_drop > 0.0);
    assert!(kept.join("candidates/structured-90/spec.json").is_file());
    assert!(!r.run_dir.join("compress").exists());
    // and nothing of it in the cache: only complete entries of the other stages
    let entries = std::fs::read_dir(runs.path().join(".cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .count();
    assert_eq!(entries, 2, "data and train");
}

/// A verdict that cannot be read blocks the stages that require it (the gate fails
/// closed), even when their own output is cached.
#[test]
fn an_unreadable_verdict_blocks_what_requires_it() {
    let runs = tempfile::tempdir().unwrap();
    let p = load(
        &root().join("pipelines/digits-mlp.toml"),
        &[
            "stages.train.epochs=3".to_string(),
            "stages.eval.gates.accuracy=\">= 0.5\"".to_string(),
        ],
    )
    .unwrap();
    let opts = RunOptions::new(runs.path());
    let r = run(&p, &opts).unwrap();
    assert!(r.ok, "{:?}", r.failure);
    let verdict = std::fs::canonicalize(r.run_dir.join("eval/verdict.json")).unwrap();
    std::fs::write(&verdict, "{ not json").unwrap();
    let r = run(&p, &opts).unwrap();
    assert!(!r.ok);
    let ship = r.stages.iter().find(|s| s.id == "ship").unwrap();
    assert_eq!(ship.status, StageStatus::Blocked);
    let why = ship.message.clone().unwrap();
    assert!(
        why.contains("the verdict of `eval` cannot be read"),
        "{why}"
    );
    assert!(!r.run_dir.join("ship").exists());
}

/// `kiln gc`: abandoned partial folders and entries no run links to go (dry run lists
/// them first), linked entries and entries being built stay.
#[test]
fn gc_removes_abandoned_partials_and_unlinked_entries_only() {
    let runs = tempfile::tempdir().unwrap();
    let p = load(
        &root().join("pipelines/digits-mlp.toml"),
        &[
            "stages.train.epochs=3".to_string(),
            "stages.eval.gates.accuracy=\">= 0.5\"".to_string(),
        ],
    )
    .unwrap();
    let r = run(&p, &RunOptions::new(runs.path())).unwrap();
    assert!(r.ok, "{:?}", r.failure);
    let cache = runs.path().join(".cache");
    let count = || {
        std::fs::read_dir(&cache)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().is_dir())
            .count()
    };
    let linked = count();
    assert_eq!(linked, 5);
    // an entry no run links to, an abandoned partial, and a partial being built
    std::fs::create_dir_all(cache.join("0000unlinked")).unwrap();
    std::fs::write(cache.join("0000unlinked/x.bin"), vec![0u8; 1000]).unwrap();
    std::fs::create_dir_all(cache.join("1111abandoned.partial")).unwrap();
    std::fs::create_dir_all(cache.join("2222busy.partial")).unwrap();
    let busy = std::fs::File::create(cache.join("2222busy.lock")).unwrap();
    busy.lock().unwrap();
    let everything = kiln_pipeline::gc::GcOptions {
        older_than: 0,
        ..Default::default()
    };
    let dry = kiln_pipeline::gc::gc(
        runs.path(),
        &kiln_pipeline::gc::GcOptions {
            dry_run: true,
            ..everything.clone()
        },
    )
    .unwrap();
    let mut names: Vec<String> = dry
        .iter()
        .map(|r| r.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["0000unlinked", "1111abandoned.partial"]);
    assert_eq!(
        dry.iter()
            .find(|r| r.why == "no run links to it")
            .unwrap()
            .bytes,
        1000
    );
    assert_eq!(count(), linked + 3, "a dry run removes nothing");
    // too young for the age limit: nothing goes
    let young = kiln_pipeline::gc::gc(
        runs.path(),
        &kiln_pipeline::gc::GcOptions {
            older_than: 3600,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(young.is_empty());
    let removed = kiln_pipeline::gc::gc(runs.path(), &everything).unwrap();
    assert_eq!(removed.len(), 2);
    assert_eq!(count(), linked + 1, "the busy partial stays");
    assert!(cache.join("2222busy.partial").is_dir());
    drop(busy);
    // the run still reads: every stage cached
    let again = run(&p, &RunOptions::new(runs.path())).unwrap();
    assert!(again.stages.iter().all(|s| s.status == StageStatus::Cached));
}
