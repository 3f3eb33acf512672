//! The optimize stage: compresses its input model into every configured candidate,
//! scores them on the valid split, keeps the smallest within the accuracy budget.

use super::{InputRule, Kind, Ran, Reads, RunCx, Stage, StageError, ViewCx, fmt_metric, upstream};
use crate::file::{Pipeline, StageDef};
use crate::{StageKind, Table};
use kiln_core::artifact::candidates::{Candidates, Timings};
use kiln_core::dataset::shards::Split;

pub(crate) const KIND: Kind = Kind {
    kind: StageKind::Optimize,
    inputs: InputRule {
        kinds: &[StageKind::Train],
        what: "a trained model (a train stage)",
        min: 1,
        max: 1,
    },
};

impl Stage for kiln_optimize::Config {
    fn reads(&self, def: &StageDef, p: &Pipeline) -> Result<Reads, StageError> {
        Ok(Reads::inputs_and_data(def, p))
    }

    fn run(&self, cx: &mut RunCx<'_>) -> Result<Ran, StageError> {
        let input = cx.def.inputs[0].clone();
        let pre = upstream(cx.pipeline, &input, StageKind::Preprocess)
            .map(|s| s.id.clone())
            .unwrap_or_default();
        let splits = cx.splits(&pre, &input)?;
        let model = cx.model(&input)?;
        let (train, valid) = (splits.data(Split::Train)?, splits.data(Split::Valid)?);
        kiln_optimize::run_on(self, &model, &train, &valid, cx.out)?;
        kiln_core::write_json(&cx.out.join("schema.json"), splits.schema())?;
        Ok(Ran::default())
    }

    fn summary(&self, cx: &ViewCx<'_>) -> Vec<Table> {
        let Some(cands) = cx.own::<Candidates>() else {
            return Vec::new();
        };
        let lat = cx.own::<Timings>().map(|t| t.latency).unwrap_or_default();
        let regression = cx
            .def
            .inputs
            .first()
            .and_then(|t| cx.dirs.get(t))
            .and_then(|d| kiln_core::read_json::<kiln_core::ModelSpec>(&d.join("spec.json")).ok())
            .is_some_and(|m| m.task == kiln_core::Task::Regression);
        let mut rows = Vec::new();
        for (i, c) in cands.candidates.iter().enumerate() {
            let l = lat.get(i).filter(|l| l.name == c.name);
            let ms = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.3}"));
            let mut reason = c.reason.clone();
            if let Some(slow) = l.and_then(|l| l.slower_than_fp32.as_ref()) {
                reason = format!("{reason}; SLOWER than fp32: {slow}");
            }
            rows.push(vec![
                format!("{}{}", c.name, if c.chosen { " *" } else { "" }),
                c.params.to_string(),
                c.nonzeros.to_string(),
                format!("{:.1} KiB", c.onnx_bytes as f64 / 1024.0),
                fmt_metric(Some(c.valid_accuracy)),
                fmt_metric(Some(c.accuracy_drop)),
                ms(l.map(|l| l.batch1_ms)),
                ms(l.map(|l| l.batch1024_ms)),
                l.map_or_else(|| "-".into(), |l| format!("{:.2}x", l.speedup_1024)),
                reason,
            ]);
        }
        let score = if regression { "valid R²" } else { "valid acc" };
        vec![Table {
            title: format!("compression candidates ({}; * = chosen)", cx.def.id),
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
        }]
    }
}
