//! Running a pipeline: stage hashes, the content-addressed cache (`runs/.cache/<hash>`,
//! built in `<hash>.partial` and renamed when complete), the run folder with one link per
//! stage, `requires` verdicts, and the `run.json` manifest.

use crate::file::{Pipeline, StageConfig, StageDef};
use crate::{PipelineError, StageKind};
use kiln_core::{KILN_VERSION, NativeModel, Predictor, Progress};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How to run.
#[derive(Clone)]
pub struct RunOptions<'a> {
    /// Where `.cache/` and `<pipeline-name>/<run-id>/` go (default `runs`).
    pub runs_dir: PathBuf,
    /// Rerun every stage even when a complete cached output exists (with `only`: that
    /// stage alone, its upstream stages still come from the cache).
    pub force: bool,
    /// Receives progress of long steps (training epochs).
    pub progress: &'a dyn Progress,
    /// Run only this stage (forced); its upstream stages must be cached, later ones are
    /// skipped.
    pub only: Option<String>,
    /// Rerun this stage and every stage downstream of it; upstream stages run as usual.
    pub from: Option<String>,
}

impl RunOptions<'_> {
    /// Runs into `runs_dir`: cached stages reused, every stage run, no progress shown.
    pub fn new(runs_dir: impl Into<PathBuf>) -> Self {
        RunOptions {
            runs_dir: runs_dir.into(),
            force: false,
            progress: &kiln_core::NoProgress,
            only: None,
            from: None,
        }
    }
}

/// Ids of `root` and every stage that depends on it, directly or not.
fn downstream(p: &Pipeline, root: &str) -> Vec<String> {
    let mut set = vec![root.to_string()];
    for s in &p.stages {
        if s.inputs.iter().chain(&s.requires).any(|d| set.contains(d)) && !set.contains(&s.id) {
            set.push(s.id.clone());
        }
    }
    set
}

/// Ids of every stage `root` depends on, directly or not.
fn upstream_ids(p: &Pipeline, root: &str) -> Vec<String> {
    let mut set: Vec<String> = Vec::new();
    let mut todo = vec![root.to_string()];
    while let Some(id) = todo.pop() {
        if let Some(s) = p.stages.iter().find(|s| s.id == id) {
            for d in s.inputs.iter().chain(&s.requires) {
                if !set.contains(d) {
                    set.push(d.clone());
                    todo.push(d.clone());
                }
            }
        }
    }
    set
}

