//! The train stage: trains on its input dataset's train split, selects on valid, writes
//! the model artifact with the dataset's schema.json beside it.

use super::{InputRule, Kind, Ran, Reads, RunCx, Stage, StageError, ViewCx, fmt_metric};
use crate::file::{Pipeline, StageDef};
use crate::{StageKind, Table};
use kiln_core::artifact::history::History;
use kiln_core::artifact::sweep::SweepResults;
use kiln_core::dataset::shards::Split;

pub(crate) const KIND: Kind = Kind {
    kind: StageKind::Train,
    inputs: InputRule {
        kinds: &[StageKind::Preprocess],
        what: "a dataset (a preprocess stage)",
        min: 1,
        max: 1,
    },
};

impl Stage for kiln_train::Config {
    fn reads(&self, def: &StageDef, _: &Pipeline) -> Result<Reads, StageError> {
        Ok(Reads {
            stages: def.inputs.clone(),
            files: Vec::new(),
        })
    }

    fn run(&self, cx: &mut RunCx<'_>) -> Result<Ran, StageError> {
        let (input, id) = (cx.def.inputs[0].clone(), cx.def.id.clone());
        // in memory, or streamed from the shards (`data`: above `memory_mb`)
        let splits = cx.splits(&input, &id)?;
        let schema = splits.schema();
        let config = self.for_schema(schema, splits.split(Split::Train).n_rows());
        let (train, valid) = (splits.data(Split::Train)?, splits.data(Split::Valid)?);
        let o = kiln_train::run_with(
            &config,
            &train,
            &valid,
            schema.n_classes(),
            cx.out,
            cx.progress,
            None,
        )?;
        kiln_core::write_json(&cx.out.join("schema.json"), schema)?;
        Ok(Ran {
            resumed_from_epoch: o.resumed_from_epoch,
        })
    }

    fn summary(&self, cx: &ViewCx<'_>) -> Vec<Table> {
        let id = &cx.def.id;
        let mut tables = Vec::new();
        if let Some(s) = cx.own::<SweepResults>() {
            tables.push(Table {
                title: format!("sweep ({id}; * = kept)"),
                header: [
                    "trial",
                    "lr",
                    "batch",
                    "hidden",
                    "dropout",
                    "weight decay",
                    "valid metric",
                    "best epoch",
                ]
                .map(String::from)
                .to_vec(),
                rows: s
                    .trials
                    .iter()
                    .map(|t| {
                        vec![
                            format!("{}{}", t.trial, if t.chosen { " *" } else { "" }),
                            t.lr.to_string(),
                            t.batch_size.to_string(),
                            format!("{:?}", t.hidden),
                            t.dropout.to_string(),
                            t.weight_decay.to_string(),
                            fmt_metric(Some(t.best_valid_metric)),
                            t.best_epoch.to_string(),
                        ]
                    })
                    .collect(),
            });
        }
        if let Some(h) = cx.own::<History>() {
            let best = h.best();
            tables.push(Table {
                title: format!("training ({id})"),
                header: vec![
                    "epochs run".into(),
                    "best epoch".into(),
                    "kept by".into(),
                    "train loss".into(),
                    "valid loss".into(),
                    format!("valid {}", h.metric),
                    "train split".into(),
                ],
                rows: vec![vec![
                    h.epochs.len().to_string(),
                    h.best_epoch.to_string(),
                    h.kept_by.describe(&h.metric),
                    fmt_metric(best.map(|e| e.train_loss)),
                    fmt_metric(best.map(|e| e.valid_loss)),
                    fmt_metric(best.map(|e| e.valid_metric)),
                    match h.streamed {
                        None => "in memory".into(),
                        Some(s) => format!("streamed, {} shards, {} at a time", s.shards, s.window),
                    },
                ]],
            });
        }
        tables
    }
}
