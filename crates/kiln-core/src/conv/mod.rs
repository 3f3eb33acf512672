//! Convolutional steps on `[channels, height, width]` images — conv2d (zero padding,
//! stride), max and average pooling, global average pooling, batch norm, dropout: their
//! description in a spec (`ConvStep`, `ImageShape`) and how each shrinks its input. The
//! reference forward pass lives beside it, one concern a file:
//! - `forward.rs`: the fp32 pass ONNX `Conv` / `MaxPool` / `AveragePool` /
//!   `GlobalAveragePool` compute (NCHW, floor mode; im2col into
//!   [`crate::forward::dense_f32`], the dense layers' loop and summation order);
//! - `int8.rs`: static int8 convolutions as ONNX `QLinearConv` computes them;
//! - `batch_norm.rs`: batch norms over running statistics, and the
//!   statistics training sets them to;
//! - `rounding.rs`: where an int8 CNN's quantized values may round otherwise in ONNX
//!   Runtime, and the reference's values after such a rounding (the parity rule).

mod batch_norm;
mod forward;
mod int8;
mod rounding;

pub use batch_norm::{BATCH_NORM_EPS, BatchNormStats, batch_norm_statistics};
pub use forward::{ConvSeen, conv_features, conv_features_traced, im2col};
pub use int8::{ConvInt8, INT8_MIN_IN_CHANNELS, conv_int8};
pub use rounding::{InexactSites, NEAR_BOUNDARY, inexact_sites, near_boundary_moves};

use crate::model::Activation;
use serde::{Deserialize, Serialize};

/// The shape of an image input: the features are its values channel by channel, row by
/// row (`[channels, height, width]`, as ONNX's NCHW without the batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageShape {
    /// Channels (1 for grayscale, 3 for colour).
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl ImageShape {
    /// Values in one image.
    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Whether the image holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Display for ImageShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} x {} x {}", self.channels, self.height, self.width)
    }
}

/// One step of a convolutional feature extractor on a `[channels, height, width]` image,
/// before the dense layers (which read its output flattened channel by channel, row by
/// row, as ONNX `Flatten` does). Sizes shrink as ONNX computes them (floor mode):
/// `out = (in + 2 padding - kernel) / stride + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ConvStep {
    /// `channels` filters of `kernel` x `kernel` over every input channel, with zero
    /// padding, plus a bias, then the activation. Weights `conv.<i>.weight`
    /// (`[in_channels · kernel · kernel, channels]`, rows ordered channel, kernel row,
    /// kernel column) and `conv.<i>.bias` (`[channels]`).
    Conv2d {
        /// Output channels.
        channels: usize,
        /// Side of the square kernel.
        kernel: usize,
        /// Step between windows (default 1).
        #[serde(default = "one")]
        stride: usize,
        /// Zeros added on every side (default 0).
        #[serde(default)]
        padding: usize,
        /// Activation after the bias (default `relu`).
        #[serde(default = "relu")]
        activation: Activation,
    },
    /// The largest value of each `kernel` x `kernel` window, per channel.
    MaxPool {
        /// Side of the square window.
        kernel: usize,
        /// Step between windows (default: the kernel, so windows do not overlap).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<usize>,
    },
    /// The mean of each `kernel` x `kernel` window, per channel.
    AvgPool {
        /// Side of the square window.
        kernel: usize,
        /// Step between windows (default: the kernel).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<usize>,
    },
    /// The mean of each whole channel: `[channels, 1, 1]`.
    GlobalAvgPool,
    /// Batch normalization of each channel, then the activation: in training over the
    /// batch's values of the channel (every image and position; biased variance), at
    /// inference over the running statistics `conv.<i>.running_mean` / `running_var`:
    /// `(x - mean) / sqrt(var + 1e-5) · gamma + beta`. Gamma is `conv.<i>.weight`
    /// (`[1, channels]`), beta `conv.<i>.bias` (`[channels]`). Not the first step.
    BatchNorm {
        /// Activation after the normalization (default `relu`; give the convolution
        /// before it `activation = "identity"`).
        #[serde(default = "relu")]
        activation: Activation,
    },
    /// In training, each value is zeroed with probability `rate` and the others scaled by
    /// `1 / (1 - rate)`; at inference (the reference, ONNX) it passes values unchanged.
    Dropout {
        /// Share of values zeroed in training, in [0, 1).
        rate: f32,
    },
}