/// What happened to one stage (a row of run.json).
#[derive(Debug, Clone, Serialize)]
pub struct StageRecord {
    /// Stage id.
    pub id: String,
    /// Stage kind.
    pub uses: StageKind,
    /// Hash of (kind, resolved config, input content hashes, kiln version).
    pub hash: String,
    /// Hash of the stage's output files.
    pub content_hash: Option<String>,
    /// `executed`, `cached`, `failed` or `blocked`.
    pub status: String,
    /// Wall time of this stage in this run (0 when cached).
    pub seconds: f64,
    /// Set when a training stage continued from the checkpoint of an interrupted run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_from_epoch: Option<usize>,
    /// Error or blocking reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A small table for the end-of-run summary.
#[derive(Debug, Clone, Serialize)]
pub struct Table {
    /// Title line.
    pub title: String,
    /// Column names.
    pub header: Vec<String>,
    /// Rows of cells.
    pub rows: Vec<Vec<String>>,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// `runs/<name>/<run-id>`.
    pub run_dir: PathBuf,
    /// One record per stage, in execution order.
    pub stages: Vec<StageRecord>,
    /// Summary tables (data, training, variants, deployment).
    pub tables: Vec<Table>,
    /// True when every stage executed or was cached and every gate passed.
    pub ok: bool,
    /// Why the run failed.
    pub failure: Option<String>,
}

#[derive(Serialize)]
struct Manifest<'a> {
    pipeline: &'a str,
    file: String,
    run_id: String,
    seed: u64,
    kiln_version: &'a str,
    versions: BTreeMap<&'a str, &'a str>,
    git_commit: Option<String>,
    input_files: BTreeMap<String, String>,
    resolved: BTreeMap<String, serde_json::Value>,
    stages: &'a [StageRecord],
    ok: bool,
    failure: &'a Option<String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PipelineError + '_ {
    move |source| PipelineError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs every stage of `pipeline` in order, reusing cached outputs.
pub fn run(pipeline: &Pipeline, opts: &RunOptions) -> Result<RunReport, PipelineError> {
    let ids: Vec<String> = pipeline.stages.iter().map(|s| s.id.clone()).collect();
    for (flag, id) in [("--only", &opts.only), ("--from", &opts.from)] {
        if let Some(id) = id.as_ref().filter(|id| !ids.contains(id)) {
            let hint = crate::nearest(id, &ids)
                .map(|n| format!(" (did you mean `{n}`?)"))
                .unwrap_or_default();
            return Err(PipelineError::Usage(format!(
                "{flag} {id}: no such stage{hint}; stages are: {}",
                ids.join(", ")
            )));
        }
    }
    let forced: Vec<String> = match (&opts.only, &opts.from) {
        (Some(o), _) => vec![o.clone()],
        (None, Some(f)) => downstream(pipeline, f),
        (None, None) => Vec::new(),
    };
    let needed: Option<Vec<String>> = opts.only.as_ref().map(|o| upstream_ids(pipeline, o));
    let cache = opts.runs_dir.join(".cache");
    std::fs::create_dir_all(&cache).map_err(io(&cache))?;
    let run_id = new_run_id(&opts.runs_dir.join(&pipeline.name));
    let run_dir = opts.runs_dir.join(&pipeline.name).join(&run_id);
    std::fs::create_dir_all(&run_dir).map_err(io(&run_dir))?;

    let mut records: Vec<StageRecord> = Vec::new();
    let mut dirs: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut datasets = Datasets::new();
    let mut input_files = BTreeMap::new();
    let mut resolved = BTreeMap::new();
    let mut failure: Option<String> = None;

    for stage in &pipeline.stages {
        if let (Some(only), Some(needed)) = (&opts.only, &needed)
            && &stage.id != only
            && !needed.contains(&stage.id)
        {
            records.push(StageRecord {
                id: stage.id.clone(),
                uses: stage.kind,
                hash: String::new(),
                content_hash: None,
                status: "skipped".into(),
                seconds: 0.0,
                resumed_from_epoch: None,
                message: Some(format!("not needed by --only {only}")),
            });
            continue;
        }
        let config_json = serde_json::to_value(&stage.config).unwrap_or(serde_json::Value::Null);
        resolved.insert(stage.id.clone(), config_json.clone());
        let mut rec = StageRecord {
            id: stage.id.clone(),
            uses: stage.kind,
            hash: String::new(),
            content_hash: None,
            status: String::new(),
            seconds: 0.0,
            resumed_from_epoch: None,
            message: None,
        };

        // Blocked by an earlier failure, or by a verdict that did not pass.
        let blocked = stage.inputs.iter().chain(&stage.requires).find_map(|d| {
            let r = records.iter().find(|r| &r.id == d)?;
            (r.status == "failed" || r.status == "blocked").then(|| format!("`{d}` {}", r.status))
        });
        let verdict_block = stage.requires.iter().find_map(|d| {
            let v: serde_json::Value =
                kiln_core::read_json(&dirs.get(d)?.join("verdict.json")).ok()?;
            (v["blessed"] != serde_json::Value::Bool(true)).then(|| {
                format!(
                    "`{d}` did not bless the model: {}",
                    v["reason"].as_str().unwrap_or("?")
                )
            })
        });
        if let Some(why) = blocked.or(verdict_block) {
            rec.status = "blocked".into();
            rec.message = Some(why.clone());
            tracing::warn!(stage = %stage.id, "blocked: {why}");
            failure.get_or_insert(format!("stage `{}` did not run: {why}", stage.id));
            records.push(rec);
            continue;
        }

        // The stage hash: kind, resolved config, input content, kiln version.
        let mut h = format!(
            "kiln {KILN_VERSION}\n{}\n{}\n",
            stage.kind.as_str(),
            config_json
        );
        for d in stage.inputs.iter().chain(&stage.requires) {
            let r = records
                .iter()
                .find(|r| &r.id == d)
                .and_then(|r| r.content_hash.clone())
                .unwrap_or_default();
            h += &format!("input {d} {r}\n");
        }
        if let StageConfig::Preprocess(c) = &stage.config {
            for f in kiln_preprocess::source_files(&c.source) {
                let fh = kiln_core::hash_file(&f).unwrap_or_else(|_| "missing".into());
                h += &format!("file {} {fh}\n", f.display());
                input_files.insert(f.display().to_string(), fh);
            }
        }
        rec.hash = kiln_core::hash_bytes(h.as_bytes())[..32].to_string();
        let done = cache.join(&rec.hash);
        let partial = cache.join(format!("{}.partial", rec.hash));

        // with --only, the stages upstream come from the cache even under --force (the
        // --only stage itself always reruns)
        let force = (opts.force && needed.is_none()) || forced.contains(&stage.id);
        if done.is_dir() && !force {
            rec.status = "cached".into();
            tracing::info!(stage = %stage.id, hash = %rec.hash, "cached");
        } else if needed.as_ref().is_some_and(|n| n.contains(&stage.id)) {
            let why = format!(
                "--only {} needs `{}`, which has no cached output for this configuration; run the pipeline once without --only (or use --from)",
                opts.only.as_deref().unwrap_or(""),
                stage.id
            );
            rec.status = "failed".into();
            rec.message = Some(why.clone());
            failure.get_or_insert(why);
            records.push(rec);
            continue;
        } else {
            let _span = tracing::info_span!("stage", id = %stage.id).entered();
            // A training stage keeps its partial folder: the checkpoint of an interrupted
            // run lives there and is resumed. Other stages start from scratch.
            if partial.exists() && stage.kind != StageKind::Train {
                std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
            }
            std::fs::create_dir_all(&partial).map_err(io(&partial))?;
            let started = Instant::now();
            let result = execute(
                pipeline,
                stage,
                &dirs,
                &partial,
                &rec.hash,
                opts,
                &mut datasets,
            );
            rec.seconds = started.elapsed().as_secs_f64();
            match result {
                Ok(resumed) => {
                    rec.resumed_from_epoch = resumed;
                    if done.exists() {
                        std::fs::remove_dir_all(&done).map_err(io(&done))?;
                    }
                    std::fs::rename(&partial, &done).map_err(io(&done))?;
                    if let Some(a) = datasets.remove(&partial) {
                        datasets.insert(done.clone(), a);
                    }
                    rec.status = "executed".into();
                }
                Err(msg) => {
                    // Keep nothing that looks complete.
                    let _ = std::fs::remove_dir_all(&partial);
                    datasets.remove(&partial);
                    rec.status = "failed".into();
                    rec.message = Some(msg.clone());
                    failure.get_or_insert(format!("stage `{}` failed: {msg}", stage.id));
                    records.push(rec);
                    continue;
                }
            }
        }
        rec.content_hash = Some(kiln_core::hash_dir(&done)?);
        link(
            &run_dir.join(&stage.id),
            &Path::new("../../.cache").join(&rec.hash),
        )?;
        dirs.insert(stage.id.clone(), done.clone());
        if stage.kind == StageKind::Evaluate
            && let Ok(v) = kiln_core::read_json::<serde_json::Value>(&done.join("verdict.json"))
            && v["blessed"] != serde_json::Value::Bool(true)
        {
            failure.get_or_insert(format!(
                "gate failed in `{}`: {}",
                stage.id,
                v["reason"].as_str().unwrap_or("?")
            ));
        }
        records.push(rec);
    }

    let ok = failure.is_none();
    let versions = BTreeMap::from([
        ("kiln", KILN_VERSION),
        ("polars", "0.55.2"),
        ("dfdx", "0.13.0"),
        ("ort", "2.0.0-rc.15"),
        ("onnxruntime", "1.31.1"),
        ("rustc", env!("KILN_RUSTC_VERSION")),
    ]);
    let manifest = Manifest {
        pipeline: &pipeline.name,
        file: pipeline.file.display().to_string(),
        run_id: run_id.clone(),
        seed: pipeline.seed,
        kiln_version: KILN_VERSION,
        versions,
        git_commit: git_commit(pipeline.file.parent().unwrap_or(Path::new("."))),
        input_files,
        resolved,
        stages: &records,
        ok,
        failure: &failure,
    };
    kiln_core::write_json(&run_dir.join("run.json"), &manifest)?;
    let latest = opts.runs_dir.join(&pipeline.name).join("latest");
    let _ = std::fs::remove_file(&latest);
    link(&latest, Path::new(&run_id))?;
    let tables = summary_tables(pipeline, &dirs);
    Ok(RunReport {
        run_dir,
        stages: records,
        tables,
        ok,
        failure,
    })
}

/// `git rev-parse HEAD` of the repository holding the pipeline file (with `-dirty` when
/// it has uncommitted changes), or None outside git.
fn git_commit(dir: &Path) -> Option<String> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let head = git(&["rev-parse", "HEAD"])?;
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{head}-dirty") } else { head })
}

#[cfg(unix)]
fn link(at: &Path, target: &Path) -> Result<(), PipelineError> {
    let _ = std::fs::remove_file(at);
    std::os::unix::fs::symlink(target, at).map_err(io(at))
}

#[cfg(not(unix))]
fn link(at: &Path, target: &Path) -> Result<(), PipelineError> {
    kiln_core::atomic_write(at, target.display().to_string().as_bytes()).map_err(Into::into)
}

/// A run id sortable by time: `YYYYMMDD-HHMMSS` in UTC, with `-N` added on a clash.
fn new_run_id(parent: &Path) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let base = format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    let mut id = base.clone();
    let mut n = 1;
    while parent.join(&id).exists() {
        n += 1;
        id = format!("{base}-{n}");
    }
    id
}

