//! Fills the deploy bundle's model card (`kiln_deploy::ModelCard`) with what only the
//! pipeline knows: the data source and splits (profile.json), the training config and
//! history, and the test metrics of the evaluate stages the deploy stage `requires` —
//! all read through the deploy stage's declared reads, so they are in its cache key and a
//! cached card never shows stale figures.

use crate::StageKind;
use crate::file::StageConfig;
use crate::stage::{RunCx, upstream};
use kiln_core::artifact::history::History;
use kiln_core::artifact::metrics::Metrics;
use kiln_core::artifact::profile::Profile;
use kiln_deploy::{ColumnRange, ModelCard, VariantMetrics};
use std::path::Path;

/// Metrics shown on the card when the evaluate stage has them, in this order.
const METRICS: [&str; 9] = [
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "log_loss",
    "ece",
    "rmse",
    "mae",
    "r2",
    "mape",
];

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// The card of the running deploy stage, whose variants came from `origins` (variant,
/// stage id).
pub(crate) fn model_card(cx: &RunCx<'_>, origins: &[(String, String)]) -> ModelCard {
    let (p, stage) = (cx.pipeline, cx.def);
    let first = stage.inputs.first().map(String::as_str).unwrap_or("");
    let mut card = ModelCard {
        pipeline: p.name.clone(),
        description: p.description.clone(),
        pipeline_file: format!(
            "{} (sha256 {})",
            file_name(&p.file),
            &kiln_core::hash_bytes(p.source_text.as_bytes())[..16]
        ),
        ..Default::default()
    };
    if let Some(pre) = upstream(p, first, StageKind::Preprocess) {
        if let StageConfig::Preprocess(c) = &pre.config {
            let files: Vec<String> = c
                .source
                .named_paths()
                .into_iter()
                .map(|(k, f)| format!("{k} `{}`", file_name(f)))
                .collect();
            card.dataset = format!("{} ({})", c.source.format(), files.join(", "));
        }
        if let Ok(prof) = cx.artifact::<Profile>(&pre.id) {
            let r = prof.rows;
            card.rows = vec![
                ("train".to_string(), r.train),
                ("valid".to_string(), r.valid),
                ("test".to_string(), r.test),
            ];
            for c in prof
                .columns
                .iter()
                .filter(|c| c.min.is_finite() && c.max.is_finite())
            {
                card.input_ranges.push(ColumnRange {
                    name: c.name.clone(),
                    min: c.min,
                    max: c.max,
                });
            }
        }
    }
    if let Some(train) = upstream(p, first, StageKind::Train) {
        if let StageConfig::Train(c) = &train.config {
            let json = serde_json::to_string(c).unwrap_or_default();
            card.training.push((
                format!("Train config (stage `{}`)", train.id),
                format!("`{json}`"),
            ));
        }
        if let Ok(h) = cx.artifact::<History>(&train.id) {
            card.training.push((
                "Epochs run / best epoch".into(),
                format!(
                    "{} / {} ({})",
                    h.epochs.len(),
                    h.best_epoch,
                    h.kept_by.describe(&h.metric)
                ),
            ));
        }
    }
    if let Some(opt) = p
        .stages
        .iter()
        .find(|s| s.id == first && s.kind == StageKind::Optimize)
        && let StageConfig::Optimize(c) = &opt.config
    {
        let json = serde_json::to_string(c).unwrap_or_default();
        card.training.push((
            format!("Optimize config (stage `{}`)", opt.id),
            format!("`{json}`"),
        ));
    }
    for e in &stage.requires {
        let Ok(m) = cx.artifact::<Metrics>(e) else {
            continue;
        };
        for (variant, from) in origins {
            let metrics: Vec<(String, f64)> = METRICS
                .iter()
                .filter_map(|k| m.get(from, k).map(|v| (k.to_string(), v)))
                .collect();
            if !metrics.is_empty() {
                card.metrics.push(VariantMetrics {
                    variant: variant.clone(),
                    stage: from.clone(),
                    evaluated_by: e.clone(),
                    metrics,
                });
            }
        }
    }
    card
}
