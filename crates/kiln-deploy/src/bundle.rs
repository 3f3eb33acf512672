//! A deployed model as a library opens it: a deploy folder (or one of its .onnx files)
//! with schema.json, bundle.json and profile.json; raw rows in, the fitted preprocessing
//! applied, ONNX Runtime's predictions out. `kiln predict` and `kiln serve` are its
//! callers.
//!
//! ```no_run
//! use kiln_core::Rows;
//! let mut bundle = kiln_deploy::Bundle::open(std::path::Path::new("runs/iris/latest/ship"))?;
//! let rows = Rows { n_rows: 1, values: vec![5.1, 3.5, 1.4, 0.2], text: vec![] };
//! let p = bundle.predict(&rows)?;
//! println!("{}", bundle.labels(&p)[0]);
//! # Ok::<(), kiln_deploy::DeployError>(())
//! ```

use crate::{DeployError, OrtModel, Result};
use kiln_core::artifact::bundle::BundleManifest;
use kiln_core::artifact::profile::Profile;
use kiln_core::{Artifact, Predictions, Predictor, Rows, Schema};
use std::path::{Path, PathBuf};

/// Rows per ONNX Runtime call in [`Bundle::predict`].
pub const PREDICT_BATCH: usize = 1024;

/// A deployed model.
pub struct Bundle {
    /// The folder holding schema.json (and profile.json, bundle.json).
    pub dir: PathBuf,
    /// The ONNX file run.
    pub onnx: PathBuf,
    /// The model's schema: input columns, task, class labels, and the fitted transforms
    /// callers must apply — none when the model has them in its graph (`baked`).
    pub schema: Schema,
    /// The ONNX graph holds the preprocessing (metadata `preprocessing = baked`): it
    /// takes raw values, and `schema.transforms` is emptied so they are not applied twice.
    pub baked: bool,
    /// bundle.json (None for a bundle written before it existed, which still loads).
    pub manifest: Option<BundleManifest>,
    /// The training split's column ranges (profile.json), when the bundle carries them.
    pub profile: Option<Profile>,
    session: Option<OrtModel>,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("dir", &self.dir)
            .field("onnx", &self.onnx)
            .field("baked", &self.baked)
            .finish_non_exhaustive()
    }
}

/// How a user points at a bundle, for messages.
const WHAT: &str = "--model takes a deploy folder (runs/<pipeline>/latest/<deploy stage>) or an .onnx file inside one";

impl Bundle {
    /// Opens a deploy folder (its model.onnx) or an .onnx file with schema.json beside
    /// it. A bundle of a newer format than this kiln reads, or a folder that is not a
    /// bundle, is an error that says what to do.
    pub fn open(path: &Path) -> Result<Bundle> {
        let bad = |m: String| DeployError::Bundle(m);
        let meta =
            std::fs::metadata(path).map_err(|e| bad(format!("{}: {e}; {WHAT}", path.display())))?;
        let (dir, onnx) = if meta.is_dir() {
            (path.to_path_buf(), path.join("model.onnx"))
        } else {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf();
            (dir, path.to_path_buf())
        };
        if !dir.join("schema.json").is_file() {
            return Err(bad(format!(
                "{} holds no schema.json, so it is not a kiln bundle; {WHAT}",
                dir.display()
            )));
        }
        let manifest = if dir.join(BundleManifest::FILE).is_file() {
            Some(kiln_core::artifact::load::<BundleManifest>(&dir).map_err(|e| {
                bad(format!(
                    "{e}; re-export the bundle with this kiln: `kiln run <pipeline file> --only <deploy stage> --force`"
                ))
            })?)
        } else {
            None
        };
        let mut schema: Schema = kiln_core::read_json(&dir.join("schema.json"))?;
        if schema.version > SCHEMA_VERSION {
            return Err(bad(format!(
                "{}: schema version {} is newer than this kiln reads ({SCHEMA_VERSION}); update kiln or re-export the bundle with this one",
                dir.join("schema.json").display(),
                schema.version
            )));
        }
        let bytes = std::fs::read(&onnx).map_err(|e| {
            bad(format!(
                "{}: {e}; the bundle has no such ONNX file ({WHAT})",
                onnx.display()
            ))
        })?;
        let model =
            <crate::onnx::ModelProto as prost::Message>::decode(&bytes[..]).map_err(|e| {
                bad(format!(
                    "{}: not an ONNX model ({e}); the file is damaged: export it again with kiln",
                    onnx.display()
                ))
            })?;
        crate::check::check_model(&model).map_err(|e| bad(format!("{}: {e}", onnx.display())))?;
        let baked = crate::is_baked(&model);
        if baked {
            // the graph applies them to the raw values itself
            schema.transforms.clear();
        }
        let profile = kiln_core::artifact::load::<Profile>(&dir).ok();
        Ok(Bundle {
            dir,
            onnx,
            schema,
            baked,
            manifest,
            profile,
            session: None,
        })
    }

    /// A new ONNX Runtime session of the bundle's model with `threads` intra-op threads
    /// (0: ONNX Runtime's default), its input width checked against the schema.
    pub fn session(&self, threads: usize) -> Result<OrtModel> {
        let m = OrtModel::from_file(&self.onnx, threads)?;
        let want = if self.baked {
            self.schema.input_columns.len()
        } else {
            self.schema.n_features()
        };
        if m.n_features() != want {
            return Err(DeployError::Bundle(format!(
                "{} takes {} features but its schema.json describes {want}; the bundle is inconsistent, re-export it",
                self.onnx.display(),
                m.n_features()
            )));
        }
        Ok(m)
    }

    /// The model's input for raw `rows`: the schema's fitted preprocessing applied (raw
    /// values as they are when it is baked into the graph), every value finite.
    pub fn features(&self, rows: &Rows) -> Result<Vec<f32>> {
        Ok(self.schema.features(rows)?)
    }

    /// Predicts raw `rows` (in batches of [`PREDICT_BATCH`] through one session, opened
    /// on first use).
    pub fn predict(&mut self, rows: &Rows) -> Result<Predictions> {
        let x = self.features(rows)?;
        if self.session.is_none() {
            self.session = Some(self.session(0)?);
        }
        let model = self
            .session
            .as_mut()
            .ok_or_else(|| DeployError::Bundle("no session".into()))?;
        Ok(model.predict_batched(&x, rows.n_rows, PREDICT_BATCH)?)
    }

    /// The predicted class label of each row (classification): the largest output's.
    pub fn labels(&self, p: &Predictions) -> Vec<String> {
        p.argmax()
            .iter()
            .map(|&c| {
                self.schema
                    .class_labels
                    .get(c as usize)
                    .cloned()
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Per raw column, how many values of `rows` fall outside the train split's
    /// [min, max] (profile.json); empty without a profile.
    pub fn out_of_range(&self, rows: &Rows) -> Vec<(String, usize)> {
        let Some(p) = &self.profile else {
            return Vec::new();
        };
        let cols = &self.schema.input_columns;
        let w = cols.len().max(1);
        let mut out = Vec::new();
        for c in p
            .columns
            .iter()
            .filter(|c| c.min.is_finite() && c.max.is_finite())
        {
            let Some(j) = cols.iter().position(|x| *x == c.name) else {
                continue;
            };
            let count = rows
                .values
                .iter()
                .skip(j)
                .step_by(w)
                .filter(|&&v| f64::from(v) < c.min || f64::from(v) > c.max)
                .count();
            if count > 0 {
                out.push((c.name.clone(), count));
            }
        }
        out
    }
}

/// The newest schema.json version this kiln reads.
pub const SCHEMA_VERSION: u32 = 1;