/// The nearest upstream stage of `kind`, following first inputs.
pub(crate) fn upstream<'p>(p: &'p Pipeline, from: &str, kind: StageKind) -> Option<&'p StageDef> {
    let mut cur = p.stages.iter().find(|s| s.id == from)?;
    loop {
        if cur.kind == kind {
            return Some(cur);
        }
        let next = cur.inputs.first()?;
        cur = p.stages.iter().find(|s| &s.id == next)?;
    }
}

/// A preprocess stage's artifact in memory: its schema and train / valid / test splits.
type Artifact = std::rc::Rc<(kiln_core::Schema, [kiln_core::Dataset; 3])>;

/// The artifacts read so far in this run, by folder: the stages after a preprocess stage
/// share one copy instead of each reading ≈ 200 MB of Arrow IPC again (cache folders are
/// never changed once complete, so a copy cannot go stale within a run).
type Datasets = BTreeMap<PathBuf, Artifact>;

fn dataset(
    p: &Pipeline,
    from: &str,
    dirs: &BTreeMap<String, PathBuf>,
    memo: &mut Datasets,
) -> Result<Artifact, String> {
    let pre = upstream(p, from, StageKind::Preprocess)
        .ok_or_else(|| format!("no preprocess stage upstream of `{from}`"))?;
    let dir = dirs
        .get(&pre.id)
        .ok_or_else(|| format!("stage `{}` has no output", pre.id))?;
    if let Some(a) = memo.get(dir) {
        return Ok(a.clone());
    }
    let a = std::rc::Rc::new(kiln_preprocess::read_artifact(dir).map_err(|e| e.to_string())?);
    memo.insert(dir.clone(), a.clone());
    Ok(a)
}

