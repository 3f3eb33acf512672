//! The Stage abstraction. Each stage kind is one module of this folder that says which
//! stages may feed it ([`Kind`]), reads its table of the pipeline file into its typed
//! config, declares everything it reads ([`Stage::reads`]: every upstream artifact and
//! every source file, which is exactly what its cache key covers), runs ([`Stage::run`],
//! through a [`RunCx`] that hands out only what was declared) and describes its output
//! ([`Stage::summary`]). A new kind is a new module plus one line in [`KINDS`] (and its
//! variant of [`StageKind`] and [`crate::StageConfig`]).

pub(crate) mod deploy;
pub(crate) mod evaluate;
pub(crate) mod optimize;
pub(crate) mod preprocess;
pub(crate) mod splits;
pub(crate) mod train;

use crate::file::{Pipeline, StageConfig, StageDef};
use crate::{StageKind, Table};
use kiln_core::{Artifact, Dataset, NativeModel, Progress, Schema};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Which stages may be a kind's `input`, and how many.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InputRule {
    /// The kinds an input may be.
    pub kinds: &'static [StageKind],
    /// Those kinds in words, for messages.
    pub what: &'static str,
    /// Fewest inputs.
    pub min: usize,
    /// Most inputs.
    pub max: usize,
}

/// A stage kind's registration.
pub(crate) struct Kind {
    /// The kind.
    pub kind: StageKind,
    /// Its inputs.
    pub inputs: InputRule,
}

/// Every stage kind, in pipeline order: the one place a new kind is registered.
pub(crate) const KINDS: [Kind; 5] = [
    preprocess::KIND,
    train::KIND,
    optimize::KIND,
    evaluate::KIND,
    deploy::KIND,
];

/// The registration of `kind`.
pub(crate) fn kind(kind: StageKind) -> &'static Kind {
    KINDS.iter().find(|k| k.kind == kind).unwrap_or(&KINDS[0])
}

/// The [`Stage`] behind a config.
pub(crate) fn of(config: &StageConfig) -> &dyn Stage {
    match config {
        StageConfig::Preprocess(c) => c,
        StageConfig::Train(c) => c,
        StageConfig::Optimize(c) => c,
        StageConfig::Evaluate(c) => c,
        StageConfig::Deploy(c) => c,
    }
}

/// What a stage reads besides its own config.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Reads {
    /// Upstream stages whose artifacts it opens (its inputs, and stages further up).
    pub stages: Vec<String>,
    /// Source files outside the runs folder.
    pub files: Vec<PathBuf>,
}

impl Reads {
    fn add(&mut self, id: &str) {
        if !self.stages.iter().any(|s| s == id) {
            self.stages.push(id.to_string());
        }
    }

    /// A model-consuming stage's inputs and the preprocess stage upstream of its first
    /// input, whose splits it scores.
    fn inputs_and_data(def: &StageDef, p: &Pipeline) -> Reads {
        let mut r = Reads::default();
        for id in &def.inputs {
            r.add(id);
        }
        if let Some(pre) = upstream(p, &def.inputs[0], StageKind::Preprocess) {
            r.add(&pre.id);
        }
        r
    }
}

