//! ModelSpec (spec.json): the layer list of a network, independent of any framework.

use crate::conv::{ConvStep, ImageShape};
use crate::error::{CoreError, Result};
use crate::schema::Task;
use crate::tensors::TensorStore;
use serde::{Deserialize, Serialize};

/// Element-wise activation after a dense layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// max(0, x)
    Relu,
    /// tanh(x)
    Tanh,
    /// 1 / (1 + exp(-x))
    Sigmoid,
    /// x for x >= 0, else 0.01 x (PyTorch's and ONNX's default slope)
    LeakyRelu,
    /// 0.5 x (1 + erf(x / sqrt 2)), the exact GELU (erf from libm, as dfdx trains it)
    Gelu,
    /// x (used on the output layer)
    Identity,
}

/// Slope of [`Activation::LeakyRelu`] for negative inputs.
pub const LEAKY_RELU_ALPHA: f32 = 0.01;

impl Activation {
    /// Applies the activation to one value.
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Relu => x.max(0.0),
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Activation::LeakyRelu => {
                if x >= 0.0 {
                    x
                } else {
                    LEAKY_RELU_ALPHA * x
                }
            }
            Activation::Gelu => 0.5 * x * (1.0 + libm::erff(x / std::f32::consts::SQRT_2)),
            Activation::Identity => x,
        }
    }
}

/// A normalization between a dense layer's affine map and its activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    /// Layer normalization over the layer's units, as PyTorch's `LayerNorm`:
    /// `(z - mean) / sqrt(var + 1e-5) * gamma + beta` with the biased variance; gamma and
    /// beta are `layers.<i>.norm_weight` and `layers.<i>.norm_bias` (`[out]`, float even
    /// in a quantized model).
    Layer,
}

/// Epsilon of [`Norm::Layer`] (PyTorch's default).
pub const LAYER_NORM_EPS: f32 = 1e-5;

/// One dense layer: `y = act(norm(x @ W + b))` with `W` of shape `[in_dim, out_dim]` and
/// the norm optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSpec {
    /// Input width.
    pub in_dim: usize,
    /// Output width.
    pub out_dim: usize,
    /// Activation applied after the affine map (and the norm).
    pub activation: Activation,
    /// Normalization between the affine map and the activation, if any (absent in
    /// spec.json files written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm: Option<Norm>,
}

/// A learned embedding of one categorical column: the feature at index `feature` holds
/// the column's ordinal code (its category's index, -1 for a category unseen in training
/// or missing, as the `ordinal` transform writes it), and the network looks up row
/// `code + 1` of a `[rows, dim]` table (`embeddings.<j>.weight`, float even in a
/// quantized model) instead of reading the code as a number. Any other value — a
/// fraction, NaN, out of range — takes row 0, the unseen-category row (see
/// [`EmbeddingSpec::row`]).
///
/// The first dense layer's input is the features that are not embedded, in their order,
/// followed by each embedding's `dim` values in the order of `ModelSpec::embeddings`
/// (see [`crate::forward::embed_input`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingSpec {
    /// Index of the feature holding the ordinal code.
    pub feature: usize,
    /// Table rows: one per category seen in training, plus row 0 for any other value.
    pub rows: usize,
    /// Values per row.
    pub dim: usize,
}

impl EmbeddingSpec {
    /// The table row a feature value looks up: `code + 1` when that is a whole number in
    /// `1..rows`, else 0 (computed in f32 as the ONNX graph computes it: `Add`, `Floor`,
    /// comparisons, `Where`).
    pub fn row(&self, code: f32) -> usize {
        let r = code + 1.0;
        if r.floor() == r && r >= 0.0 && r < self.rows as f32 {
            r as usize
        } else {
            0
        }
    }

    /// The default width of a table of `rows` rows: fastai's rule
    /// `round(1.6 · rows^0.56)`, at most 16 (a table wider than that rarely helps a
    /// tabular MLP and costs parameters), at least 2.
    pub fn default_dim(rows: usize) -> usize {
        ((1.6 * (rows as f64).powf(0.56)).round() as usize).clamp(2, 16)
    }
}

/// How a model's weights are quantized, when they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantization {
    /// Weight type: `int8`, or `fp16` (weights rounded to half precision, stored as their
    /// f32 values, exported as float16 initializers; `scheme` is then `weights`).
    pub dtype: WeightType,
    /// How activations are quantized.
    pub scheme: Scheme,
    /// One scale per output channel (true) or one per tensor (false).
    pub per_channel: bool,
}

/// The type a quantized model's weights are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WeightType {
    /// Signed 8-bit integers with scales (and zero points when asymmetric).
    Int8,
    /// Half-precision floats (arithmetic stays fp32).
    Fp16,
}

/// How a quantized model's activations are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    /// To uint8 at run time, per tensor, from each batch's own range, as ONNX
    /// `DynamicQuantizeLinear` does.
    Dynamic,
    /// With a scale and zero point per layer fixed by calibration
    /// (`layers.<i>.input_scale`, `layers.<i>.input_zero_point`), as ONNX
    /// `QuantizeLinear` does.
    Static,
    /// Not at all: only the weights are stored at lower precision (fp16).
    Weights,
}