fn model_of(dirs: &BTreeMap<String, PathBuf>, id: &str) -> Result<NativeModel, String> {
    let dir = dirs
        .get(id)
        .ok_or_else(|| format!("stage `{id}` has no output"))?;
    NativeModel::load(dir).map_err(|e| e.to_string())
}

/// The training histories behind `inputs` (a train stage itself, or the train stage an
/// optimize stage compressed), each once, for the evaluation report's curves.
fn training_curves(
    p: &Pipeline,
    inputs: &[String],
    dirs: &BTreeMap<String, PathBuf>,
) -> Vec<kiln_evaluate::plots::Curves> {
    #[derive(serde::Deserialize)]
    struct HistoryFile {
        metric: String,
        epochs: Vec<kiln_evaluate::plots::EpochPoint>,
        best_epoch: usize,
    }
    let mut seen = Vec::new();
    for id in inputs {
        let Some(stage) = p.stages.iter().find(|s| &s.id == id) else {
            continue;
        };
        let train = match stage.kind {
            StageKind::Train => Some(id),
            StageKind::Optimize => stage.inputs.first(),
            _ => None,
        };
        if let Some(t) = train
            && !seen.contains(t)
        {
            seen.push(t.clone());
        }
    }
    seen.into_iter()
        .filter_map(|id| {
            let h: HistoryFile = kiln_core::read_json(&dirs.get(&id)?.join("history.json")).ok()?;
            Some(kiln_evaluate::plots::Curves {
                name: id,
                metric: h.metric,
                epochs: h.epochs,
                best_epoch: h.best_epoch,
            })
        })
        .collect()
}

