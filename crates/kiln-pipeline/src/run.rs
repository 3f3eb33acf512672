//! Running a pipeline: each stage's key from what it declares it reads, the cache
//! looked up (and, to build an entry, locked), the stage run in its partial folder and
//! committed, the run folder linked, `requires` verdicts enforced, and run.json plus
//! progress.json rewritten as the run goes.

use crate::cache::{Cache, Holder, KEY_FILE, kill_point, now};
use crate::file::{Pipeline, StageDef};
use crate::key::{BuildSources, StageKey};
use crate::progress::FileProgress;
use crate::runs::RunFolder;
use crate::stage::{self, Datasets, RunCx, StageError};
use crate::summary::Table;
use crate::{PipelineError, StageKind, io};
use kiln_core::artifact::run::{RunManifest, RunStatus, StageRecord, StageStatus};
use kiln_core::artifact::verdict::Verdict;
use kiln_core::{KILN_VERSION, Progress};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    /// How long to wait for another run building the same cache entry (None: as long as
    /// it takes); past it the run fails with [`PipelineError::LockTimeout`].
    pub lock_timeout: Option<Duration>,
    /// The sources whose hashes make each stage kind's build identity (this kiln's own
    /// by default; tests pass changed ones to act as another build).
    pub build: BuildSources,
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
            lock_timeout: None,
            build: BuildSources::built(),
        }
    }
}

