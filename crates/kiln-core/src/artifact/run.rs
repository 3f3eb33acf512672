//! run.json: what one `kiln run` did — the resolved pipeline, versions, the build, input
//! files, and per stage its cache key, status, time and why it reran. Written when the
//! run starts (status `running`) and rewritten as it goes, so a reader can follow it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The five stage kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    /// Load, clean, split, write a dataset.
    Preprocess,
    /// Train a model on a dataset.
    Train,
    /// Compress a trained model.
    Optimize,
    /// Score models and check gates.
    Evaluate,
    /// Export ONNX and check parity.
    Deploy,
}

impl StageKind {
    /// Every kind, in pipeline order.
    pub const ALL: [StageKind; 5] = [
        StageKind::Preprocess,
        StageKind::Train,
        StageKind::Optimize,
        StageKind::Evaluate,
        StageKind::Deploy,
    ];

    /// The spelling used in `uses = "…"`.
    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::Preprocess => "preprocess",
            StageKind::Train => "train",
            StageKind::Optimize => "optimize",
            StageKind::Evaluate => "evaluate",
            StageKind::Deploy => "deploy",
        }
    }
}

impl std::fmt::Display for StageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to a stage in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    /// Not reached yet (the run is going on).
    Pending,
    /// Running now.
    Running,
    /// Ran in this run.
    Executed,
    /// Its output came from the cache.
    Cached,
    /// Ran and failed (its partial output is kept in the run folder for inspection).
    Failed,
    /// Did not run: an input failed or was blocked, or a required verdict did not pass.
    Blocked,
    /// Not needed (`--only`).
    Skipped,
}

impl StageStatus {
    /// The lower-case name, as in run.json.
    pub fn as_str(self) -> &'static str {
        match self {
            StageStatus::Pending => "pending",
            StageStatus::Running => "running",
            StageStatus::Executed => "executed",
            StageStatus::Cached => "cached",
            StageStatus::Failed => "failed",
            StageStatus::Blocked => "blocked",
            StageStatus::Skipped => "skipped",
        }
    }

    /// Executed or cached: the stage's output exists.
    pub fn has_output(self) -> bool {
        matches!(self, StageStatus::Executed | StageStatus::Cached)
    }
}

impl std::fmt::Display for StageStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the whole run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Going on (or the process died: a reader can tell by `pid`).
    Running,
    /// Every stage executed or was cached and every gate passed.
    Ok,
    /// A stage failed or was blocked, or a gate failed.
    Failed,
}

/// One row of run.json's `stages`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// Stage id.
    pub id: String,
    /// Stage kind.
    pub uses: StageKind,
    /// The stages whose output it reads (`input` / `inputs` in the pipeline file): the
    /// edges of the stage graph.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    /// The stages whose verdict must pass before it runs (`requires`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    /// The cache key's hash (empty until known).
    pub hash: String,
    /// The content hash of the stage's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
    /// What happened.
    pub status: StageStatus,
    /// Wall time of this stage in this run (0 when cached).
    pub seconds: f64,
    /// Set when a training stage continued from the checkpoint of an interrupted run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from_epoch: Option<usize>,
    /// Why the stage ran instead of coming from the cache: what differs from the key of
    /// the last run of the same stage (empty when cached, or when there was none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rerun_because: Vec<String>,
    /// Error or blocking reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// run.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunManifest {
    /// Pipeline name.
    pub pipeline: String,
    /// The pipeline file.
    pub file: String,
    /// This run's id (`YYYYMMDD-HHMMSS[-N]`, UTC).
    pub run_id: String,
    /// The pipeline's seed.
    pub seed: u64,
    /// How the run stands.
    pub status: RunStatus,
    /// Seconds since the Unix epoch when the run started.
    pub started: u64,
    /// Seconds the run took (so far, while running).
    pub seconds: f64,
    /// The process running it.
    pub pid: u32,
    /// kiln's version.
    pub kiln_version: String,
    /// The build identity of this kiln (sources, Cargo.lock, rustc).
    pub build: String,
    /// Versions of kiln and the libraries that decide results.
    pub versions: BTreeMap<String, String>,
    /// The ONNX Runtime library loaded (path and version), when a stage loaded one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnxruntime: Option<String>,
    /// `git rev-parse HEAD` of the pipeline file's repository (`-dirty` with changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    /// Source files read, by path (relative to the pipeline file), with their hashes.
    pub input_files: BTreeMap<String, String>,
    /// Each stage's resolved configuration.
    pub resolved: BTreeMap<String, serde_json::Value>,
    /// One record per stage, in execution order.
    pub stages: Vec<StageRecord>,
    /// Why the run failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

impl super::Artifact for RunManifest {
    const KIND: &'static str = "kiln.run";
    const FILE: &'static str = "run.json";
}