/// Runs one stage into `out`; returns the epoch a training stage resumed from.
fn execute(
    p: &Pipeline,
    stage: &StageDef,
    dirs: &BTreeMap<String, PathBuf>,
    out: &Path,
    hash: &str,
    opts: &RunOptions,
    datasets: &mut Datasets,
) -> Result<Option<usize>, String> {
    let mut dataset = |p: &Pipeline, from: &str, dirs: &BTreeMap<String, PathBuf>| {
        dataset(p, from, dirs, datasets)
    };
    let first = stage.inputs.first().map(String::as_str).unwrap_or("");
    let mut resumed = None;
    let done: Result<(), String> = match &stage.config {
        StageConfig::Preprocess(c) => kiln_preprocess::run(c, out)
            .map(|o| {
                // the stages after it take the splits from memory, not from the files
                datasets.insert(out.to_path_buf(), std::rc::Rc::new((o.schema, o.splits)));
            })
            .map_err(|e| e.to_string()),
        StageConfig::Train(c) => {
            let data = dataset(p, first, dirs)?;
            let (schema, [train, valid, _]) = &*data;
            let o = kiln_train::run(c, train, valid, schema.n_classes(), out, opts.progress)
                .map_err(|e| e.to_string())?;
            resumed = o.resumed_from_epoch;
            kiln_core::write_json(&out.join("schema.json"), &schema).map_err(|e| e.to_string())
        }
        StageConfig::Optimize(c) => {
            let data = dataset(p, first, dirs)?;
            let (schema, [train, valid, _]) = &*data;
            let model = model_of(dirs, first)?;
            kiln_optimize::run(c, &model, train, valid, out).map_err(|e| e.to_string())?;
            kiln_core::write_json(&out.join("schema.json"), &schema).map_err(|e| e.to_string())
        }
        StageConfig::Evaluate(c) => {
            let data = dataset(p, first, dirs)?;
            let (schema, [_, valid, test]) = &*data;
            let mut models: Vec<(String, NativeModel)> = stage
                .inputs
                .iter()
                .map(|id| model_of(dirs, id).map(|m| (id.clone(), m)))
                .collect::<Result<_, _>>()?;
            // What deploy would ship: the same exporter's bytes, run by ONNX Runtime.
            let mut onnx: Vec<kiln_deploy::OrtModel> = Vec::new();
            if c.runtime == "onnxruntime" {
                for (id, m) in &models {
                    let meta = kiln_deploy::ExportMeta {
                        class_labels: schema.class_labels.clone(),
                        feature_names: schema.feature_names.clone(),
                        ..Default::default()
                    };
                    let bytes = kiln_deploy::export(&m.spec, &m.weights, &meta)
                        .map_err(|e| format!("exporting `{id}` to score it: {e}"))?;
                    onnx.push(kiln_deploy::OrtModel::from_bytes(&bytes, 1).map_err(|e| {
                        format!("{e} (or set runtime = \"native\" in stage `{}`)", stage.id)
                    })?);
                }
            }
            let curves = training_curves(p, &stage.inputs, dirs);
            type Named<'a> = Vec<(String, &'a mut dyn Predictor)>;
            let (mut variants, reference): (Named, Vec<&mut dyn Predictor>) = if onnx.is_empty() {
                let v = models
                    .iter_mut()
                    .map(|(n, m)| (n.clone(), m as &mut dyn Predictor))
                    .collect();
                (v, Vec::new())
            } else {
                let names: Vec<String> = models.iter().map(|(n, _)| n.clone()).collect();
                let v = names
                    .into_iter()
                    .zip(onnx.iter_mut())
                    .map(|(n, o)| (n, o as &mut dyn Predictor))
                    .collect();
                let r = models
                    .iter_mut()
                    .map(|(_, m)| m as &mut dyn Predictor)
                    .collect();
                (v, r)
            };
            let extras = kiln_evaluate::Extras {
                curves: &curves,
                reference,
                valid: Some(valid),
                schema: Some(schema),
                seed: p.seed,
            };
            kiln_evaluate::run_report(c, &mut variants, test, &schema.class_labels, extras, out)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        StageConfig::Deploy(c) => {
            let data = dataset(p, first, dirs)?;
            let (schema, [_, _, test]) = &*data;
            let src = p
                .stages
                .iter()
                .find(|s| s.id == first)
                .ok_or("deploy input vanished")?;
            let mut variants = Vec::new();
            if src.kind == StageKind::Optimize {
                let parent = src.inputs.first().ok_or("optimize stage has no input")?;
                variants.push(kiln_deploy::Variant {
                    name: "fp32".into(),
                    model: model_of(dirs, parent)?,
                });
                // named after the chosen candidate (model.<name>.onnx)
                let chosen = dirs
                    .get(first)
                    .and_then(|d| {
                        kiln_core::read_json::<Vec<kiln_optimize::Candidate>>(
                            &d.join("candidates.json"),
                        )
                        .ok()
                    })
                    .and_then(|c| c.into_iter().find(|c| c.chosen))
                    .map_or_else(|| "compressed".to_string(), |c| c.name);
                variants.push(kiln_deploy::Variant {
                    name: chosen,
                    model: model_of(dirs, first)?,
                });
            } else {
                variants.push(kiln_deploy::Variant {
                    name: "fp32".into(),
                    model: model_of(dirs, first)?,
                });
            }
            let o = kiln_deploy::run(c, &variants, schema, test, hash, out)
                .map_err(|e| e.to_string())?;
            // model_card.md: the variants' origins let it show their test metrics
            let origins: Vec<(String, String)> = variants
                .iter()
                .map(|v| {
                    let from = match (v.name.as_str(), src.kind) {
                        ("fp32", StageKind::Optimize) => src.inputs.first().cloned(),
                        _ => None,
                    };
                    (v.name.clone(), from.unwrap_or_else(|| first.to_string()))
                })
                .collect();
            let card = crate::card::model_card(p, stage, dirs, &origins);
            kiln_deploy::card::write(out, &card, schema, c, &o, hash).map_err(|e| e.to_string())?;
            // the bundle carries the training ranges, so `kiln predict` can warn about
            // inputs outside them
            let profile = upstream(p, first, StageKind::Preprocess)
                .and_then(|pre| dirs.get(&pre.id))
                .map(|d| d.join("profile.json"))
                .filter(|f| f.is_file());
            match profile {
                Some(f) => std::fs::read(&f)
                    .map_err(|e| format!("{}: {e}", f.display()))
                    .and_then(|b| {
                        kiln_core::atomic_write(&out.join("profile.json"), &b)
                            .map_err(|e| e.to_string())
                    }),
                None => Ok(()),
            }
        }
    };
    done.map(|()| resumed)
}

