//! The optimization stage's configuration: the candidates (the legacy `quantize` setting
//! and the `candidates` list), the accuracy budget, fine-tuning and calibration settings,
//! with candidate names made from their settings and the problems of values out of range.

use crate::{Scheme, Scope};
use kiln_core::WeightType;
use serde::{Deserialize, Serialize};

/// Configuration of the optimization stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// One int8 candidate, `{ dtype = "int8", scheme = "dynamic", per_channel = true }`
    /// (shorthand for a `candidates` entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize: Option<QuantizeConfig>,
    /// Candidates to try, e.g. `[{ quantize = "dynamic" }, { structured = 0.5,
    /// finetune_epochs = 1 }, { prune = 0.8, steps = 4, finetune_epochs = 1 }]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<CandidateConfig>,
    /// Largest allowed drop of validation accuracy (R² for a regressor), absolute, e.g.
    /// 0.003 = 0.3 points. Without it the smallest candidate is chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_accuracy_drop: Option<f64>,
    /// Fine-tuning between pruning steps (epochs come from each candidate's
    /// `finetune_epochs`): `{ lr = 1e-4, batch_size = 64 }`.
    #[serde(default)]
    pub finetune: FinetuneConfig,
    /// Training rows that calibrate static quantization (default 1000).
    #[serde(default = "default_calibration_rows")]
    pub calibration_rows: usize,
    /// Time every candidate in ONNX Runtime at batch 1 and 1024 (default true; the
    /// figures go to latency.timings.json and the summary, never into the choice).
    #[serde(default = "default_true")]
    pub latency: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            quantize: None,
            candidates: Vec::new(),
            max_accuracy_drop: None,
            finetune: Default::default(),
            calibration_rows: default_calibration_rows(),
            latency: true,
        }
    }
}

fn default_calibration_rows() -> usize {
    1000
}

/// Adam settings of the fine-tuning after each pruning step (its epochs are each
/// candidate's `finetune_epochs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    /// Learning rate (default 1e-4: the weights are already trained).
    #[serde(default = "default_ft_lr")]
    pub lr: f64,
    /// Rows per step (default 64).
    #[serde(default = "default_ft_batch")]
    pub batch_size: usize,
    /// Shuffling seed (the pipeline fills it from its top-level `seed`).
    #[serde(default)]
    pub seed: u64,
}

fn default_ft_lr() -> f64 {
    1e-4
}
fn default_ft_batch() -> usize {
    64
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            lr: default_ft_lr(),
            batch_size: default_ft_batch(),
            seed: 0,
        }
    }
}

/// The legacy single int8 setting (`quantize = { … }`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuantizeConfig {
    /// Weight type: `int8`.
    #[serde(default = "default_dtype")]
    pub dtype: WeightType,
    /// `dynamic` (activations quantized per batch at run time) or `static` (ranges
    /// calibrated on training rows).
    #[serde(default = "default_scheme")]
    pub scheme: Scheme,
    /// One scale per output channel (default true).
    #[serde(default = "default_true")]
    pub per_channel: bool,
    /// Symmetric weights (default true) or asymmetric (with zero points).
    #[serde(default = "default_true")]
    pub symmetric: bool,
}

/// The most pruning steps a candidate may take.
pub const MAX_PRUNE_STEPS: usize = 100;

/// The most fine-tuning epochs after each pruning step.
pub const MAX_FINETUNE_EPOCHS: usize = 10_000;

/// One candidate: pruning (magnitude or structured, optional), then quantization
/// (optional).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CandidateConfig {
    /// Name in candidates.json and of the deployed file (default: made from the settings,
    /// e.g. `int8`, `int8-static`, `sparse-50`, `structured-50-int8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Magnitude pruning: the fraction of weights set to zero, in [0, 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<f64>,
    /// Magnitude pruning ranks weights per `layer` (default) or over the whole network
    /// (`global`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    /// Structured pruning: the fraction of each hidden layer's units removed, in [0, 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structured: Option<f64>,
    /// Prune in this many equal steps (default 1), fine-tuning after each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// Fine-tuning epochs after each pruning step (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finetune_epochs: Option<usize>,
    /// `dynamic` or `static` (int8 weights; activations quantized per batch or with
    /// calibrated ranges), or `fp16` (half-precision weights, fp32 arithmetic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize: Option<QuantizeMode>,
    /// One weight scale per output channel (default true) or one per tensor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_channel: Option<bool>,
    /// int8 weights symmetric around 0 (default true) or asymmetric (a zero point per
    /// scale, the full int8 range over [min, max]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric: Option<bool>,
}

