//! A run in one row: state, start, duration, cache hits, the main test metrics of its
//! first evaluate stage and the compression candidate its first optimize stage chose —
//! read from run.json, metrics.json and candidates.json only, so a list of hundreds of
//! runs stays fast.

use crate::runs::{RunEntry, RunState};
use kiln_core::artifact::candidates::Candidates;
use kiln_core::artifact::metrics::Metrics;
use kiln_core::artifact::run::{StageKind, StageStatus};
use std::collections::BTreeMap;

/// The metrics a row shows, in column order, when the run has them.
pub(crate) const MAIN_METRICS: [&str; 7] = [
    "accuracy", "macro_f1", "roc_auc", "log_loss", "r2", "rmse", "mae",
];

/// Metrics where lower is better.
pub(crate) fn lower_is_better(metric: &str) -> bool {
    matches!(metric, "log_loss" | "rmse" | "mse" | "mae" | "mape" | "ece")
}

/// One row.
pub(crate) struct RunSummary {
    /// The run.
    pub entry: RunEntry,
    /// Its state.
    pub state: RunState,
    /// Start, seconds since the Unix epoch.
    pub started: Option<u64>,
    /// Duration so far.
    pub seconds: Option<f64>,
    /// Stages from the cache, of those with output.
    pub cache: Option<(usize, usize)>,
    /// The variant whose test metrics are shown.
    pub variant: Option<String>,
    /// Its test metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Every variant's test metrics.
    pub all_metrics: Option<Metrics>,
    /// The chosen compression candidate.
    pub chosen: Option<String>,
}

impl RunSummary {
    /// Reads what the row shows.
    pub(crate) fn read(entry: RunEntry) -> RunSummary {
        let state = entry.state();
        let mut s = RunSummary {
            state,
            started: None,
            seconds: None,
            cache: None,
            variant: None,
            metrics: BTreeMap::new(),
            all_metrics: None,
            chosen: None,
            entry,
        };
        let Ok(m) = &s.entry.manifest else {
            return s;
        };
        s.started = Some(m.started);
        s.seconds = Some(m.seconds);
        let done = m.stages.iter().filter(|r| r.status.has_output()).count();
        let cached = m
            .stages
            .iter()
            .filter(|r| r.status == StageStatus::Cached)
            .count();
        s.cache = Some((cached, done));
        let stage_dir = |kind: StageKind| {
            m.stages
                .iter()
                .find(|r| r.uses == kind && r.status.has_output())
                .and_then(|r| s.entry.stage_dir(&r.id))
        };
        if let Some(dir) = stage_dir(StageKind::Evaluate)
            && let Ok(metrics) = kiln_core::artifact::load::<Metrics>(&dir)
        {
            // the last model in run order: the compressed one where a stage compressed
            // it, the one the deploy stage ships
            let name = m
                .stages
                .iter()
                .rev()
                .map(|r| &r.id)
                .find(|id| metrics.variants.contains_key(*id))
                .or_else(|| metrics.variants.keys().next())
                .cloned();
            if let Some(name) = name {
                s.metrics = metrics.variants.get(&name).cloned().unwrap_or_default();
                s.variant = Some(name);
            }
            s.all_metrics = Some(metrics);
        }
        if let Some(dir) = stage_dir(StageKind::Optimize)
            && let Ok(c) = kiln_core::artifact::load::<Candidates>(&dir)
        {
            s.chosen = c.chosen().map(|c| c.name.clone());
        }
        s
    }
}
