//! The run engine as processes meet it: `kill -9` at each step of committing a cache
//! entry (injected with `KILN_KILL_AT`), concurrent `kiln run`s on one runs folder, and a
//! lock held past `--lock-timeout`.

mod common;

use common::{kiln, ok, root};
use std::path::Path;
use std::process::Output;

/// Every complete cache entry (one with a marker) holds exactly the content its marker
/// vouches for; returns how many there are.
fn check_entries(runs: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(runs.join(".cache")).unwrap() {
        let dir = e.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        if !dir.is_dir() || name.contains('.') {
            continue;
        }
        let marker: serde_json::Value = kiln_core::read_json(&dir.join(".kiln-entry.json"))
            .unwrap_or_else(|e| panic!("{name} has no marker, yet is named as an entry: {e}"));
        assert_eq!(marker["key_hash"], name.as_str());
        assert_eq!(
            marker["content_hash"],
            kiln_core::hash_dir(&dir).unwrap().as_str(),
            "{name}: content differs from its marker"
        );
        n += 1;
    }
    n
}

fn run_iris(runs: &Path, args: &[&str], env: Option<(&str, &str)>) -> Output {
    let mut c = kiln();
    c.arg("run")
        .arg(root().join("pipelines/iris.toml"))
        .arg("--runs-dir")
        .arg(runs)
        .args(args);
    if let Some((k, v)) = env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// A run killed (abort, like kill -9: no cleanup) at each step of building or replacing a
/// cache entry never leaves a folder that a later run takes for complete: the next plain
/// run succeeds, and every entry matches its marker.
#[test]
fn a_kill_at_any_commit_step_leaves_the_cache_usable() {
    let runs = tempfile::tempdir().unwrap();
    let runs = runs.path();
    // first builds, killed before anything was committed
    for point in ["after-stage", "before-marker", "before-rename"] {
        let out = run_iris(runs, &[], Some(("KILN_KILL_AT", point)));
        assert!(!out.status.success(), "{point}: the kill happened");
        assert_eq!(check_entries(runs), 0, "{point}: no entry yet");
    }
    ok(&mut {
        let mut c = kiln();
        c.arg("run")
            .arg(root().join("pipelines/iris.toml"))
            .arg("--runs-dir")
            .arg(runs);
        c
    });
    assert_eq!(check_entries(runs), 4);
    // --force replaces entries in place: a kill at each step of the exchange
    for point in [
        "after-stage",
        "before-marker",
        "before-rename",
        "after-exchange",
    ] {
        let out = run_iris(runs, &["--force"], Some(("KILN_KILL_AT", point)));
        assert!(!out.status.success(), "{point}: the kill happened");
        assert_eq!(check_entries(runs), 4, "{point}");
        let next = run_iris(runs, &[], None);
        assert!(
            next.status.success(),
            "{point}: {}",
            String::from_utf8_lossy(&next.stderr)
        );
        let stdout = String::from_utf8_lossy(&next.stdout);
        assert!(!stdout.contains("failed"), "{point}: {stdout}");
        let latest = runs.join("iris/latest");
        for f in [
            "data/manifest.json",
            "data/train-00000.parquet",
            "data/test-00000.parquet",
            "train/weights.safetensors",
            "eval/metrics.json",
            "ship/model.onnx",
        ] {
            assert!(latest.join(f).is_file(), "{point}: {f}");
        }
    }
}

/// Three `kiln run`s at once on one runs folder, three rounds (the last two with
/// `--force`, so they rebuild the same entries): every run succeeds (the later ones
/// wait for the lock, then use or replace the entry), each gets its own run id, and a
/// plain run afterwards finds everything cached.
#[test]
fn concurrent_runs_on_one_runs_folder_all_succeed() {
    let runs = tempfile::tempdir().unwrap();
    let runs = runs.path();
    let mut ids = std::collections::BTreeSet::new();
    for round in 0..3 {
        let force: &[&str] = if round == 0 { &[] } else { &["--force"] };
        let children: Vec<_> = (0..3)
            .map(|_| {
                kiln()
                    .arg("run")
                    .arg(root().join("pipelines/iris.toml"))
                    .arg("--runs-dir")
                    .arg(runs)
                    .args(force)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            let dir = stdout
                .lines()
                .find_map(|l| l.strip_prefix("run folder: "))
                .unwrap_or_else(|| panic!("{stdout}"))
                .split_whitespace()
                .next()
                .unwrap()
                .to_string();
            assert!(ids.insert(dir.clone()), "run folder {dir} used twice");
        }
        assert_eq!(check_entries(runs), 4, "round {round}");
    }
    let out = ok(&mut {
        let mut c = kiln();
        c.arg("run")
            .arg(root().join("pipelines/iris.toml"))
            .arg("--runs-dir")
            .arg(runs);
        c
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("┆ cached ┆").count(), 4, "{stdout}");
    // no partial folder is left behind
    let partials = std::fs::read_dir(runs.join(".cache"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".partial")
        })
        .count();
    assert_eq!(partials, 0);
}

/// A run that cannot get a cache entry's lock within `--lock-timeout` exits with code 3
/// and names who holds it.
#[test]
fn a_lock_held_past_the_timeout_exits_3_naming_the_holder() {
    let runs = tempfile::tempdir().unwrap();
    let runs = runs.path();
    ok(&mut {
        let mut c = kiln();
        c.arg("run")
            .arg(root().join("pipelines/iris.toml"))
            .arg("--runs-dir")
            .arg(runs);
        c
    });
    // hold every entry's lock, as another run building it would
    let mut held = Vec::new();
    for e in std::fs::read_dir(runs.join(".cache")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "lock") {
            let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.lock().unwrap();
            std::fs::write(
                &p,
                r#"{"pid": 4242, "run": "iris/20260101-000000", "stage": "data", "since": 0}"#,
            )
            .unwrap();
            held.push(f);
        }
    }
    assert_eq!(held.len(), 4);
    let started = std::time::Instant::now();
    let out = run_iris(runs, &["--force", "--lock-timeout", "0.5"], None);
    assert_eq!(out.status.code(), Some(3));
    assert!(started.elapsed().as_secs_f64() < 30.0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("run iris/20260101-000000 (pid 4242), building stage `data`"),
        "{err}"
    );
    assert!(err.contains("--lock-timeout"), "{err}");
    drop(held);
    // released: the same command succeeds
    let out = run_iris(runs, &["--force", "--lock-timeout", "0.5"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(check_entries(runs), 4);
}

/// A streamed preprocess killed (SIGKILL) while it writes its shards leaves only a
/// partial folder: no entry the cache accepts; the rerun starts that stage over and
/// writes the very artifact an uninterrupted run writes.
#[test]
fn a_killed_streaming_preprocess_leaves_no_entry_and_reruns_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("a,b,c,d,e,f,label\n");
    let mut s: u64 = 7;
    for i in 0..200_000u64 {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let u = (s >> 40) as f64 / (1u64 << 24) as f64;
        csv.push_str(&format!(
            "{i},{:.4},{:.3},{},{:.2},{},{}\n",
            u * 3.0,
            u * u,
            i % 17,
            (u * 100.0).sin(),
            ["p", "q", "r"][(u * 2.99) as usize],
            u32::from(u > 0.4)
        ));
    }
    std::fs::write(dir.path().join("t.csv"), csv).unwrap();
    std::fs::write(
        dir.path().join("p.toml"),
        r#"version = 1
name = "big"
seed = 3
[stages.data]
uses = "preprocess"
source = { format = "csv", path = "t.csv" }
target = "label"
load = "stream"
shard_rows = 2000
steps = [
  { op = "standardize", columns = ["a", "b", "c", "d"] },
  { op = "one_hot", columns = ["f"] },
]
split = { valid = 0.1, test = 0.1 }
"#,
    )
    .unwrap();
    let run = |runs: &str| {
        ok(kiln()
            .args(["run", "p.toml", "--runs-dir", runs])
            .env("RUST_LOG", "kiln_preprocess=info")
            .current_dir(dir.path()))
    };
    let first = run("a");
    let log = String::from_utf8_lossy(&first.stderr);
    assert!(log.contains("transforming and writing the shards"), "{log}");

    let mut child = kiln()
        .args(["run", "p.toml", "--runs-dir", "b"])
        .current_dir(dir.path())
        .spawn()
        .unwrap();
    let cache = dir.path().join("b/.cache");
    let started = std::time::Instant::now();
    loop {
        let writing = std::fs::read_dir(&cache)
            .ok()
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .any(|e| e.path().join("train-00002.parquet").exists());
        if writing {
            child.kill().unwrap();
            child.wait().unwrap();
            break;
        }
        assert!(started.elapsed().as_secs() < 120, "no shard appeared");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the preprocess finished before it could be interrupted"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(
        check_entries(&dir.path().join("b")),
        0,
        "a killed stage left an entry"
    );
    assert!(!dir.path().join("b/big/latest/data").exists());

    run("b");
    let manifest = |runs: &str| {
        std::fs::read_to_string(dir.path().join(runs).join("big/latest/data/manifest.json"))
            .unwrap()
    };
    assert_eq!(manifest("b"), manifest("a"));
    assert!(!dir.path().join("b/big/latest/data/.spill").exists());
}