/// How a candidate quantizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuantizeMode {
    /// int8 weights, activations quantized per batch at run time.
    Dynamic,
    /// int8 weights, activation ranges calibrated on training rows.
    Static,
    /// Half-precision weights, fp32 arithmetic.
    Fp16,
}

impl CandidateConfig {
    /// The candidate's name: its own, or one made from its settings.
    pub fn resolved_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let pct = |f: f64| (f * 100.0).round() as i64;
        let mut parts = Vec::new();
        if let Some(s) = self.structured {
            parts.push(format!("structured-{}", pct(s)));
        }
        if let Some(s) = self.prune {
            parts.push(format!("sparse-{}", pct(s)));
            if self.scope == Some(Scope::Global) {
                parts.push("global".into());
            }
        }
        if let Some(q) = &self.quantize {
            parts.push(match q {
                QuantizeMode::Static => "int8-static".into(),
                QuantizeMode::Fp16 => "fp16".into(),
                QuantizeMode::Dynamic => "int8".into(),
            });
            if self.per_channel == Some(false) {
                parts.push("per-tensor".into());
            }
            if self.symmetric == Some(false) {
                parts.push("asym".into());
            }
        }
        if parts.is_empty() {
            "unchanged".into()
        } else {
            parts.join("-")
        }
    }

    fn problems(&self, key: &str, p: &mut Vec<(String, String)>) {
        let frac = |v: Option<f64>, k: &str, p: &mut Vec<(String, String)>| {
            if let Some(f) = v
                && !(0.0..1.0).contains(&f)
            {
                p.push((
                    format!("{key}.{k}"),
                    format!("{f} must be in [0, 1) (a fraction removed)"),
                ));
            }
        };
        frac(self.prune, "prune", p);
        frac(self.structured, "structured", p);
        if self.scope.is_some() && self.prune.is_none() {
            p.push((
                format!("{key}.scope"),
                "scope applies to magnitude pruning; add `prune = <sparsity>`".into(),
            ));
        }
        if let Some(n) = self.steps
            && !(1..=MAX_PRUNE_STEPS).contains(&n)
        {
            p.push((
                format!("{key}.steps"),
                format!("{n} steps: give between 1 and {MAX_PRUNE_STEPS}"),
            ));
        }
        if let Some(n) = self.finetune_epochs
            && n > MAX_FINETUNE_EPOCHS
        {
            p.push((
                format!("{key}.finetune_epochs"),
                format!("{n} epochs after each step: at most {MAX_FINETUNE_EPOCHS}"),
            ));
        }
        if self.prune.is_none() && self.structured.is_none() && self.quantize.is_none() {
            p.push((
                key.into(),
                "the candidate changes nothing; give `prune`, `structured` or `quantize`".into(),
            ));
        }
        if let Some(n) = &self.name
            && (n.is_empty()
                || n == "fp32"
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            p.push((
                format!("{key}.name"),
                format!("name `{n}` must be letters, digits, `-` or `_`, and not `fp32`"),
            ));
        }
    }
}

impl Config {
    /// Every candidate: `quantize` (if given) first, then `candidates` in order.
    pub fn all_candidates(&self) -> Vec<CandidateConfig> {
        let mut all = Vec::new();
        if let Some(q) = &self.quantize {
            all.push(CandidateConfig {
                quantize: Some(match q.scheme {
                    Scheme::Static => QuantizeMode::Static,
                    _ => QuantizeMode::Dynamic,
                }),
                per_channel: Some(q.per_channel),
                symmetric: Some(q.symmetric),
                ..Default::default()
            });
        }
        all.extend(self.candidates.iter().cloned());
        all
    }

