//! The deploy stage: exports its input model (and, after an optimize stage, the fp32
//! model it compressed) to ONNX, gates parity with ONNX Runtime, writes the bundle with
//! schema, profile and model card.

use super::{InputRule, Kind, Ran, Reads, RunCx, Stage, StageError, ViewCx, upstream};
use crate::file::{Pipeline, StageDef};
use crate::{StageKind, Table};
use kiln_core::artifact::candidates::Candidates;
use kiln_core::artifact::metrics::Metrics;
use kiln_core::artifact::parity::Parity;
use kiln_core::artifact::profile::Profile;
use kiln_core::dataset::shards::Split;

pub(crate) const KIND: Kind = Kind {
    kind: StageKind::Deploy,
    inputs: InputRule {
        kinds: &[StageKind::Train, StageKind::Optimize],
        what: "a model (a train or optimize stage)",
        min: 1,
        max: 1,
    },
};

/// The fp32 model behind deploy input `input`: the train stage an optimize stage
/// compressed, or the input itself.
fn fp32_source<'p>(p: &'p Pipeline, input: &str) -> Option<&'p StageDef> {
    let s = p.stage(input)?;
    match s.kind {
        StageKind::Optimize => p.stage(s.inputs.first()?),
        _ => Some(s),
    }
}

impl Stage for kiln_deploy::Config {
    fn reads(&self, def: &StageDef, p: &Pipeline) -> Result<Reads, StageError> {
        let mut r = Reads::default();
        let input = &def.inputs[0];
        r.add(input);
        if let Some(f) = fp32_source(p, input) {
            r.add(&f.id);
        }
        if let Some(pre) = upstream(p, input, StageKind::Preprocess) {
            r.add(&pre.id);
        }
        // the model card shows the training history and the required stages' metrics
        for id in &def.requires {
            r.add(id);
        }
        Ok(r)
    }

    fn run(&self, cx: &mut RunCx<'_>) -> Result<Ran, StageError> {
        let (def, p) = (cx.def, cx.pipeline);
        let input = &def.inputs[0];
        let src = p.stage(input).ok_or_else(|| StageError::Undeclared {
            stage: def.id.clone(),
            read: input.clone(),
        })?;
        let pre = upstream(p, input, StageKind::Preprocess)
            .map(|s| s.id.clone())
            .unwrap_or_default();
        let splits = cx.splits(&pre, input)?;
        let schema = splits.schema();
        let mut variants = Vec::new();
        let mut origins = Vec::new();
        if let Some(fp) = fp32_source(p, input) {
            variants.push(kiln_deploy::Variant {
                name: "fp32".into(),
                model: cx.model(&fp.id)?,
            });
            origins.push(("fp32".to_string(), fp.id.clone()));
        }
        if src.kind == StageKind::Optimize {
            // named after the chosen candidate (model.<name>.onnx)
            let chosen = cx
                .artifact::<Candidates>(input)
                .ok()
                .and_then(|c| c.chosen().map(|c| c.name.clone()))
                .unwrap_or_else(|| "compressed".to_string());
            variants.push(kiln_deploy::Variant {
                name: chosen.clone(),
                model: cx.model(input)?,
            });
            origins.push((chosen, input.clone()));
        }
        let o = kiln_deploy::run_split(
            self,
            &variants,
            schema,
            splits.split(Split::Test),
            cx.hash,
            cx.out,
            &|m, meta| kiln_deploy::export(&m.spec, &m.weights, meta),
        )?;
        let card = crate::card::model_card(cx, &origins);
        kiln_deploy::card::write(cx.out, &card, schema, self, &o, cx.hash)?;
        // the bundle carries the training ranges, so `kiln predict` can warn about inputs
        // outside them
        if let Ok(profile) = cx.artifact::<Profile>(&pre) {
            kiln_core::artifact::save(cx.out, &profile)?;
        }
        Ok(Ran::default())
    }

    fn summary(&self, cx: &ViewCx<'_>) -> Vec<Table> {
        let Some(parity) = cx.own::<Parity>() else {
            return Vec::new();
        };
        let p = cx.pipeline;
        let input = cx.def.inputs.first().map(String::as_str).unwrap_or("");
        let origin = |variant: &str| -> String {
            match (variant, fp32_source(p, input)) {
                ("fp32", Some(fp)) => fp.id.clone(),
                _ => input.to_string(),
            }
        };
        // test metrics from every evaluate stage of the run
        let evals: Vec<Metrics> = p
            .stages
            .iter()
            .filter(|e| e.kind == StageKind::Evaluate)
            .filter_map(|e| cx.of::<Metrics>(&e.id))
            .collect();
        let cols = evals.first().map(Metrics::main).unwrap_or(&[]);
        let regression = evals.first().is_some_and(Metrics::is_regression);
        let metric = |stage: &str, key: &str| -> String {
            super::fmt_metric(evals.iter().find_map(|m| m.get(stage, key)))
        };
        let dir = cx.dirs.get(&cx.def.id);
        let mut rows = Vec::new();
        for (name, r) in &parity.variants {
            let file = kiln_deploy::file_name(name);
            let bytes = dir
                .and_then(|d| std::fs::metadata(d.join(&file)).ok())
                .map_or(0, |m| m.len());
            let from = origin(name);
            let mut row = vec![name.clone(), from.clone()];
            row.extend(cols.iter().map(|(k, _)| metric(&from, k)));
            let rounding = if r.rounding_rows.is_empty() {
                String::new()
            } else {
                format!(" ({} rows one rounding step apart)", r.rounding_rows.len())
            };
            row.extend([
                file,
                format!("{:.1} KiB", bytes as f64 / 1024.0),
                // probabilities for classifiers, predictions for regressors
                format!(
                    "{:.1e}{rounding}",
                    if regression {
                        r.max_abs_logit
                    } else {
                        r.max_abs_prob
                    }
                ),
                if regression {
                    "-".into()
                } else {
                    format!("{:.4}", r.argmax_agreement)
                },
            ]);
            rows.push(row);
        }
        let mut header = vec!["variant".to_string(), "from".to_string()];
        header.extend(cols.iter().map(|(_, t)| format!("test {t}")));
        header.extend(["file", "size", "max |Δ|", "argmax agreement"].map(String::from));
        vec![Table {
            title: format!(
                "variants ({}): test metrics, ONNX size, parity of ONNX Runtime vs kiln's reference forward pass",
                cx.def.id
            ),
            header,
            rows,
        }]
    }
}
