//! The preprocess stage: reads its source files (in memory, or streamed when the table is
//! large), writes the dataset artifact (Parquet shards with their manifest, schema.json,
//! profile.json) and hands the splits of an in-memory run to later stages in memory.

use super::{InputRule, Kind, Ran, Reads, RunCx, Stage, StageError, ViewCx};
use crate::file::{Pipeline, StageDef};
use crate::{StageConfig, StageKind, Table};
use kiln_core::artifact::profile::Profile;

pub(crate) const KIND: Kind = Kind {
    kind: StageKind::Preprocess,
    inputs: InputRule {
        kinds: &[],
        what: "nothing",
        min: 0,
        max: 0,
    },
};

/// A file the stage cannot read is one of its sources: say where to fix it.
fn source_error(e: kiln_preprocess::PreprocessError) -> StageError {
    match e {
        kiln_preprocess::PreprocessError::Io { path, source } => {
            StageError::Source { path, source }
        }
        other => other.into(),
    }
}

/// Most rows of the data profile table in the summary; profile.json has every column.
const PROFILE_ROWS: usize = 12;

impl Stage for kiln_preprocess::Config {
    fn reads(&self, _: &StageDef, _: &Pipeline) -> Result<Reads, StageError> {
        Ok(Reads {
            stages: Vec::new(),
            files: kiln_preprocess::source_files(&self.source).map_err(source_error)?,
        })
    }

    fn run(&self, cx: &mut RunCx<'_>) -> Result<Ran, StageError> {
        // another engine (DataFusion, a Ballista cluster) writes the shards; the stages
        // after it read them
        if self.engine != kiln_preprocess::Engine::Local {
            kiln_preprocess::run_remote(self, cx.out, cx.progress).map_err(source_error)?;
            return Ok(Ran::default());
        }
        // a table too large for memory is streamed into the shards; the stages after it
        // read them
        if kiln_preprocess::streams(self).map_err(source_error)? {
            kiln_preprocess::run_streamed_with(self, cx.out, cx.progress).map_err(source_error)?;
            return Ok(Ran::default());
        }
        let o = kiln_preprocess::run(self, cx.out).map_err(source_error)?;
        // the stages after it share these splits in memory, unless a train stage reading
        // them streams them: then they read the shards, and holding the splits would
        // cost what streaming saves
        let [train, valid, _] = &o.splits;
        let bytes =
            super::splits::feature_bytes(train.n_rows() + valid.n_rows(), train.n_features());
        let streamed = cx.pipeline.stages.iter().any(|t| {
            t.inputs.first() == Some(&cx.def.id)
                && matches!(&t.config, StageConfig::Train(c) if c.data.streams(bytes))
        });
        if !streamed {
            cx.keep_dataset(o.schema, o.splits);
        }
        Ok(Ran::default())
    }

    fn summary(&self, cx: &ViewCx<'_>) -> Vec<Table> {
        cx.own::<Profile>()
            .map(|p| tables(&cx.def.id, &p))
            .unwrap_or_default()
    }
}

/// Rows per split with what was dropped and added, the train class balance, and the
/// column profile (columns with missing cells first).
fn tables(id: &str, p: &Profile) -> Vec<Table> {
    let d = &p.dropped_rows;
    let a = &p.augmentation;
    let mut out = vec![Table {
        title: format!("data ({id})"),
        header: [
            "train",
            "valid",
            "test",
            "features",
            "rows dropped",
            "train rows added",
        ]
        .map(String::from)
        .to_vec(),
        rows: vec![vec![
            p.rows.train.to_string(),
            p.rows.valid.to_string(),
            p.rows.test.to_string(),
            p.n_features.to_string(),
            if d.unreadable_files > 0 {
                format!(
                    "{} (no target {}, nulls {}, duplicates {}, unreadable files {})",
                    d.total(),
                    d.null_target,
                    d.null_features,
                    d.duplicates,
                    d.unreadable_files
                )
            } else {
                format!(
                    "{} (no target {}, nulls {}, duplicates {})",
                    d.total(),
                    d.null_target,
                    d.null_features,
                    d.duplicates
                )
            },
            format!(
                "{} (oversampled {}, copies {})",
                a.oversampled + a.copies,
                a.oversampled,
                a.copies
            ),
        ]],
    }];
    let total: usize = p.train_class_counts.iter().map(|(_, n)| n).sum();
    if !p.train_class_counts.is_empty() {
        out.push(Table {
            title: format!("class balance, train before augmentation ({id})"),
            header: ["class", "rows", "share"].map(String::from).to_vec(),
            rows: p
                .train_class_counts
                .iter()
                .map(|(c, n)| {
                    vec![
                        c.clone(),
                        n.to_string(),
                        format!("{:.1} %", 100.0 * *n as f64 / total.max(1) as f64),
                    ]
                })
                .collect(),
        });
    }
    let mut cols: Vec<_> = p.columns.iter().collect();
    cols.sort_by(|x, y| y.null_share.total_cmp(&x.null_share));
    let num = |x: f64| {
        if x.is_finite() {
            format!("{x:.4}")
        } else {
            "-".into()
        }
    };
    let mut rows: Vec<Vec<String>> = cols
        .iter()
        .take(PROFILE_ROWS)
        .map(|c| {
            vec![
                c.name.clone(),
                c.dtype.clone(),
                format!("{:.1} %", 100.0 * c.null_share),
                num(c.min),
                num(c.max),
                num(c.mean),
                if c.distinct_estimated {
                    format!("≈ {}", c.distinct)
                } else {
                    c.distinct.to_string()
                },
            ]
        })
        .collect();
    if cols.len() > PROFILE_ROWS {
        let mut more = vec![format!(
            "… {} more in profile.json",
            cols.len() - PROFILE_ROWS
        )];
        more.resize(7, String::new());
        rows.push(more);
    }
    out.push(Table {
        title: format!("data profile, raw train columns ({id})"),
        header: [
            "column", "type", "missing", "min", "max", "mean", "distinct",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    });
    out
}