    /// Values out of range, as (key path, message) pairs; empty when the config is usable.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if let Some(b) = self.max_accuracy_drop
            && !(0.0..=1.0).contains(&b)
        {
            p.push((
                "max_accuracy_drop".into(),
                format!("{b} must be in [0, 1] (an absolute accuracy drop)"),
            ));
        }
        if let Some(q) = &self.quantize {
            if q.dtype != kiln_core::WeightType::Int8 {
                p.push((
                    "quantize.dtype".into(),
                    format!("dtype `{}` is not supported; use \"int8\"", q.dtype),
                ));
            }
            if q.scheme == Scheme::Weights {
                p.push((
                    "quantize.scheme".into(),
                    format!(
                        "scheme `{}` is not supported; use \"dynamic\" or \"static\"",
                        q.scheme
                    ),
                ));
            }
        }
        for (i, c) in self.candidates.iter().enumerate() {
            c.problems(&format!("candidates[{i}]"), &mut p);
        }
        let names: Vec<String> = self
            .all_candidates()
            .iter()
            .map(CandidateConfig::resolved_name)
            .collect();
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                p.push((
                    "candidates".into(),
                    format!("two candidates are named `{n}`; give one a `name`"),
                ));
            }
        }
        if names.is_empty() {
            p.push((
                "candidates".into(),
                "nothing to do: add `candidates = [{ quantize = \"dynamic\" }]` (or `quantize = { dtype = \"int8\" }`)".into(),
            ));
        }
        if self.calibration_rows == 0 {
            p.push(("calibration_rows".into(), "must be at least 1".into()));
        }
        if self.finetune.batch_size == 0 || self.finetune.lr.is_nan() || self.finetune.lr <= 0.0 {
            p.push((
                "finetune".into(),
                "batch_size must be at least 1 and lr positive".into(),
            ));
        }
        p
    }
}

fn default_dtype() -> WeightType {
    WeightType::Int8
}
fn default_scheme() -> Scheme {
    Scheme::Dynamic
}
fn default_true() -> bool {
    true
}

impl Default for QuantizeConfig {
    fn default() -> Self {
        QuantizeConfig {
            dtype: default_dtype(),
            scheme: default_scheme(),
            per_channel: true,
            symmetric: true,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn candidate_names_are_made_from_settings() {
        let c = |s: &str| -> CandidateConfig { toml_like(s) };
        assert_eq!(c("q=dynamic").resolved_name(), "int8");
        assert_eq!(c("q=static").resolved_name(), "int8-static");
        assert_eq!(c("p=0.5").resolved_name(), "sparse-50");
        assert_eq!(c("s=0.25,q=dynamic").resolved_name(), "structured-25-int8");
        assert_eq!(c("q=fp16").resolved_name(), "fp16");
        let mut a = c("q=dynamic");
        a.symmetric = Some(false);
        assert_eq!(a.resolved_name(), "int8-asym");
    }

    /// A candidate from `q=<mode>`, `p=<sparsity>`, `s=<fraction>` pairs, comma-separated.
    pub(crate) fn toml_like(s: &str) -> CandidateConfig {
        let mut c = CandidateConfig::default();
        for kv in s.split(',') {
            let (k, v) = kv.split_once('=').unwrap();
            match k {
                "q" => c.quantize = Some(serde_json::from_value(serde_json::json!(v)).unwrap()),
                "p" => c.prune = Some(v.parse().unwrap()),
                "s" => c.structured = Some(v.parse().unwrap()),
                _ => unreachable!(),
            }
        }
        c
    }

    #[test]
    fn pruning_steps_and_finetune_epochs_are_bounded() {
        let c = |steps, finetune_epochs| Config {
            candidates: vec![CandidateConfig {
                prune: Some(0.5),
                steps: Some(steps),
                finetune_epochs: Some(finetune_epochs),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(
            c(MAX_PRUNE_STEPS, MAX_FINETUNE_EPOCHS)
                .problems()
                .is_empty()
        );
        assert_eq!(
            c(0, 1).problems(),
            [(
                "candidates[0].steps".to_string(),
                "0 steps: give between 1 and 100".to_string()
            )]
        );
        assert_eq!(
            c(usize::MAX, MAX_FINETUNE_EPOCHS + 1).problems(),
            [
                (
                    "candidates[0].steps".to_string(),
                    format!("{} steps: give between 1 and 100", usize::MAX)
                ),
                (
                    "candidates[0].finetune_epochs".to_string(),
                    "10001 epochs after each step: at most 10000".to_string()
                ),
            ]
        );
    }

    #[test]
    fn problems_name_the_key() {
        let c = Config {
            candidates: vec![CandidateConfig {
                prune: Some(1.0),
                ..Default::default()
            }],
            ..Default::default()
        };
        let p = c.problems();
        assert_eq!(p[0].0, "candidates[0].prune");
        assert!(
            Config::default()
                .problems()
                .iter()
                .any(|(k, _)| k == "candidates")
        );
    }
}