/// The metrics a summary shows, (metrics.json key, title): accuracy and macro F1 for
/// classifiers, RMSE, MAE and R² for regressors.
fn main_metrics(metrics: &serde_json::Value) -> Vec<(&'static str, &'static str)> {
    let regression = metrics["variants"]
        .as_object()
        .and_then(|m| m.values().next())
        .is_some_and(|v| v.get("mse").is_some());
    if regression {
        vec![("rmse", "RMSE"), ("mae", "MAE"), ("r2", "R²")]
    } else {
        vec![("accuracy", "accuracy"), ("macro_f1", "macro F1")]
    }
}

fn fmt_metric(v: &serde_json::Value) -> String {
    v.as_f64()
        .map(|x| format!("{x:.4}"))
        .unwrap_or_else(|| "-".into())
}

/// Most rows of the data profile table in the summary; profile.json has every column.
const PROFILE_ROWS: usize = 12;

/// The preprocess stage's tables: rows per split with what was dropped and added, the
/// train class balance, and the column profile (columns with missing cells first).
fn data_tables(id: &str, v: &serde_json::Value) -> Vec<Table> {
    let r = &v["rows"];
    let d = &v["dropped_rows"];
    let a = &v["augmentation"];
    let n = |x: &serde_json::Value| x.as_u64().unwrap_or(0);
    let dropped = n(&d["null_target"]) + n(&d["null_features"]) + n(&d["duplicates"]);
    let added = n(&a["oversampled"]) + n(&a["copies"]);
    let mut out = vec![Table {
        title: format!("data ({id})"),
        header: [
            "train",
            "valid",
            "test",
            "features",
            "rows dropped",
            "train rows added",
        ]
        .map(String::from)
        .to_vec(),
        rows: vec![vec![
            r["train"].to_string(),
            r["valid"].to_string(),
            r["test"].to_string(),
            v["n_features"].to_string(),
            format!(
                "{dropped} (no target {}, nulls {}, duplicates {})",
                n(&d["null_target"]),
                n(&d["null_features"]),
                n(&d["duplicates"])
            ),
            format!(
                "{added} (oversampled {}, copies {})",
                n(&a["oversampled"]),
                n(&a["copies"])
            ),
        ]],
    }];
    let classes = v["train_class_counts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let total: u64 = classes.iter().map(|c| n(&c[1])).sum();
    if !classes.is_empty() {
        out.push(Table {
            title: format!("class balance, train before augmentation ({id})"),
            header: ["class", "rows", "share"].map(String::from).to_vec(),
            rows: classes
                .iter()
                .map(|c| {
                    vec![
                        c[0].as_str().unwrap_or_default().to_string(),
                        n(&c[1]).to_string(),
                        format!("{:.1} %", 100.0 * n(&c[1]) as f64 / total.max(1) as f64),
                    ]
                })
                .collect(),
        });
    }
    let mut cols = v["columns"].as_array().cloned().unwrap_or_default();
    let all = cols.len();
    cols.sort_by(|x, y| {
        let share = |c: &serde_json::Value| c["null_share"].as_f64().unwrap_or(0.0);
        share(y).total_cmp(&share(x))
    });
    let num = |x: &serde_json::Value| x.as_f64().map(|f| format!("{f:.4}")).unwrap_or("-".into());
    let mut rows: Vec<Vec<String>> = cols
        .iter()
        .take(PROFILE_ROWS)
        .map(|c| {
            vec![
                c["name"].as_str().unwrap_or_default().to_string(),
                c["dtype"].as_str().unwrap_or_default().to_string(),
                format!("{:.1} %", 100.0 * c["null_share"].as_f64().unwrap_or(0.0)),
                num(&c["min"]),
                num(&c["max"]),
                num(&c["mean"]),
                c["distinct"].to_string(),
            ]
        })
        .collect();
    if all > PROFILE_ROWS {
        rows.push(vec![
            format!("… {} more in profile.json", all - PROFILE_ROWS),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ]);
    }
    out.push(Table {
        title: format!("data profile, raw train columns ({id})"),
        header: [
            "column", "type", "missing", "min", "max", "mean", "distinct",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    });
    out
}

fn summary_tables(p: &Pipeline, dirs: &BTreeMap<String, PathBuf>) -> Vec<Table> {
    let mut tables = Vec::new();
    for s in &p.stages {
        let Some(dir) = dirs.get(&s.id) else { continue };
        let json = |f: &str| kiln_core::read_json::<serde_json::Value>(&dir.join(f)).ok();
        match s.kind {
            StageKind::Preprocess => {
                if let Some(v) = json("profile.json") {
                    tables.extend(data_tables(&s.id, &v));
                }
            }
            StageKind::Train => {
                if let Some(v) = json("sweep.json") {
                    let rows = v
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|t| {
                            vec![
                                format!(
                                    "{}{}",
                                    t["trial"],
                                    if t["chosen"] == true { " *" } else { "" }
                                ),
                                t["lr"].to_string(),
                                t["batch_size"].to_string(),
                                t["hidden"].to_string(),
                                t["dropout"].to_string(),
                                t["weight_decay"].to_string(),
                                fmt_metric(&t["best_valid_metric"]),
                                t["best_epoch"].to_string(),
                            ]
                        })
                        .collect();
                    tables.push(Table {
                        title: format!("sweep ({}; * = kept)", s.id),
                        header: [
                            "trial",
                            "lr",
                            "batch",
                            "hidden",
                            "dropout",
                            "weight decay",
                            "valid metric",
                            "best epoch",
                        ]
                        .map(String::from)
                        .to_vec(),
                        rows,
                    });
                }
                if let Some(v) = json("history.json") {
                    let best = v["best_epoch"].as_u64().unwrap_or(0) as usize;
                    let e = &v["epochs"][best.saturating_sub(1)];
                    let metric = v["metric"].as_str().unwrap_or("accuracy");
                    tables.push(Table {
                        title: format!("training ({})", s.id),
                        header: vec![
                            "epochs run".into(),
                            "best epoch".into(),
                            "train loss".into(),
                            format!("valid {metric}"),
                        ],
                        rows: vec![vec![
                            v["epochs"].as_array().map_or(0, |a| a.len()).to_string(),
                            best.to_string(),
                            format!("{:.4}", e["train_loss"].as_f64().unwrap_or(f64::NAN)),
                            format!("{:.4}", e["valid_metric"].as_f64().unwrap_or(f64::NAN)),
                        ]],
                    });
                }
            }
            StageKind::Optimize => {
                let Some(cands) = json("candidates.json") else {
                    continue;
                };
                let lat = json(kiln_optimize::LATENCY_FILE);
                let regression = p
                    .stages
                    .iter()
                    .find(|x| Some(x.id.as_str()) == s.inputs.first().map(String::as_str))
                    .and_then(|t| dirs.get(&t.id))
                    .and_then(|d| {
                        kiln_core::read_json::<kiln_core::ModelSpec>(&d.join("spec.json")).ok()
                    })
                    .is_some_and(|m| m.task == kiln_core::Task::Regression);
                let mut rows = Vec::new();
                for (i, c) in cands.as_array().into_iter().flatten().enumerate() {
                    let l = lat.as_ref().and_then(|l| l.get(i));
                    let ms = |k: &str| {
                        l.and_then(|l| l[k].as_f64())
                            .map_or_else(|| "-".into(), |v| format!("{v:.3}"))
                    };
                    let mut reason = c["reason"].as_str().unwrap_or("").to_string();
                    if let Some(slow) = l.and_then(|l| l["slower_than_fp32"].as_str()) {
                        reason = format!("{reason}; SLOWER than fp32: {slow}");
                    }
                    rows.push(vec![
                        format!(
                            "{}{}",
                            c["name"].as_str().unwrap_or("?"),
                            if c["chosen"].as_bool() == Some(true) {
                                " *"
                            } else {
                                ""
                            }
                        ),
                        c["params"].to_string(),
                        c["nonzeros"].to_string(),
                        format!(
                            "{:.1} KiB",
                            c["onnx_bytes"].as_f64().unwrap_or(0.0) / 1024.0
                        ),
                        fmt_metric(&c["valid_accuracy"]),
                        fmt_metric(&c["accuracy_drop"]),
                        ms("batch1_ms"),
                        ms("batch1024_ms"),
                        l.and_then(|l| l["speedup_1024"].as_f64())
                            .map_or_else(|| "-".into(), |v| format!("{v:.2}x")),
                        reason,
                    ]);
                }
                let score = if regression { "valid R²" } else { "valid acc" };
                tables.push(Table {
                    title: format!("compression candidates ({}; * = chosen)", s.id),
                    header: [
                        "candidate",
                        "params",
                        "non-zeros",
                        "ONNX",
                        score,
                        "drop",
                        "ms @1",
                        "ms @1024",
                        "speedup @1024",
                        "why",
                    ]
                    .map(String::from)
                    .to_vec(),
                    rows,
                });
            }
            StageKind::Evaluate => {
                if let Some(v) = json("metrics.json") {
                    let mut rows = Vec::new();
                    let cols = main_metrics(&v);
                    if let Some(m) = v["variants"].as_object() {
                        for (name, vals) in m {
                            let mut row = vec![name.clone()];
                            row.extend(cols.iter().map(|(k, _)| fmt_metric(&vals[*k])));
                            rows.push(row);
                        }
                    }
                    let verdict = json("verdict.json")
                        .map(|v| v["reason"].as_str().unwrap_or("").to_string())
                        .unwrap_or_default();
                    let mut header = vec!["variant".to_string()];
                    header.extend(cols.iter().map(|(_, t)| t.to_string()));
                    tables.push(Table {
                        title: format!("test metrics ({}): {verdict}", s.id),
                        header,
                        rows,
                    });
                }
            }
            StageKind::Deploy => {
                let Some(v) = json("parity.json") else {
                    continue;
                };
                // Which stage each exported variant came from, to show its test metrics.
                let first = s.inputs.first().cloned().unwrap_or_default();
                let source = p.stages.iter().find(|x| x.id == first);
                let origin = |variant: &str| -> String {
                    match (variant, source) {
                        ("fp32", Some(src)) if src.kind == StageKind::Optimize => {
                            src.inputs.first().cloned().unwrap_or_default()
                        }
                        _ => first.clone(),
                    }
                };
                let evals: Vec<serde_json::Value> = p
                    .stages
                    .iter()
                    .filter(|e| e.kind == StageKind::Evaluate)
                    .filter_map(|e| dirs.get(&e.id))
                    .filter_map(|d| {
                        kiln_core::read_json::<serde_json::Value>(&d.join("metrics.json")).ok()
                    })
                    .collect();
                let cols = evals.first().map(main_metrics).unwrap_or_default();
                let regression = cols.first().is_some_and(|(k, _)| *k == "rmse");
                let metric = |stage: &str, key: &str| -> String {
                    evals
                        .iter()
                        .find_map(|m| m["variants"][stage][key].as_f64())
                        .map(|x| format!("{x:.4}"))
                        .unwrap_or_else(|| "-".into())
                };
                let mut rows = Vec::new();
                if let Some(m) = v["variants"].as_object() {
                    for (name, r) in m {
                        let file = kiln_deploy::file_name(name);
                        let bytes = std::fs::metadata(dir.join(&file))
                            .map(|m| m.len())
                            .unwrap_or(0);
                        let from = origin(name);
                        let mut row = vec![name.clone(), from.clone()];
                        row.extend(cols.iter().map(|(k, _)| metric(&from, k)));
                        row.extend([
                            file,
                            format!("{:.1} KiB", bytes as f64 / 1024.0),
                            // probabilities for classifiers, predictions for regressors
                            format!(
                                "{:.1e}",
                                r[if regression {
                                    "max_abs_logit"
                                } else {
                                    "max_abs_prob"
                                }]
                                .as_f64()
                                .unwrap_or(f64::NAN)
                            ),
                            if regression {
                                "-".into()
                            } else {
                                format!("{:.4}", r["argmax_agreement"].as_f64().unwrap_or(f64::NAN))
                            },
                        ]);
                        rows.push(row);
                    }
                }
                let mut header = vec!["variant".to_string(), "from".to_string()];
                header.extend(cols.iter().map(|(_, t)| format!("test {t}")));
                header.extend(["file", "size", "max |Δ|", "argmax agreement"].map(String::from));
                tables.push(Table {
                    title: format!("variants ({}): test metrics, ONNX size, parity of ONNX Runtime vs kiln's reference forward pass", s.id),
                    header,
                    rows,
                });
            }
        }
    }
    tables
}
