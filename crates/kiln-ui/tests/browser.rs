//! kiln ui in a real browser (headless Chromium through ChromeDriver) over runs folders
//! the tests make: real pipeline runs for the runs list, a run page and a comparison,
//! whose shown values are checked against the artifacts on disk; a hand-made run in
//! progress for the live view.

mod common;

use common::{Browser, start_ui};
use fantoccini::Locator;
use kiln_core::artifact::history::History;
use kiln_core::artifact::metrics::Metrics;
use kiln_core::artifact::progress::{EpochPoint, RunProgress};
use kiln_core::artifact::run::{RunManifest, RunStatus, StageKind, StageRecord, StageStatus};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn pipelines() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines")
}

/// Runs `pipelines/<name>.toml` into `runs` with `--set` overrides; the run's folder.
fn run_pipeline(runs: &Path, name: &str, set: &[&str]) -> PathBuf {
    let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
    let p = kiln_pipeline::load(&pipelines().join(format!("{name}.toml")), &set).unwrap();
    let r = kiln_pipeline::run(&p, &kiln_pipeline::RunOptions::new(runs)).unwrap();
    assert!(r.ok, "{:?}", r.failure);
    r.run_dir
}

fn id_of(run_dir: &Path) -> String {
    run_dir.file_name().unwrap().to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_list_run_page_and_compare_show_the_artifacts_values() {
    let runs = tempfile::tempdir().unwrap();
    let first = run_pipeline(runs.path(), "digits-mlp", &["stages.train.epochs=12"]);
    // a second run one second later (run ids are per second), another learning rate
    std::thread::sleep(Duration::from_millis(1100));
    let second = run_pipeline(
        runs.path(),
        "digits-mlp",
        &["stages.train.epochs=12", "stages.train.optimizer.lr=0.01"],
    );
    let (id1, id2) = (id_of(&first), id_of(&second));
    // a run folder left half-written
    let broken = runs.path().join("digits-mlp/20000101-000000");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("run.json"), "{\"kind\": \"kiln.run\", \"pipel").unwrap();

    let addr = start_ui(runs.path()).await;
    let b = Browser::start().await;
    let base = format!("http://{addr}");

    // --- the runs list: every run, newest first, its status and test accuracy
    b.client.goto(&format!("{base}/")).await.unwrap();
    b.text("#runs").await;
    let keys = b.attrs("#runs tbody tr[data-run]", "data-run").await;
    assert_eq!(
        keys,
        [
            format!("digits-mlp/{id2}"),
            format!("digits-mlp/{id1}"),
            "digits-mlp/20000101-000000".to_string()
        ]
    );
    let states = b.texts("#runs tbody tr[data-run] td.status").await;
    assert_eq!(states, ["ok", "ok", "broken"]);
    let metrics: Metrics = kiln_core::artifact::load(&second.join("eval")).unwrap();
    // the list shows the model the run ships: the compressed one
    let acc2 = metrics.variants["compress"]["accuracy"];
    let shown = b
        .text(&format!(
            "tr[data-run=\"digits-mlp/{id2}\"] td[data-metric=\"accuracy\"]"
        ))
        .await;
    assert_eq!(shown, format!("{acc2:.4}"));
    let variant = "train".to_string();
    b.screenshot("runs.png").await;

    // sorting by a metric column, both ways; the broken run (no metric) stays last
    let acc1_shipped = kiln_core::artifact::load::<Metrics>(&first.join("eval"))
        .unwrap()
        .variants["compress"]["accuracy"];
    b.client
        .goto(&format!("{base}/?sort=accuracy&order=asc"))
        .await
        .unwrap();
    let asc = b.attrs("#runs tbody tr[data-run]", "data-run").await;
    // (a tie keeps the list's order, newest first: the sort is stable)
    let lowest = if acc1_shipped < acc2 { &id1 } else { &id2 };
    assert_eq!(asc[0], format!("digits-mlp/{lowest}"));
    assert_eq!(asc[2], "digits-mlp/20000101-000000");
    b.client
        .goto(&format!("{base}/?sort=accuracy&order=desc"))
        .await
        .unwrap();
    let desc = b.attrs("#runs tbody tr[data-run]", "data-run").await;
    let highest = if acc1_shipped > acc2 { &id1 } else { &id2 };
    assert_eq!(desc[0], format!("digits-mlp/{highest}"));
    assert_eq!(desc[2], "digits-mlp/20000101-000000");
    // filtering by status
    b.client
        .goto(&format!("{base}/?status=broken"))
        .await
        .unwrap();
    assert_eq!(
        b.attrs("#runs tbody tr[data-run]", "data-run").await,
        ["digits-mlp/20000101-000000"]
    );

    // --- a run page: the kept epoch, a confusion-matrix cell and a metric, as on disk
    b.client
        .goto(&format!("{base}/runs/digits-mlp/{id1}"))
        .await
        .unwrap();
    let history: History = kiln_core::artifact::load(&first.join("train")).unwrap();
    let acc1 = kiln_core::artifact::load::<Metrics>(&first.join("eval"))
        .unwrap()
        .variants[&variant]["accuracy"];
    let acc2 = metrics.variants[&variant]["accuracy"];
    assert_eq!(
        b.text("#best-epoch-train").await,
        history.best_epoch.to_string()
    );
    let details: serde_json::Value =
        serde_json::from_slice(&std::fs::read(first.join("eval/confusion.json")).unwrap()).unwrap();
    // a cell whose transpose differs, so a matrix drawn the wrong way round fails
    let cm: Vec<Vec<u64>> = serde_json::from_value(details["train"]["confusion"].clone()).unwrap();
    let (i, j) = (0..10)
        .flat_map(|i| (0..10).map(move |j| (i, j)))
        .find(|&(i, j)| cm[i][j] != cm[j][i])
        .expect("a confusion matrix that is not symmetric");
    assert_eq!(
        b.text(&format!(
            "#cm-train td[data-truth=\"{i}\"][data-pred=\"{j}\"]"
        ))
        .await,
        cm[i][j].to_string()
    );
    // its row holds the truth: row i of the table, column j
    assert_eq!(
        b.text(&format!(
            "#cm-train tbody tr:nth-child({}) td:nth-child({})",
            i + 1,
            j + 2
        ))
        .await,
        cm[i][j].to_string()
    );
    let diag: u64 = (0..10)
        .map(|i| details["train"]["confusion"][i][i].as_u64().unwrap())
        .sum();
    let shown_diag: u64 = b
        .texts("#cm-train td.diag")
        .await
        .iter()
        .map(|t| t.parse::<u64>().unwrap())
        .sum();
    assert_eq!(shown_diag, diag);
    // the metrics table: variants in name order (compress, train), accuracy the first
    // metric column
    assert_eq!(
        b.texts("table.metrics thead th").await[..2],
        ["variant".to_string(), "accuracy".to_string()]
    );
    assert_eq!(
        b.texts("table.metrics tbody tr:nth-child(2) td").await[..2],
        ["train".to_string(), format!("{acc1:.4}")]
    );
    // the charts were drawn (uPlot puts a canvas in each)
    b.client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#curves-train-loss canvas"))
        .await
        .unwrap();
    // every stage of the graph, with its status
    assert_eq!(
        b.attrs(".graph .node", "data-stage").await,
        ["data", "train", "compress", "eval", "ship"]
    );
    // the graph's edges, from the pipeline file's inputs and requires
    assert_eq!(
        b.texts(".graph .node[data-stage=\"eval\"] small.in").await,
        ["← train, compress"]
    );
    assert_eq!(
        b.texts(".graph .node[data-stage=\"ship\"] small.in").await,
        ["← compress", "needs eval's verdict"]
    );
    assert!(b.text("#stage-ship").await.contains("ONNX graph"));
    b.screenshot("run.png").await;

    // --- compare: tick both runs on the list, press compare
    b.client.goto(&format!("{base}/")).await.unwrap();
    for id in [&id1, &id2] {
        b.client
            .find(Locator::Css(&format!("input[value=\"digits-mlp/{id}\"]")))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }
    b.client
        .find(Locator::Css("#compare"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let diff_keys = b
        .client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#config-diff"))
        .await
        .map(|_| ())
        .map_err(|e| format!("{e}"));
    assert!(diff_keys.is_ok(), "{diff_keys:?}");
    let keys = b.attrs("#config-diff tbody tr", "data-key").await;
    assert_eq!(
        keys,
        ["train.optimizer.lr"],
        "only the learning rate differs"
    );
    let cells = b.texts("#config-diff tbody tr td").await;
    assert_eq!(cells, ["0.01", "0.003"]);
    // metrics side by side, with the delta against the first run
    let row = b
        .texts("#metrics-compare tr[data-variant=\"train\"][data-metric=\"accuracy\"] td")
        .await;
    assert_eq!(row[2], format!("{acc2:.4}"));
    assert_eq!(row[3], format!("{acc1:.4}"));
    let delta = acc1 - acc2;
    let sign = if delta > 0.0 { "+" } else { "" };
    assert_eq!(row[4], format!("{sign}{delta:.4}"));
    // the delta's colour says better or worse: higher accuracy and lower log-loss are better
    let class_of = |metric: &str| {
        format!(
            "#metrics-compare tr[data-variant=\"train\"][data-metric=\"{metric}\"] td:nth-child(5)"
        )
    };
    let m1: Metrics = kiln_core::artifact::load(&first.join("eval")).unwrap();
    for metric in ["accuracy", "log_loss"] {
        let d = m1.variants["train"][metric] - metrics.variants["train"][metric];
        let expected = if d == 0.0 {
            "n"
        } else if (d > 0.0) == (metric == "accuracy") {
            "n delta-better"
        } else {
            "n delta-worse"
        };
        let cell = b
            .client
            .find(Locator::Css(&class_of(metric)))
            .await
            .unwrap();
        assert_eq!(
            cell.attr("class").await.unwrap().unwrap_or_default(),
            expected,
            "{metric}"
        );
    }
    b.screenshot("compare.png").await;
    b.client.clone().close().await.unwrap();
}

/// A run.json of a run in progress: data done, train running, in this process.
fn running_manifest(status: RunStatus) -> RunManifest {
    let stage = |id: &str, uses, status| StageRecord {
        id: id.into(),
        uses,
        inputs: Vec::new(),
        requires: Vec::new(),
        hash: String::new(),
        content_hash: None,
        status,
        seconds: 0.5,
        resumed_from_epoch: None,
        rerun_because: Vec::new(),
        message: None,
    };
    RunManifest {
        pipeline: "live".into(),
        file: "pipelines/live.toml".into(),
        run_id: "20991231-000000".into(),
        seed: 1,
        status,
        started: 4_102_358_400,
        seconds: 3.0,
        pid: std::process::id(),
        kiln_version: "0.1.0".into(),
        build: "test".into(),
        versions: Default::default(),
        onnxruntime: None,
        git_commit: None,
        input_files: Default::default(),
        resolved: Default::default(),
        stages: vec![
            stage("data", StageKind::Preprocess, StageStatus::Executed),
            stage(
                "train",
                StageKind::Train,
                if status == RunStatus::Running {
                    StageStatus::Running
                } else {
                    StageStatus::Failed
                },
            ),
        ],
        failure: None,
    }
}

fn progress(epochs: usize) -> RunProgress {
    RunProgress {
        stage: "train".into(),
        phase: format!("epoch {}/10", epochs + 1),
        done: 3,
        total: 8,
        epochs: (1..=epochs)
            .map(|e| EpochPoint {
                epoch: e,
                of: 10,
                train_loss: 1.0 / e as f64,
                valid_loss: 1.25 / e as f64,
                valid_metric: 0.5 + 0.03125 * e as f64,
            })
            .collect(),
        updated: 4_102_358_403,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_in_progress_gains_epochs_without_a_reload() {
    let runs = tempfile::tempdir().unwrap();
    let dir = runs.path().join("live/20991231-000000");
    std::fs::create_dir_all(&dir).unwrap();
    kiln_core::artifact::save(&dir, &running_manifest(RunStatus::Running)).unwrap();
    kiln_core::artifact::save(&dir, &progress(2)).unwrap();

    let addr = start_ui(runs.path()).await;
    let b = Browser::start().await;
    b.client
        .goto(&format!("http://{addr}/runs/live/20991231-000000"))
        .await
        .unwrap();
    assert_eq!(b.text("#run-status").await, "running");
    assert_eq!(
        b.attrs("#live-epochs tbody tr", "data-epoch").await,
        ["1", "2"]
    );
    let loaded = b
        .client
        .execute("return window.kilnLoadedAt", vec![])
        .await
        .unwrap();
    assert!(
        loaded.is_string(),
        "the page's script did not run: {loaded}"
    );

    // the engine finishes epoch 3: the row appears, the page is the same one
    kiln_core::artifact::save(&dir, &progress(3)).unwrap();
    let row = b.text("#live-epochs tbody tr[data-epoch=\"3\"]").await;
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["3/10", "0.3333", "0.4167", "0.5938"]
    );
    assert_eq!(b.text("#live-phase").await, "train: epoch 4/10 (3/8)");
    let again = b
        .client
        .execute("return window.kilnLoadedAt", vec![])
        .await
        .unwrap();
    assert_eq!(loaded, again, "the page reloaded instead of updating");
    b.screenshot("live.png").await;

    // a second training stage starts its own epochs: the table starts again, no reload
    let mut next = progress(1);
    next.stage = "finetune".into();
    kiln_core::artifact::save(&dir, &next).unwrap();
    let mut rows = Vec::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rows = b.attrs("#live-epochs tbody tr", "data-epoch").await;
        if rows == ["1"] {
            break;
        }
    }
    assert_eq!(rows, ["1"]);
    assert_eq!(b.text("#live-phase").await, "finetune: epoch 2/10 (3/8)");
    assert_eq!(
        b.client
            .execute("return window.kilnLoadedAt", vec![])
            .await
            .unwrap(),
        loaded
    );

    // the run ends (here: fails): the page reloads once and shows the final state
    kiln_core::artifact::save(&dir, &running_manifest(RunStatus::Failed)).unwrap();
    let mut state = String::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(e) = b.client.find(Locator::Css("#run-status")).await
            && let Ok(t) = e.text().await
        {
            state = t;
            if state == "failed" {
                break;
            }
        }
    }
    assert_eq!(state, "failed");
    b.client.clone().close().await.unwrap();
}
