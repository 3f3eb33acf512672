//! Checkpoints of an interrupted run: `checkpoint/` in the output folder (state.json,
//! the parameters and optimizer moments, the best epoch's weights), written atomically and
//! only picked up by a run of the same config and data.

use crate::data::Data;
use crate::{Config, EpochRecord, Result, TrainError};
use kiln_core::TensorStore;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// checkpoint/state.json: where an interrupted run stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CheckpointState {
    /// The config and data shape the checkpoint belongs to.
    pub fingerprint: String,
    /// Last completed epoch.
    pub epoch: usize,
    /// Optimizer steps taken.
    pub step: i32,
    /// Epochs since the best one.
    pub since_best: usize,
    /// Best epoch so far, its accuracy and loss.
    pub best: (usize, f64, f64),
    /// History so far.
    pub history: Vec<EpochRecord>,
}

/// What a checkpoint must match to be resumed: the config (but its epoch count), the
/// data shape and kiln's version, hashed.
pub(crate) fn fingerprint(config: &Config, train: &Data<'_>, valid: &Data<'_>) -> String {
    let mut c = config.clone();
    c.epochs = 0; // more epochs may continue the same run
    let text = format!(
        "{}|{}x{}|{}|{}",
        serde_json::to_string(&c).unwrap_or_default(),
        train.n_rows(),
        train.n_features(),
        valid.n_rows(),
        kiln_core::KILN_VERSION
    );
    kiln_core::hash_bytes(text.as_bytes())
}

/// The newest complete checkpoint in `out_dir`: `checkpoint/`, or `checkpoint.tmp/` when a
/// kill came after the old checkpoint was deleted and before the new one was renamed
/// (`state.json` is written last, so a folder that has it is complete).
pub(crate) fn newest_checkpoint(
    out_dir: &Path,
    fp: &str,
) -> Option<(CheckpointState, TensorStore, TensorStore)> {
    ["checkpoint", "checkpoint.tmp"]
        .iter()
        .filter_map(|d| load_checkpoint(&out_dir.join(d), fp))
        .max_by_key(|(s, ..)| s.epoch)
}

/// The checkpoint in `dir`, when it is complete and belongs to the fingerprint `fp`.
fn load_checkpoint(dir: &Path, fp: &str) -> Option<(CheckpointState, TensorStore, TensorStore)> {
    let state: CheckpointState = kiln_core::read_json(&dir.join("state.json")).ok()?;
    if state.fingerprint != fp {
        tracing::warn!(dir = %dir.display(), "checkpoint belongs to another config or data; starting afresh");
        return None;
    }
    let params = TensorStore::load(&dir.join("params.safetensors")).ok()?;
    let best = TensorStore::load(&dir.join("best.safetensors")).ok()?;
    Some((state, params, best))
}

/// Writes the checkpoint folder atomically: into `checkpoint.tmp` (state.json last), then
/// renamed over `checkpoint` ([`newest_checkpoint`] finds either after a kill).
pub(crate) fn save_checkpoint(
    out_dir: &Path,
    state: &CheckpointState,
    params: &TensorStore,
    best: &TensorStore,
) -> Result<()> {
    let tmp = out_dir.join("checkpoint.tmp");
    let dir = out_dir.join("checkpoint");
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| TrainError::Core(kiln_core::CoreError::io(p, e))
    };
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    params.save(&tmp.join("params.safetensors"))?;
    best.save(&tmp.join("best.safetensors"))?;
    kiln_core::write_json(&tmp.join("state.json"), state)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    std::fs::rename(&tmp, &dir).map_err(io(&dir))
}
