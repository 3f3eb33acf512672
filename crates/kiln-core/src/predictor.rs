//! The Predictor trait (native or ONNX Runtime predictions) and the native implementation
//! that runs kiln's reference forward pass.

use crate::error::Result;
use crate::forward;
use crate::model::ModelSpec;
use crate::tensors::TensorStore;

/// Outputs for a batch of rows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Predictions {
    /// Rows predicted.
    pub n_rows: usize,
    /// Outputs per row (classes, or 1 for regression).
    pub n_outputs: usize,
    /// Raw outputs, row-major.
    pub logits: Vec<f32>,
    /// Softmax of the logits (classification), row-major; empty for regression.
    pub probabilities: Vec<f32>,
}

impl Predictions {
    /// Index of the largest output per row (first one on ties).
    pub fn argmax(&self) -> Vec<u32> {
        self.logits
            .chunks_exact(self.n_outputs.max(1))
            .map(|r| {
                let mut best = 0;
                for (j, v) in r.iter().enumerate() {
                    if *v > r[best] {
                        best = j;
                    }
                }
                best as u32
            })
            .collect()
    }

    /// Appends another batch's outputs.
    pub fn extend(&mut self, other: Predictions) {
        self.n_rows += other.n_rows;
        self.n_outputs = other.n_outputs;
        self.logits.extend(other.logits);
        self.probabilities.extend(other.probabilities);
    }
}

/// Something that turns feature rows into predictions: kiln's native forward pass or an
/// ONNX Runtime session. Evaluation and parity checks are written against this trait.
pub trait Predictor {
    /// A short name for reports (e.g. `native`, `onnxruntime`).
    fn name(&self) -> &str;
    /// Predicts `n_rows` rows given row-major `features`.
    fn predict(&mut self, features: &[f32], n_rows: usize) -> Result<Predictions>;

    /// Predicts in batches of `batch` rows (the batch composition matters for dynamic
    /// int8 quantization, so callers comparing predictors must use the same `batch`).
    fn predict_batched(
        &mut self,
        features: &[f32],
        n_rows: usize,
        batch: usize,
    ) -> Result<Predictions> {
        let width = features.len().checked_div(n_rows).unwrap_or(0);
        let mut all = Predictions {
            n_rows: 0,
            n_outputs: 0,
            logits: Vec::new(),
            probabilities: Vec::new(),
        };
        let mut start = 0;
        while start < n_rows {
            let end = (start + batch.max(1)).min(n_rows);
            all.extend(self.predict(&features[start * width..end * width], end - start)?);
            start = end;
        }
        Ok(all)
    }
}

/// A model run by kiln's reference forward pass (fp32, or the int8 simulation when the
/// spec is quantized).
#[derive(Debug, Clone)]
pub struct NativeModel {
    /// The network structure.
    pub spec: ModelSpec,
    /// Its weights.
    pub weights: TensorStore,
}

impl NativeModel {
    /// Checks the spec and returns the model.
    pub fn new(spec: ModelSpec, weights: TensorStore) -> Result<Self> {
        spec.validate()?;
        Ok(NativeModel { spec, weights })
    }

    /// Loads `spec.json` and `weights.safetensors` from a model folder.
    pub fn load(dir: &std::path::Path) -> Result<Self> {
        let spec: ModelSpec = crate::read_json(&dir.join("spec.json"))?;
        let weights = TensorStore::load(&dir.join("weights.safetensors"))?;
        NativeModel::new(spec, weights)
    }

    /// Writes `spec.json` and `weights.safetensors` into `dir`.
    pub fn save(&self, dir: &std::path::Path) -> Result<()> {
        crate::write_json(&dir.join("spec.json"), &self.spec)?;
        self.weights.save(&dir.join("weights.safetensors"))
    }
}

impl Predictor for NativeModel {
    fn name(&self) -> &str {
        "native"
    }

    fn predict(&mut self, features: &[f32], n_rows: usize) -> Result<Predictions> {
        let logits = forward::forward(&self.spec, &self.weights, features, n_rows)?;
        let probabilities = forward::probabilities(&self.spec, &logits);
        Ok(Predictions {
            n_rows,
            n_outputs: self.spec.output_dim(),
            logits,
            probabilities,
        })
    }
}