impl std::fmt::Display for WeightType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WeightType::Int8 => "int8",
            WeightType::Fp16 => "fp16",
        })
    }
}

impl std::fmt::Display for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scheme::Dynamic => "dynamic",
            Scheme::Static => "static",
            Scheme::Weights => "weights",
        })
    }
}

/// How a model was pruned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PruningKind {
    /// Weights set to zero, shapes kept.
    Magnitude,
    /// Hidden units removed, layers narrower.
    Structured,
}

/// How a model was pruned, when it was (informational: the weights say the rest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pruning {
    /// Magnitude or structured.
    pub kind: PruningKind,
    /// Magnitude: the fraction of weights that are zero; structured: the fraction of
    /// hidden units removed.
    pub amount: f64,
}

/// spec.json: the network's structure. Weights live in a [`crate::TensorStore`] under
/// `layers.<i>.weight` (`[in, out]`) and `layers.<i>.bias` (`[out]`); a quantized model
/// holds `layers.<i>.weight` as i8 plus `layers.<i>.weight_scale` (`[out]` or `[1]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Format version of this file.
    pub version: u32,
    /// Classification (logits + softmax) or regression.
    pub task: Task,
    /// Number of input features.
    pub input_dim: usize,
    /// Learned embeddings of categorical features, looked up before the first dense
    /// layer (absent in spec.json files written before they existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub embeddings: Vec<EmbeddingSpec>,
    /// The shape of an image input, for a model with convolutional steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageShape>,
    /// Convolution and pooling steps on the image, before the dense layers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conv: Vec<ConvStep>,
    /// Dense layers, input to output.
    pub layers: Vec<LayerSpec>,
    /// Set when the weights are quantized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<Quantization>,
    /// Set when the model was pruned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruning: Option<Pruning>,
}

impl ModelSpec {
    /// An MLP `input -> hidden... -> outputs` with `activation` between layers and an
    /// identity output layer.
    pub fn mlp(
        input_dim: usize,
        hidden: &[usize],
        activation: Activation,
        task: Task,
        outputs: usize,
    ) -> Self {
        let mut layers = Vec::new();
        let mut prev = input_dim;
        for &h in hidden {
            layers.push(LayerSpec {
                in_dim: prev,
                out_dim: h,
                activation,
                norm: None,
            });
            prev = h;
        }
        layers.push(LayerSpec {
            in_dim: prev,
            out_dim: outputs,
            activation: Activation::Identity,
            norm: None,
        });
        ModelSpec {
            version: 1,
            task,
            input_dim,
            embeddings: Vec::new(),
            image: None,
            conv: Vec::new(),
            layers,
            quantization: None,
            pruning: None,
        }
    }

    /// The same network with `norm` after every hidden layer (the output layer has none).
    pub fn with_norm(mut self, norm: Option<Norm>) -> Self {
        let hidden = self.layers.len().saturating_sub(1);
        for l in &mut self.layers[..hidden] {
            l.norm = norm;
        }
        self
    }

    /// The same network with `embeddings` looked up before the first layer, whose input
    /// width becomes [`ModelSpec::first_input_dim`].
    pub fn with_embeddings(mut self, embeddings: Vec<EmbeddingSpec>) -> Self {
        self.embeddings = embeddings;
        let width = self.first_input_dim();
        if let Some(first) = self.layers.first_mut() {
            first.in_dim = width;
        }
        self
    }

    /// The same network reading `image` through the convolutional `steps` first; the
    /// first dense layer's input width becomes their output's size (left as it was when
    /// the steps do not fit the image: [`ModelSpec::validate`] says why).
    pub fn with_conv(mut self, image: ImageShape, steps: Vec<ConvStep>) -> Self {
        self.image = Some(image);
        self.conv = steps;
        if let Ok(shapes) = self.conv_shapes()
            && let (Some(last), Some(first)) = (shapes.last(), self.layers.first_mut())
        {
            first.in_dim = last.len();
        }
        self
    }

    /// The image's shape after each convolutional step (empty without an image), or the
    /// first step that does not fit, by index, and why.
    pub fn conv_shapes(&self) -> std::result::Result<Vec<ImageShape>, (usize, String)> {
        let Some(mut shape) = self.image else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(self.conv.len());
        for (i, step) in self.conv.iter().enumerate() {
            step.placement(&self.conv[..i]).map_err(|m| (i, m))?;
            shape = step.output(shape).map_err(|m| (i, m))?;
            out.push(shape);
        }
        Ok(out)
    }

    /// Width of the first dense layer's input: the convolutional steps' output size, or
    /// the features that are not embedded plus every embedding's width.
    pub fn first_input_dim(&self) -> usize {
        if self.image.is_some() {
            return match self.conv_shapes() {
                Ok(s) => s.last().map_or(self.input_dim, ImageShape::len),
                Err(_) => self.input_dim,
            };
        }
        self.input_dim - self.embeddings.len().min(self.input_dim)
            + self.embeddings.iter().map(|e| e.dim).sum::<usize>()
    }

