//! The evaluate stage: scores every input model on the test split — through ONNX Runtime
//! on the bytes deploy would ship, or kiln's reference pass — checks the gates, writes
//! metrics, verdict and report.

use super::{
    InputRule, Kind, Ran, Reads, RunCx, Stage, StageError, ViewCx, fmt_metric, train_of, upstream,
};
use crate::file::{Pipeline, StageDef};
use crate::{StageKind, Table};
use kiln_core::artifact::history::History;
use kiln_core::artifact::metrics::Metrics;
use kiln_core::artifact::verdict::Verdict;
use kiln_core::dataset::shards::Split;
use kiln_core::{NativeModel, Predictor};
use kiln_evaluate::Runtime;

pub(crate) const KIND: Kind = Kind {
    kind: StageKind::Evaluate,
    inputs: InputRule {
        kinds: &[StageKind::Train, StageKind::Optimize],
        what: "models (train or optimize stages)",
        min: 1,
        max: usize::MAX,
    },
};

/// The train stages behind `inputs` (each once), whose histories draw the curves.
fn trainers<'p>(p: &'p Pipeline, inputs: &[String]) -> Vec<&'p StageDef> {
    let mut out: Vec<&StageDef> = Vec::new();
    for id in inputs {
        if let Some(t) = train_of(p, id)
            && !out.iter().any(|s| s.id == t.id)
        {
            out.push(t);
        }
    }
    out
}

impl Stage for kiln_evaluate::Config {
    fn reads(&self, def: &StageDef, p: &Pipeline) -> Result<Reads, StageError> {
        let mut r = Reads::inputs_and_data(def, p);
        for t in trainers(p, &def.inputs) {
            r.add(&t.id);
        }
        Ok(r)
    }

    fn run(&self, cx: &mut RunCx<'_>) -> Result<Ran, StageError> {
        let (def, p) = (cx.def, cx.pipeline);
        let pre = upstream(p, &def.inputs[0], StageKind::Preprocess)
            .map(|s| s.id.clone())
            .unwrap_or_default();
        let splits = cx.splits(&pre, &def.inputs[0])?;
        let schema = splits.schema();
        let mut models: Vec<(String, NativeModel)> = def
            .inputs
            .iter()
            .map(|id| cx.model(id).map(|m| (id.clone(), m)))
            .collect::<Result<_, _>>()?;
        let image = models.first().and_then(|(_, m)| m.spec.image);
        // What deploy would ship: the same exporter's bytes, run by ONNX Runtime.
        let mut onnx: Vec<kiln_deploy::OrtModel> = Vec::new();
        if self.runtime == Runtime::Onnxruntime {
            for (_, m) in &models {
                let meta = kiln_deploy::ExportMeta {
                    class_labels: schema.class_labels.clone(),
                    feature_names: schema.feature_names.clone(),
                    ..Default::default()
                };
                let bytes = kiln_deploy::export(&m.spec, &m.weights, &meta)?;
                onnx.push(kiln_deploy::OrtModel::from_bytes(&bytes, 1)?);
            }
        }
        let mut curves = Vec::new();
        for t in trainers(p, &def.inputs) {
            let h: History = cx.artifact(&t.id)?;
            curves.push(kiln_evaluate::plots::Curves {
                name: t.id.clone(),
                metric: h.metric,
                epochs: h.epochs,
                best_epoch: h.best_epoch,
            });
        }
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
            image,
            reference,
            valid: Some(splits.split(Split::Valid)),
            schema: Some(schema),
            seed: p.seed,
            train: Some(splits.split(Split::Train)),
        };
        kiln_evaluate::run_split(
            self,
            &mut variants,
            splits.split(Split::Test),
            &schema.class_labels,
            extras,
            cx.out,
        )?;
        Ok(Ran::default())
    }

    fn summary(&self, cx: &ViewCx<'_>) -> Vec<Table> {
        let Some(m) = cx.own::<Metrics>() else {
            return Vec::new();
        };
        let verdict = cx.own::<Verdict>().map(|v| v.reason).unwrap_or_default();
        let cols = m.main();
        let mut header = vec!["variant".to_string()];
        header.extend(cols.iter().map(|(_, t)| t.to_string()));
        let baselines = m
            .baselines
            .iter()
            .map(|(n, v)| (format!("{n} (baseline)"), v));
        let rows = m
            .variants
            .iter()
            .map(|(n, v)| (n.clone(), v))
            .chain(baselines)
            .map(|(name, vals)| {
                let mut row = vec![name];
                row.extend(cols.iter().map(|(k, _)| fmt_metric(vals.get(*k).copied())));
                row
            })
            .collect();
        vec![Table {
            title: format!("test metrics ({}): {verdict}", cx.def.id),
            header,
            rows,
        }]
    }
}