fn one() -> usize {
    1
}

fn relu() -> Activation {
    Activation::Relu
}

/// A convolutional step's window on its input: kernel rows and columns, stride, padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Window rows.
    pub kh: usize,
    /// Window columns.
    pub kw: usize,
    /// Step between windows, both ways.
    pub stride: usize,
    /// Zeros added on every side.
    pub padding: usize,
}

impl ConvStep {
    /// The step's name as written in a pipeline file (`op`).
    pub fn op(&self) -> &'static str {
        match self {
            ConvStep::Conv2d { .. } => "conv2d",
            ConvStep::MaxPool { .. } => "max_pool",
            ConvStep::AvgPool { .. } => "avg_pool",
            ConvStep::GlobalAvgPool => "global_avg_pool",
            ConvStep::Dropout { .. } => "dropout",
            ConvStep::BatchNorm { .. } => "batch_norm",
        }
    }

    /// The step's window on an input of `shape` (the global pool's is the whole image).
    pub fn window(&self, shape: ImageShape) -> Window {
        let square = |k, stride, padding| Window {
            kh: k,
            kw: k,
            stride,
            padding,
        };
        match *self {
            ConvStep::Conv2d {
                kernel,
                stride,
                padding,
                ..
            } => square(kernel, stride, padding),
            ConvStep::MaxPool { kernel, stride } | ConvStep::AvgPool { kernel, stride } => {
                square(kernel, stride.unwrap_or(kernel), 0)
            }
            ConvStep::GlobalAvgPool => Window {
                kh: shape.height,
                kw: shape.width,
                stride: 1,
                padding: 0,
            },
            ConvStep::Dropout { .. } | ConvStep::BatchNorm { .. } => square(1, 1, 0),
        }
    }

    /// Why the step cannot follow the steps `before` it, if it cannot: a batch norm needs
    /// a step before it other than dropout (the input it would normalize is the
    /// preprocessing's job).
    pub fn placement(&self, before: &[ConvStep]) -> std::result::Result<(), String> {
        if matches!(self, ConvStep::BatchNorm { .. })
            && before.iter().all(|s| matches!(s, ConvStep::Dropout { .. }))
        {
            return Err("a batch norm normalizes what a step before it computed; normalize the input with the preprocessing steps (`standardize`, `scale`) instead".into());
        }
        Ok(())
    }

    /// The output shape on an input of `shape`, or why the step does not fit it.
    pub fn output(&self, shape: ImageShape) -> std::result::Result<ImageShape, String> {
        match *self {
            ConvStep::Dropout { rate } if !(0.0..1.0).contains(&rate) => {
                return Err(format!("rate = {rate}: use a share in [0, 1)"));
            }
            ConvStep::Dropout { .. } | ConvStep::BatchNorm { .. } => return Ok(shape),
            _ => {}
        }
        let w = self.window(shape);
        if w.kh == 0 || w.kw == 0 || w.stride == 0 {
            return Err("kernel and stride must be at least 1".into());
        }
        if !matches!(self, ConvStep::GlobalAvgPool) && (w.kh > 64 || w.padding >= w.kh) {
            return Err(format!(
                "a {} x {} kernel with padding {}: kiln takes kernels up to 64 and padding below the kernel",
                w.kh, w.kw, w.padding
            ));
        }
        let (h, wd) = (shape.height + 2 * w.padding, shape.width + 2 * w.padding);
        if h < w.kh || wd < w.kw {
            return Err(format!(
                "its {} x {} window is larger than its {} x {} input{}; remove a pooling or strided step before it, or pad",
                w.kh,
                w.kw,
                shape.height,
                shape.width,
                if w.padding > 0 { " (padded)" } else { "" }
            ));
        }
        let channels = match *self {
            ConvStep::Conv2d { channels, .. } => channels,
            _ => shape.channels,
        };
        if channels == 0 {
            return Err("a convolution needs at least 1 output channel".into());
        }
        Ok(ImageShape {
            channels,
            height: (h - w.kh) / w.stride + 1,
            width: (wd - w.kw) / w.stride + 1,
        })
    }
}