/// The outcome of a run.
#[derive(Debug)]
pub struct RunReport {
    /// `runs/<name>/<run-id>`.
    pub run_dir: PathBuf,
    /// One record per stage, in execution order (as in run.json).
    pub stages: Vec<StageRecord>,
    /// Summary tables (data, training, candidates, metrics, deployment).
    pub tables: Vec<Table>,
    /// True when every stage executed or was cached and every gate passed.
    pub ok: bool,
    /// Why the run failed: the first failed stage (its error keeps its type), blocked
    /// stage or failed gate.
    pub failure: Option<PipelineError>,
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
        if let Some(s) = p.stage(&id) {
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

/// A source file's name in the key and run.json: relative to the pipeline file's folder
/// when it is inside it, else as given.
fn relative(p: &Pipeline, f: &Path) -> String {
    let base = p.file.parent().unwrap_or(Path::new("."));
    let rel = f.strip_prefix(base).unwrap_or(f);
    rel.to_string_lossy().replace('\\', "/")
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
    let cache = Cache::open(&opts.runs_dir.join(".cache"))?;
    let folder = RunFolder::create(&opts.runs_dir, &pipeline.name)?;
    let started = Instant::now();
    let mut m = RunManifest {
        pipeline: pipeline.name.clone(),
        file: pipeline.file.display().to_string(),
        run_id: folder.id.clone(),
        seed: pipeline.seed,
        status: RunStatus::Running,
        started: now(),
        seconds: 0.0,
        pid: std::process::id(),
        kiln_version: KILN_VERSION.to_string(),
        build: opts.build.id(),
        versions: [
            ("kiln", KILN_VERSION),
            ("polars", "0.55.2"),
            ("dfdx", "0.13.0"),
            ("ort", "2.0.0-rc.15"),
            ("onnxruntime", kiln_deploy::runtime::ORT_VERSION),
            ("rustc", env!("KILN_RUSTC_VERSION")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        onnxruntime: None,
        git_commit: git_commit(pipeline.file.parent().unwrap_or(Path::new("."))),
        input_files: BTreeMap::new(),
        resolved: pipeline
            .stages
            .iter()
            .map(|s| {
                let v = serde_json::to_value(&s.config).unwrap_or(serde_json::Value::Null);
                (s.id.clone(), v)
            })
            .collect(),
        stages: pipeline
            .stages
            .iter()
            .map(|s| StageRecord {
                id: s.id.clone(),
                uses: s.kind,
                inputs: s.inputs.clone(),
                requires: s.requires.clone(),
                hash: String::new(),
                content_hash: None,
                status: StageStatus::Pending,
                seconds: 0.0,
                resumed_from_epoch: None,
                rerun_because: Vec::new(),
                message: None,
            })
            .collect(),
        failure: None,
    };
    folder.save(&m)?;
    let progress = FileProgress::new(opts.progress, &folder.dir);

    let mut dirs: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut datasets = Datasets::new();
    let mut failure: Option<PipelineError> = None;
    for (i, def) in pipeline.stages.iter().enumerate() {
        if let (Some(only), Some(needed)) = (&opts.only, &needed)
            && &def.id != only
            && !needed.contains(&def.id)
        {
            m.stages[i].status = StageStatus::Skipped;
            m.stages[i].message = Some(format!("not needed by --only {only}"));
            continue;
        }
        if let Some(why) = blocked(def, &m.stages, &dirs) {
            tracing::warn!(stage = %def.id, "blocked: {why}");
            m.stages[i].status = StageStatus::Blocked;
            m.stages[i].message = Some(why.clone());
            failure.get_or_insert(PipelineError::Blocked {
                id: def.id.clone(),
                why,
            });
            folder.save(&m)?;
            continue;
        }
        let force = (opts.force && needed.is_none()) || forced.contains(&def.id);
        let step = StageStep {
            pipeline,
            def,
            cache: &cache,
            folder: &folder,
            opts,
            progress: &progress,
        };
        match step.run(&mut m, i, force, &needed, &mut dirs, &mut datasets) {
            Ok(()) => {}
            Err(StepError::Stage(e)) => {
                failure.get_or_insert(e);
            }
            Err(StepError::Fatal(e)) => {
                m.status = RunStatus::Failed;
                m.failure = Some(e.to_string());
                m.seconds = started.elapsed().as_secs_f64();
                let _ = folder.save(&m);
                return Err(e);
            }
        }
        if def.kind == StageKind::Evaluate
            && let Some(dir) = dirs.get(&def.id)
        {
            match kiln_core::artifact::load::<Verdict>(dir) {
                Ok(v) if v.blessed => {}
                Ok(v) => {
                    failure.get_or_insert(PipelineError::Gate {
                        id: def.id.clone(),
                        reason: v.reason,
                    });
                }
                Err(e) => {
                    failure.get_or_insert(PipelineError::Gate {
                        id: def.id.clone(),
                        reason: format!("its verdict cannot be read: {e}"),
                    });
                }
            }
        }
        folder.save(&m)?;
    }
    progress.stage("");
    m.onnxruntime = kiln_deploy::runtime::loaded();
    m.status = if failure.is_none() {
        RunStatus::Ok
    } else {
        RunStatus::Failed
    };
    m.failure = failure.as_ref().map(|f| f.to_string());
    m.seconds = started.elapsed().as_secs_f64();
    folder.save(&m)?;
    folder.set_latest()?;
    let tables = crate::summary::tables(pipeline, &dirs);
    Ok(RunReport {
        run_dir: folder.dir.clone(),
        stages: m.stages,
        tables,
        ok: failure.is_none(),
        failure,
    })
}

/// Why `def` cannot run: an input or requirement that failed, was blocked or skipped, or
/// a required verdict that is not blessed or cannot be read (a verdict that cannot be
/// read blocks: the gate fails closed).
fn blocked(
    def: &StageDef,
    records: &[StageRecord],
    dirs: &BTreeMap<String, PathBuf>,
) -> Option<String> {
    for d in def.inputs.iter().chain(&def.requires) {
        let r = records.iter().find(|r| &r.id == d)?;
        if !r.status.has_output() {
            return Some(format!("`{d}` {}", r.status));
        }
    }
    for d in &def.requires {
        let dir = dirs.get(d)?;
        match kiln_core::artifact::load::<Verdict>(dir) {
            Ok(v) if v.blessed => {}
            Ok(v) => return Some(format!("`{d}` did not bless the model: {}", v.reason)),
            Err(e) => return Some(format!("the verdict of `{d}` cannot be read ({e})")),
        }
    }
    None
}

/// Why a stage step ended early: the stage failed (the run goes on, its dependents
/// blocked), or the run cannot go on at all (the runs folder cannot be written, a lock
/// timed out).
enum StepError {
    Stage(PipelineError),
    Fatal(PipelineError),
}

impl From<PipelineError> for StepError {
    fn from(e: PipelineError) -> Self {
        StepError::Fatal(e)
    }
}

/// One stage of a run, with what it needs around it.
struct StageStep<'a> {
    pipeline: &'a Pipeline,
    def: &'a StageDef,
    cache: &'a Cache,
    folder: &'a RunFolder,
    opts: &'a RunOptions<'a>,
    progress: &'a FileProgress<'a>,
}

impl StageStep<'_> {
    /// Runs or reuses the stage and records it in `m.stages[i]`; on success its folder
    /// is in `dirs`.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        m: &mut RunManifest,
        i: usize,
        force: bool,
        needed: &Option<Vec<String>>,
        dirs: &mut BTreeMap<String, PathBuf>,
        datasets: &mut Datasets,
    ) -> Result<(), StepError> {
        let def = self.def;
        let stage = stage::of(&def.config);
        let reads = match stage.reads(def, self.pipeline) {
            Ok(r) => r,
            Err(e) => return Err(self.fail(m, i, e)),
        };
        let mut read_hashes = BTreeMap::new();
        for id in &reads.stages {
            let hash = m
                .stages
                .iter()
                .find(|r| &r.id == id)
                .and_then(|r| r.content_hash.clone())
                .unwrap_or_default();
            read_hashes.insert(id.clone(), hash);
        }
        let mut files = BTreeMap::new();
        for f in &reads.files {
            match kiln_core::hash_file(f) {
                Ok(h) => {
                    let rel = relative(self.pipeline, f);
                    m.input_files.insert(rel.clone(), h.clone());
                    files.insert(rel, h);
                }
                Err(kiln_core::CoreError::Io { path, source }) => {
                    return Err(self.fail(m, i, StageError::Source { path, source }));
                }
                Err(e) => return Err(self.fail(m, i, e.into())),
            }
        }
        let key = StageKey::new(
            def.kind,
            &def.config,
            read_hashes,
            files,
            self.opts.build.identity(def.kind),
        );
        let hash = key.hash();
        m.stages[i].hash = hash.clone();
        let cached = |cache: &Cache| (!force).then(|| cache.complete(&hash)).flatten();
        if let Some(marker) = cached(self.cache) {
            tracing::info!(stage = %def.id, hash = %hash, "cached");
            return self.done(m, i, &hash, marker.content_hash, StageStatus::Cached, dirs);
        }
        if needed.as_ref().is_some_and(|n| n.contains(&def.id)) {
            let why = format!(
                "--only {} needs `{}`, which has no cached output for this configuration; run the pipeline once without --only (or use --from)",
                self.opts.only.as_deref().unwrap_or(""),
                def.id
            );
            m.stages[i].status = StageStatus::Failed;
            m.stages[i].message = Some(why.clone());
            return Err(StepError::Stage(PipelineError::Blocked {
                id: def.id.clone(),
                why,
            }));
        }
        m.stages[i].status = StageStatus::Running;
        self.folder.save(m)?;
        let holder = Holder {
            pid: std::process::id(),
            run: format!("{}/{}", self.pipeline.name, self.folder.id),
            stage: def.id.clone(),
            since: now(),
        };
        let lock = self
            .cache
            .lock(&hash, &holder, self.opts.lock_timeout, &mut |who| {
                tracing::warn!(stage = %def.id, "waiting for {who} to finish the same stage");
                eprintln!("kiln: stage `{}`: waiting for {who}", def.id);
            })?;
        // another run may have built it while this one waited
        if let Some(marker) = cached(self.cache) {
            tracing::info!(stage = %def.id, "built meanwhile by another run");
            return self.done(m, i, &hash, marker.content_hash, StageStatus::Cached, dirs);
        }
        m.stages[i].rerun_because = self
            .folder
            .previous_stage(&def.id)
            .and_then(|d| kiln_core::read_json::<StageKey>(&d.join(KEY_FILE)).ok())
            .map(|old| key.changes_since(&old))
            .unwrap_or_default();
        let _span = tracing::info_span!("stage", id = %def.id).entered();
        let partial = self.cache.partial(&hash);
        // a training stage keeps the checkpoint of an interrupted run and resumes it;
        // other stages start from scratch (this process holds the entry's lock)
        if partial.exists() && def.kind != StageKind::Train {
            std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
        }
        std::fs::create_dir_all(&partial).map_err(io(&partial))?;
        self.progress.stage(&def.id);
        let started = Instant::now();
        let result = {
            let declared: BTreeMap<String, PathBuf> = reads
                .stages
                .iter()
                .filter_map(|id| Some((id.clone(), dirs.get(id)?.clone())))
                .collect();
            let mut cx = RunCx {
                def,
                pipeline: self.pipeline,
                out: &partial,
                hash: &hash,
                progress: self.progress,
                dirs: &declared,
                datasets,
            };
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stage.run(&mut cx)))
                .unwrap_or_else(|p| Err(StageError::Panic(kiln_core::panic_message(&p))))
        };
        m.stages[i].seconds = started.elapsed().as_secs_f64();
        kill_point("after-stage");
        let ran = match result {
            Ok(ran) => ran,
            Err(e) => {
                datasets.remove(&partial);
                // keep what the stage wrote (e.g. candidates.json of an over-budget
                // optimize stage) in the run folder as `<id>.failed`, never in the cache
                let kept = self.folder.dir.join(format!("{}.failed", def.id));
                if std::fs::rename(&partial, &kept).is_err() {
                    let _ = std::fs::remove_dir_all(&partial);
                }
                return Err(self.fail(m, i, e));
            }
        };
        m.stages[i].resumed_from_epoch = ran.resumed_from_epoch;
        let marker = match self.cache.commit(&hash, &key, &lock) {
            Ok(marker) => marker,
            Err(e) => {
                // e.g. the disk filled up: no entry, and the partial folder goes
                datasets.remove(&partial);
                let _ = std::fs::remove_dir_all(&partial);
                return Err(self.fail(
                    m,
                    i,
                    StageError::Core(kiln_core::CoreError::Invalid(e.to_string())),
                ));
            }
        };
        drop(lock);
        let entry = self.cache.entry(&hash);
        if let Some(a) = datasets.remove(&partial) {
            datasets.insert(entry, a);
        }
        self.done(
            m,
            i,
            &hash,
            marker.content_hash,
            StageStatus::Executed,
            dirs,
        )
    }

    /// Records a stage with output: links it into the run folder.
    fn done(
        &self,
        m: &mut RunManifest,
        i: usize,
        hash: &str,
        content_hash: String,
        status: StageStatus,
        dirs: &mut BTreeMap<String, PathBuf>,
    ) -> Result<(), StepError> {
        self.folder.link_stage(&self.def.id, hash)?;
        m.stages[i].status = status;
        m.stages[i].content_hash = Some(content_hash);
        dirs.insert(self.def.id.clone(), self.cache.entry(hash));
        Ok(())
    }

    /// Records a failed stage.
    fn fail(&self, m: &mut RunManifest, i: usize, e: StageError) -> StepError {
        tracing::error!(stage = %self.def.id, "failed: {e}");
        m.stages[i].status = StageStatus::Failed;
        m.stages[i].message = Some(e.to_string());
        StepError::Stage(PipelineError::Stage {
            id: self.def.id.clone(),
            source: e,
        })
    }
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