    /// Copies every convolution's weight and bias from `from` into `to` (they stay f32 in
    /// every compressed form).
    pub fn copy_conv(&self, from: &TensorStore, to: &mut TensorStore) -> Result<()> {
        for (i, step) in self.conv.iter().enumerate() {
            let names: &[&str] = match step {
                ConvStep::Conv2d { .. } => &["weight", "bias"],
                ConvStep::BatchNorm { .. } => &["weight", "bias", "running_mean", "running_var"],
                _ => &[],
            };
            {
                for name in names {
                    let key = format!("conv.{i}.{name}");
                    let t = from.f32(&key)?;
                    let shape = from
                        .tensors
                        .get(&key)
                        .map_or_else(|| vec![t.len()], |t| t.shape.clone());
                    to.insert_f32(&key, shape, t.to_vec());
                }
            }
        }
        Ok(())
    }

    /// The key of embedding `j`'s table in a tensor store.
    pub fn embedding_key(j: usize) -> String {
        format!("embeddings.{j}.weight")
    }

    /// Copies every embedding table from `from` into `to`: they stay f32 in every
    /// compressed form (a lookup has no product to quantize).
    pub fn copy_embeddings(&self, from: &TensorStore, to: &mut TensorStore) -> Result<()> {
        for (j, e) in self.embeddings.iter().enumerate() {
            let key = Self::embedding_key(j);
            to.insert_f32(&key, vec![e.rows, e.dim], from.f32(&key)?.to_vec());
        }
        Ok(())
    }

    /// Whether feature `i` is an embedded code.
    pub fn is_embedded(&self, i: usize) -> bool {
        self.embeddings.iter().any(|e| e.feature == i)
    }

    /// True when some layer has a norm.
    pub fn has_norm(&self) -> bool {
        self.layers.iter().any(|l| l.norm.is_some())
    }

    /// Width of the output layer.
    pub fn output_dim(&self) -> usize {
        self.layers
            .last()
            .map(|l| l.out_dim)
            .unwrap_or(self.input_dim)
    }

    /// Number of weights, biases, norm parameters, embedding values and convolution
    /// weights.
    pub fn n_params(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.in_dim * l.out_dim + l.out_dim * if l.norm.is_some() { 3 } else { 1 })
            .sum::<usize>()
            + self
                .embeddings
                .iter()
                .map(|e| e.rows * e.dim)
                .sum::<usize>()
            + self.conv_params()
    }

    /// Number of convolution weights and biases.
    pub fn conv_params(&self) -> usize {
        let Some(image) = self.image else {
            return 0;
        };
        let mut channels = image.channels;
        let mut n = 0;
        for step in &self.conv {
            match *step {
                ConvStep::Conv2d {
                    channels: out,
                    kernel,
                    ..
                } => {
                    n += channels * kernel * kernel * out + out;
                    channels = out;
                }
                // gamma and beta (the running statistics are not learned)
                ConvStep::BatchNorm { .. } => n += 2 * channels,
                _ => {}
            }
        }
        n
    }

    /// Checks that layer widths chain, that every embedding names its own feature and
    /// that the convolutional steps fit the image.
    pub fn validate(&self) -> Result<()> {
        if let Some(image) = self.image {
            if image.len() != self.input_dim || image.is_empty() {
                return Err(CoreError::Invalid(format!(
                    "the image is {image} = {} values, the model takes {} features",
                    image.len(),
                    self.input_dim
                )));
            }
            if !self.embeddings.is_empty() {
                return Err(CoreError::Invalid(
                    "a model reads an image or embeds categories, not both".into(),
                ));
            }
            if let Err((i, m)) = self.conv_shapes() {
                return Err(CoreError::Invalid(format!(
                    "conv[{i}] ({}): {m}",
                    self.conv[i].op()
                )));
            }
        } else if !self.conv.is_empty() {
            return Err(CoreError::Invalid(
                "convolutional steps need the image's shape (`image`)".into(),
            ));
        }
        for (j, e) in self.embeddings.iter().enumerate() {
            if e.feature >= self.input_dim || e.rows == 0 || e.dim == 0 {
                return Err(CoreError::Invalid(format!(
                    "embedding {j} reads feature {} of {} with a {} x {} table; it needs a feature index below {} and a table of at least 1 x 1",
                    e.feature, self.input_dim, e.rows, e.dim, self.input_dim
                )));
            }
            if self.embeddings[..j].iter().any(|o| o.feature == e.feature) {
                return Err(CoreError::Invalid(format!(
                    "feature {} is embedded twice (embeddings {j} and an earlier one)",
                    e.feature
                )));
            }
        }
        let mut prev = self.first_input_dim();
        for (i, l) in self.layers.iter().enumerate() {
            if l.in_dim != prev || l.out_dim == 0 {
                return Err(CoreError::Invalid(format!(
                    "layer {i} takes {} inputs but receives {prev} (or has no outputs)",
                    l.in_dim
                )));
            }
            prev = l.out_dim;
        }
        if self.layers.is_empty() {
            return Err(CoreError::Invalid("model has no layers".into()));
        }
        Ok(())
    }
}
