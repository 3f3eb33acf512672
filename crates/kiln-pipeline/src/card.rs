//! Fills the deploy bundle's model card (`kiln_deploy::ModelCard`) with what only the
//! pipeline knows: the data source and splits (profile.json), the training config, and the
//! test metrics of the evaluate stages the deploy stage `requires` (whose outputs are in
//! its stage hash, so a cached card never shows stale metrics).

use crate::StageKind;
use crate::file::{Pipeline, StageConfig, StageDef};
use kiln_deploy::{ColumnRange, ModelCard, VariantMetrics};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

/// The card of deploy `stage`, whose variants came from `origins` (variant, stage id).
pub(crate) fn model_card(
    p: &Pipeline,
    stage: &StageDef,
    dirs: &BTreeMap<String, PathBuf>,
    origins: &[(String, String)],
) -> ModelCard {
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
    if let Some(pre) = crate::exec::upstream(p, first, StageKind::Preprocess) {
        if let StageConfig::Preprocess(c) = &pre.config {
            let v = serde_json::to_value(&c.source).unwrap_or_default();
            let files: Vec<String> = ["path", "train", "test"]
                .iter()
                .filter_map(|k| {
                    v[*k]
                        .as_str()
                        .map(|f| format!("{k} `{}`", file_name(Path::new(f))))
                })
                .collect();
            card.dataset = format!(
                "{} ({})",
                v["format"].as_str().unwrap_or("?"),
                files.join(", ")
            );
        }
        if let Some(prof) = dirs
            .get(&pre.id)
            .and_then(|d| kiln_core::read_json::<serde_json::Value>(&d.join("profile.json")).ok())
        {
            for k in ["train", "valid", "test"] {
                if let Some(n) = prof["rows"][k].as_u64() {
                    card.rows.push((k.to_string(), n as usize));
                }
            }
            for c in prof["columns"].as_array().into_iter().flatten() {
                if let (Some(name), Some(min), Some(max)) =
                    (c["name"].as_str(), c["min"].as_f64(), c["max"].as_f64())
                {
                    card.input_ranges.push(ColumnRange {
                        name: name.into(),
                        min,
                        max,
                    });
                }
            }
        }
    }
    if let Some(train) = crate::exec::upstream(p, first, StageKind::Train) {
        if let StageConfig::Train(c) = &train.config {
            let json = serde_json::to_string(c).unwrap_or_default();
            card.training.push((
                format!("Train config (stage `{}`)", train.id),
                format!("`{json}`"),
            ));
        }
        if let Some(h) = dirs
            .get(&train.id)
            .and_then(|d| kiln_core::read_json::<serde_json::Value>(&d.join("history.json")).ok())
        {
            card.training.push((
                "Epochs run / best epoch".into(),
                format!(
                    "{} / {}",
                    h["epochs"].as_array().map_or(0, |a| a.len()),
                    h["best_epoch"]
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
        let Some(m) = dirs
            .get(e)
            .and_then(|d| kiln_core::read_json::<serde_json::Value>(&d.join("metrics.json")).ok())
        else {
            continue;
        };
        for (variant, from) in origins {
            let vals = &m["variants"][from];
            let metrics: Vec<(String, f64)> = METRICS
                .iter()
                .filter_map(|k| vals[*k].as_f64().map(|v| (k.to_string(), v)))
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
