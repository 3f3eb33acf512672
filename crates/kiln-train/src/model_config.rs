//! The network of a train stage (`model = { ... }`): dense layers, learned embeddings of
//! categorical columns, convolutional steps on an image, and the checks of their shapes
//! that need no data.

use crate::config::{MAX_EMBEDDING_DIM, MAX_WIDTH};

/// The most values an image, or the output of one convolutional step, may hold.
pub const MAX_IMAGE_VALUES: usize = MAX_WIDTH * 64;
use kiln_core::{Activation, Norm};
use serde::{Deserialize, Serialize};

/// The network shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Only `mlp` so far.
    #[serde(default)]
    pub kind: ModelKind,
    /// Hidden layer widths, input to output (e.g. `[128, 64]`).
    pub hidden: Vec<usize>,
    /// Activation between layers (default `relu`).
    #[serde(default = "default_activation")]
    pub activation: Activation,
    /// Dropout probability after each hidden activation, during training only.
    #[serde(default)]
    pub dropout: f32,
    /// Normalization after each hidden layer's affine map, before its activation:
    /// `"layer"` (layer norm with learned gamma and beta, eps 1e-5, as PyTorch's
    /// `LayerNorm`); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm: Option<Norm>,
    /// Learned embeddings of categorical columns: each column an `ordinal` step encodes
    /// gets its own table (one row per train category plus one for unseen or missing
    /// values), looked up before the first layer and trained with the network; exported
    /// to ONNX as `Gather`. By default every ordinal-encoded column is embedded;
    /// `embeddings = { columns = [] }` feeds the codes to the network as numbers.
    #[serde(default, skip_serializing_if = "EmbeddingConfig::is_default")]
    pub embeddings: EmbeddingConfig,
    /// The features as an image, `[channels, height, width]` (values channel by channel,
    /// row by row), for `conv` steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<[usize; 3]>,
    /// Convolution and pooling steps on the image before the dense layers, in order:
    /// `{ op = "conv2d", channels = 32, kernel = 3, stride = 1, padding = 1, activation =
    /// "relu" }`, `{ op = "max_pool", kernel = 2 }`, `{ op = "avg_pool", kernel = 2,
    /// stride = 2 }`, `{ op = "global_avg_pool" }`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conv: Vec<kiln_core::ConvStep>,
}

impl ModelConfig {
    /// The image shape `image` gives.
    pub fn image_shape(&self) -> Option<kiln_core::ImageShape> {
        self.image
            .map(|[channels, height, width]| kiln_core::ImageShape {
                channels,
                height,
                width,
            })
    }
}

/// Which columns get learned embeddings, and how wide.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingConfig {
    /// Columns to embed, each encoded by an `ordinal` step (default: every
    /// ordinal-encoded column of the dataset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// Values per table row, 1 to 256 (default per column: `round(1.6 · rows^0.56)`,
    /// fastai's rule, clamped to 2..=16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dim: Option<usize>,
}

impl EmbeddingConfig {
    /// Whether this is the default (every ordinal-encoded column, widths by the rule),
    /// which a config file need not write.
    pub fn is_default(&self) -> bool {
        *self == EmbeddingConfig::default()
    }
}

/// The kinds of network a train stage builds.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Dense layers (`hidden` widths).
    #[default]
    Mlp,
}

impl Default for ModelConfig {
    /// One hidden layer of 64 ReLU units, no dropout, no norm.
    fn default() -> Self {
        ModelConfig {
            kind: ModelKind::Mlp,
            hidden: vec![64],
            activation: Activation::Relu,
            dropout: 0.0,
            norm: None,
            embeddings: EmbeddingConfig::default(),
            image: None,
            conv: Vec::new(),
        }
    }
}
fn default_activation() -> Activation {
    Activation::Relu
}

impl ModelConfig {
    /// Values out of range in the embeddings and the image's steps, as (key path,
    /// message) pairs: a step whose window does not fit its input is found here, in the
    /// file, before any data is read.
    pub fn shape_problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let mut bad = |k: &str, m: String| p.push((k.to_string(), m));
        let model = self;
        if let Some(d) = model.embeddings.dim
            && !(1..=MAX_EMBEDDING_DIM).contains(&d)
        {
            bad(
                "model.embeddings.dim",
                format!("{d} values per row; use 1 to {MAX_EMBEDDING_DIM}"),
            );
        }
        match model.image_shape() {
            None if !model.conv.is_empty() => bad(
                "model.image",
                "`conv` steps need the image's shape: image = [channels, height, width]".into(),
            ),
            Some(image) => {
                if image.is_empty() || image.len() > MAX_IMAGE_VALUES {
                    bad(
                        "model.image",
                        format!(
                            "{image} = {} values; give each side at least 1, at most {} values in all",
                            image.len(),
                            MAX_IMAGE_VALUES
                        ),
                    );
                } else {
                    let mut shape = image;
                    for (i, step) in model.conv.iter().enumerate() {
                        if let Err(m) = step.placement(&model.conv[..i]) {
                            bad(&format!("model.conv[{i}]"), m);
                            break;
                        }
                        match step.output(shape) {
                            Ok(s) if s.len() <= MAX_IMAGE_VALUES => shape = s,
                            Ok(s) => {
                                bad(
                                    &format!("model.conv[{i}]"),
                                    format!(
                                        "its output is {s} = {} values; at most {} (pool or stride earlier)",
                                        s.len(),
                                        MAX_IMAGE_VALUES
                                    ),
                                );
                                break;
                            }
                            Err(m) => {
                                bad(
                                    &format!("model.conv[{i}]"),
                                    format!("{} on a {shape} input: {m}", step.op()),
                                );
                                break;
                            }
                        }
                    }
                }
            }
            None => {}
        }
        p
    }
}