/// What one kind of stage does.
pub(crate) trait Stage {
    /// Every upstream stage whose artifact [`Stage::run`] opens and every file it reads
    /// (an error when the files cannot be resolved, e.g. a glob that matches nothing).
    fn reads(&self, def: &StageDef, p: &Pipeline) -> Result<Reads, StageError>;
    /// Runs the stage into `cx.out`.
    fn run(&self, cx: &mut RunCx<'_>) -> Result<Ran, StageError>;
    /// The summary tables of a complete output.
    fn summary(&self, cx: &ViewCx<'_>) -> Vec<Table>;
}

/// What a run of a stage reports besides its files.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Ran {
    /// The epoch a training stage resumed after.
    pub resumed_from_epoch: Option<usize>,
}

/// Why a stage failed. Each stage crate's error keeps its type.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The preprocess stage failed.
    #[error(transparent)]
    Preprocess(#[from] kiln_preprocess::PreprocessError),
    /// The train stage failed.
    #[error(transparent)]
    Train(#[from] kiln_train::TrainError),
    /// The optimize stage failed.
    #[error(transparent)]
    Optimize(#[from] kiln_optimize::OptimizeError),
    /// The evaluate stage failed.
    #[error(transparent)]
    Evaluate(#[from] kiln_evaluate::EvaluateError),
    /// The deploy stage failed.
    #[error(transparent)]
    Deploy(#[from] kiln_deploy::DeployError),
    /// Reading or writing an artifact failed.
    #[error(transparent)]
    Core(#[from] kiln_core::CoreError),
    /// A source file cannot be read.
    #[error("cannot read `{}`: {source}; check the `source` paths of the pipeline file", path.display())]
    Source {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The stage opened an upstream artifact it did not declare in its reads: a bug in
    /// kiln (the cache key would not cover it).
    #[error(
        "stage `{stage}` reads `{read}` without declaring it; this is a bug in kiln, please report it"
    )]
    Undeclared {
        /// The stage.
        stage: String,
        /// What it tried to read.
        read: String,
    },
    /// The stage panicked: a bug in kiln or a library it uses; caught at the stage
    /// boundary so the run reports it and keeps no output.
    #[error("the stage panicked ({0}); this is a bug, please report it with the pipeline file")]
    Panic(String),
}

/// A preprocess stage's artifact in memory: its schema and train / valid / test splits.
pub(crate) type DatasetArtifact = Rc<(Schema, [Dataset; 3])>;

/// The artifacts read so far in this run, by folder: the stages after a preprocess stage
/// share one copy instead of each reading ≈ 200 MB of Arrow IPC again (complete cache
/// folders never change, so a copy cannot go stale within a run).
pub(crate) type Datasets = BTreeMap<PathBuf, DatasetArtifact>;

/// What a running stage may use: its definition, its output folder, the complete
/// folders of the upstream stages it declared (and nothing else), and progress.
pub(crate) struct RunCx<'a> {
    /// The stage.
    pub def: &'a StageDef,
    /// The pipeline.
    pub pipeline: &'a Pipeline,
    /// Where it writes.
    pub out: &'a Path,
    /// Its cache key's hash.
    pub hash: &'a str,
    /// Receives progress of long steps.
    pub progress: &'a dyn Progress,
    /// Declared upstream stage id -> its complete folder.
    pub(crate) dirs: &'a BTreeMap<String, PathBuf>,
    pub(crate) datasets: &'a mut Datasets,
}

impl RunCx<'_> {
    /// The complete folder of declared upstream stage `id`.
    pub fn dir(&self, id: &str) -> Result<&Path, StageError> {
        self.dirs
            .get(id)
            .map(PathBuf::as_path)
            .ok_or_else(|| StageError::Undeclared {
                stage: self.def.id.clone(),
                read: id.to_string(),
            })
    }

    /// The dataset of preprocess stage `id` (read once per run).
    pub fn dataset(&mut self, id: &str) -> Result<DatasetArtifact, StageError> {
        let dir = self.dir(id)?.to_path_buf();
        if let Some(a) = self.datasets.get(&dir) {
            return Ok(a.clone());
        }
        let a = Rc::new(kiln_preprocess::read_artifact(&dir)?);
        self.datasets.insert(dir, a.clone());
        Ok(a)
    }

    /// The model of train or optimize stage `id`.
    pub fn model(&self, id: &str) -> Result<NativeModel, StageError> {
        Ok(NativeModel::load(self.dir(id)?)?)
    }

    /// Artifact `T` of stage `id`.
    pub fn artifact<T: Artifact>(&self, id: &str) -> Result<T, StageError> {
        Ok(kiln_core::artifact::load(self.dir(id)?)?)
    }

    /// Hands this stage's splits to the stages after it (they read them from memory).
    pub fn keep_dataset(&mut self, schema: Schema, splits: [Dataset; 3]) {
        self.datasets
            .insert(self.out.to_path_buf(), Rc::new((schema, splits)));
    }
}

/// What a summary may read: the complete folders of the run's stages.
pub(crate) struct ViewCx<'a> {
    /// The stage.
    pub def: &'a StageDef,
    /// The pipeline.
    pub pipeline: &'a Pipeline,
    /// Stage id -> complete folder, for every stage with output in this run.
    pub dirs: &'a BTreeMap<String, PathBuf>,
}

impl ViewCx<'_> {
    /// The stage's own folder.
    pub fn own<T: Artifact>(&self) -> Option<T> {
        self.of(&self.def.id)
    }

    /// Artifact `T` of stage `id`, if it has output and the file reads.
    pub fn of<T: Artifact>(&self, id: &str) -> Option<T> {
        kiln_core::artifact::load(self.dirs.get(id)?).ok()
    }
}

/// The nearest stage of `kind` at or upstream of `from`, following first inputs.
pub(crate) fn upstream<'p>(p: &'p Pipeline, from: &str, kind: StageKind) -> Option<&'p StageDef> {
    let mut cur = p.stage(from)?;
    loop {
        if cur.kind == kind {
            return Some(cur);
        }
        cur = p.stage(cur.inputs.first()?)?;
    }
}

/// The train stage behind a model stage: itself, or the train stage an optimize stage
/// compressed.
pub(crate) fn train_of<'p>(p: &'p Pipeline, id: &str) -> Option<&'p StageDef> {
    upstream(p, id, StageKind::Train)
}

/// Formats a metric for a table (4 decimals, `-` when absent or not finite).
pub(crate) fn fmt_metric(v: Option<f64>) -> String {
    v.filter(|x| x.is_finite())
        .map_or_else(|| "-".into(), |x| format!("{x:.4}"))
}
