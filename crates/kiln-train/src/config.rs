//! The training stage's configuration (the `[stages.<id>]` table of `uses = "train"`).

use kiln_core::Activation;
use serde::{Deserialize, Serialize};

/// Configuration of one training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The network.
    pub model: ModelConfig,
    /// Loss function (default `cross_entropy`).
    #[serde(default)]
    pub loss: Loss,
    /// Optimizer and learning rate.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// Maximum number of passes over the training split (default 10).
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Rows per gradient step (default 64).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Stop when the validation metric has not improved for `patience` epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
    /// `cpu` (default) or `cuda` (needs the `cuda` cargo feature).
    #[serde(default = "default_device")]
    pub device: String,
    /// Write a checkpoint every N epochs (0 = never; default 1).
    #[serde(default = "default_every")]
    pub checkpoint_every: usize,
    /// Continue from a checkpoint left by an interrupted run (default true).
    #[serde(default = "default_true")]
    pub resume: bool,
    /// Seed of weight initialisation, shuffling and dropout (the pipeline fills it from
    /// its top-level `seed`).
    #[serde(default)]
    pub seed: u64,
}

impl Config {
    /// Values out of range, as (key path, message) pairs; empty when the config is usable.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let mut bad = |k: &str, m: String| p.push((k.to_string(), m));
        if self.model.kind != "mlp" {
            bad(
                "model.kind",
                format!(
                    "model kind `{}` is not supported; use \"mlp\"",
                    self.model.kind
                ),
            );
        }
        if self.model.hidden.contains(&0) {
            bad(
                "model.hidden",
                "a hidden layer has width 0; widths must be at least 1".into(),
            );
        }
        if !(0.0..1.0).contains(&self.model.dropout) {
            bad(
                "model.dropout",
                format!("dropout {} must be in [0, 1)", self.model.dropout),
            );
        }
        if !(self.optimizer.lr > 0.0 && self.optimizer.lr.is_finite()) {
            bad(
                "optimizer.lr",
                format!(
                    "learning rate {} must be a positive number",
                    self.optimizer.lr
                ),
            );
        }
        if self.optimizer.weight_decay < 0.0 {
            bad(
                "optimizer.weight_decay",
                format!(
                    "weight decay {} must not be negative",
                    self.optimizer.weight_decay
                ),
            );
        }
        if !(0.0..1.0).contains(&self.optimizer.momentum) {
            bad(
                "optimizer.momentum",
                format!("momentum {} must be in [0, 1)", self.optimizer.momentum),
            );
        }
        if self.epochs == 0 {
            bad("epochs", "epochs must be at least 1".into());
        }
        if self.batch_size == 0 {
            bad("batch_size", "batch_size must be at least 1".into());
        }
        if let Some(es) = &self.early_stopping {
            if es.metric != "accuracy" && es.metric != "loss" {
                bad(
                    "early_stopping.metric",
                    format!(
                        "metric `{}` is unknown; use \"accuracy\" or \"loss\"",
                        es.metric
                    ),
                );
            }
            if es.patience == 0 {
                bad(
                    "early_stopping.patience",
                    "patience must be at least 1".into(),
                );
            }
        }
        if self.device != "cpu" && self.device != "cuda" {
            bad(
                "device",
                format!("unknown device `{}`; use \"cpu\" or \"cuda\"", self.device),
            );
        }
        p
    }
}

fn default_every() -> usize {
    1
}
fn default_true() -> bool {
    true
}
fn default_epochs() -> usize {
    10
}
fn default_batch() -> usize {
    64
}
fn default_device() -> String {
    "cpu".into()
}

/// The network shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Only `mlp` so far.
    #[serde(default = "default_kind")]
    pub kind: String,
    /// Hidden layer widths, input to output (e.g. `[128, 64]`).
    pub hidden: Vec<usize>,
    /// Activation between layers (default `relu`).
    #[serde(default = "default_activation")]
    pub activation: Activation,
    /// Dropout probability after each hidden activation, during training only.
    #[serde(default)]
    pub dropout: f32,
}

fn default_kind() -> String {
    "mlp".into()
}
fn default_activation() -> Activation {
    Activation::Relu
}

/// Loss functions.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Softmax cross-entropy on logits (multi-class classification).
    #[default]
    CrossEntropy,
}

/// Optimizer settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// `adam` (default), `adamw` or `sgd`.
    #[serde(default = "default_opt")]
    pub kind: OptimizerKind,
    /// Learning rate (default 1e-3).
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// L2 penalty (adam, sgd) or decoupled decay (adamw); default 0.
    #[serde(default)]
    pub weight_decay: f64,
    /// Momentum for sgd (default 0).
    #[serde(default)]
    pub momentum: f64,
}

fn default_opt() -> OptimizerKind {
    OptimizerKind::Adam
}
fn default_lr() -> f64 {
    1e-3
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig {
            kind: OptimizerKind::Adam,
            lr: default_lr(),
            weight_decay: 0.0,
            momentum: 0.0,
        }
    }
}

/// Optimizer algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Adam (Kingma & Ba).
    Adam,
    /// Adam with decoupled weight decay.
    Adamw,
    /// Stochastic gradient descent, optional momentum.
    Sgd,
}

/// Early stopping on a validation metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    /// Epochs without improvement before stopping.
    pub patience: usize,
    /// `accuracy` (higher is better) or `loss` (lower is better).
    #[serde(default = "default_metric")]
    pub metric: String,
    /// Smallest change that counts as an improvement (default 0).
    #[serde(default)]
    pub min_delta: f64,
}

fn default_metric() -> String {
    "accuracy".into()
}
