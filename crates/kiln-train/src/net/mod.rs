//! A multi-layer perceptron sized at run time: dfdx tensors with dynamic shapes
//! (`Tensor<(usize, usize), f32, D>`), generic over the device (CPU, or CUDA with the
//! `cuda` feature), with dfdx's optimizer kernels applied to each parameter.
//!
//! This file holds the network itself (its layers, construction and forward / backward
//! pass over a batch); the rest lives beside it, one concern a file:
//! - [`backend`]: what kiln needs of a device, and the CPU's two half-batch step;
//! - [`conv`]: the convolutional steps of an image model (dfdx's gather, matmul,
//!   reshape and max / mean on every device; the CPU's own ops where it has them);
//! - [`input_grad`]: the CPU's input-layer product whose backward computes dW only;
//! - [`gather_op`]: the CPU's window gather of the convolutional steps as one tape op;
//! - [`conv_op`]: the CPU's convolution product and max pool as tape ops, image by
//!   image with no window matrix;
//! - [`scratch`]: host buffers those ops reuse, per thread;
//! - [`dropout`](mod@dropout): dropout masks drawn from the epoch's random stream;
//! - [`optim`]: optimizer steps (dfdx's Adam / SGD kernels, gradient clipping);
//! - [`cpu_adam`]: kiln's CPU Adam (dfdx's arithmetic bit for bit, on host copies);
//! - [`state`]: parameters and optimizer state in and out of tensor stores.

mod backend;
mod conv;
mod conv_op;
mod cpu_adam;
mod dropout;
mod gather_op;
#[cfg(test)]
pub(crate) mod gradcheck;
mod input_grad;
mod optim;
mod scratch;
mod state;

pub(crate) use backend::{Backend, WindowArgs, on_half_pool};
pub(crate) use dropout::MaskStream;

use crate::config::Loss;
use dfdx::prelude::*;
use dfdx::tensor::Gradients;
use kiln_core::{Activation, ConvStep, ModelSpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A run-time sized matrix on device `D`.
pub(crate) type Matrix<D> = Tensor<(usize, usize), f32, D>;

/// A run-time sized matrix carrying a gradient tape.
pub(crate) type Traced<D> = Tensor<(usize, usize), f32, D, OwnedTape<f32, D>>;

/// One batch on the host, row-major: `x` (rows × inputs), `y` (rows × outputs) and a
/// dropout mask (rows × width, 0 or 1/(1-p)) per hidden layer, or none without dropout.
/// With no masks given and a `mask_stream`, the pass draws its own masks from it (see
/// [`MaskStream`]).
pub(crate) struct Batch<'a> {
    pub x: &'a [f32],
    pub y: &'a [f32],
    pub rows: usize,
    pub masks: Vec<&'a [f32]>,
    pub mask_stream: Option<MaskStream>,
}

impl<'a> Batch<'a> {
    /// The first `at` rows and the rest.
    fn split(&self, at: usize) -> (Batch<'a>, Batch<'a>) {
        let cut = |v: &'a [f32]| {
            let w = v.len() / self.rows.max(1);
            v.split_at(at * w)
        };
        let ((xa, xb), (ya, yb)) = (cut(self.x), cut(self.y));
        let (ma, mb): (Vec<_>, Vec<_>) = self.masks.iter().map(|m| cut(m)).unzip();
        (
            Batch {
                x: xa,
                y: ya,
                rows: at,
                masks: ma,
                mask_stream: self.mask_stream.clone(),
            },
            Batch {
                x: xb,
                y: yb,
                rows: self.rows - at,
                masks: mb,
                mask_stream: self.mask_stream.clone().map(|m| MaskStream {
                    first_row: m.first_row + at,
                    ..m
                }),
            },
        )
    }
}

/// What one forward and backward pass over a batch gives: the gradients of the batch's
/// mean loss (`grads`, plus `more` when the batch ran in two halves: the second half's
/// share, added to `grads` by [`Mlp::update_with`] or [`Step::merge`]), that loss, and
/// the network's outputs (rows × outputs).
pub(crate) struct Step<D: Device<f32>> {
    pub grads: Gradients<f32, D>,
    pub more: Option<Gradients<f32, D>>,
    pub loss: f32,
    pub outputs: Vec<f32>,
}

impl<D: Backend> Step<D> {
    /// The gradients of the whole batch: `more` added into `grads`.
    #[cfg(test)]
    pub fn merge(mut self, net: &Mlp<D>) -> Result<Gradients<f32, D>, D::Err> {
        if let Some(more) = self.more.take() {
            D::merge_grads(net, &mut self.grads, more)?;
        }
        Ok(self.grads)
    }
}

/// How the loss of a batch is taken: its kind and the Huber delta.
#[derive(Clone, Copy)]
pub(crate) struct LossFn {
    pub kind: Loss,
    pub huber_delta: f32,
}

/// `z` through the activation, as kiln-core applies it.
fn activate<D: Device<f32>>(z: Traced<D>, act: Activation) -> Traced<D> {
    match act {
        Activation::Relu => z.relu(),
        Activation::Tanh => z.tanh(),
        Activation::Sigmoid => z.sigmoid(),
        Activation::LeakyRelu => z.prelu(kiln_core::LEAKY_RELU_ALPHA),
        Activation::Gelu => z.accurate_gelu(),
        Activation::Identity => z,
    }
}

/// A run-time sized vector on device `D`.
pub(crate) type Vector<D> = Tensor<(usize,), f32, D>;

/// One dense layer's parameters and optimizer state.
pub(crate) struct Layer<D: Device<f32>> {
    pub w: Matrix<D>,
    pub b: Vector<D>,
    /// Layer norm's gamma and beta, when the layer has a norm.
    pub norm: Option<(Vector<D>, Vector<D>)>,
    /// Optimizer moments (first, second) of each parameter, in [`Layer::NAMES`] order.
    state: Vec<[<D as Storage<f32>>::Vec; 2]>,
    /// Host copies of the parameters for kiln's CPU Adam (see `cpu_adam::adam_param`),
    /// empty until its first step. Whatever replaces a parameter tensor clears them
    /// ([`Mlp::set_weights`], [`Mlp::apply_masks`]).
    mirror: Vec<Option<Vec<f32>>>,
}

impl<D: Device<f32>> Layer<D> {
    /// A layer of `in_dim` x `out_dim` weights and `out_dim` biases drawn from
    /// `U(-1/sqrt(in_dim), 1/sqrt(in_dim))` (PyTorch's default for `Linear` and `Conv2d`,
    /// whose fan-in is `in · k · k`), with a norm at gamma 1 and beta 0 when `norm`.
    fn new(
        dev: &D,
        rng: &mut ChaCha8Rng,
        in_dim: usize,
        out_dim: usize,
        norm: bool,
    ) -> Result<Self, D::Err> {
        let bound = 1.0 / (in_dim as f32).sqrt();
        let w: Vec<f32> = (0..in_dim * out_dim)
            .map(|_| rng.gen_range(-bound..bound))
            .collect();
        let b: Vec<f32> = (0..out_dim).map(|_| rng.gen_range(-bound..bound)).collect();
        let norm = norm.then(|| {
            (
                dev.tensor_from_vec(vec![1.0; out_dim], (out_dim,)),
                dev.tensor_from_vec(vec![0.0; out_dim], (out_dim,)),
            )
        });
        let mut sizes = vec![in_dim * out_dim, out_dim];
        if norm.is_some() {
            sizes.extend([out_dim, out_dim]);
        }
        Ok(Layer {
            state: Self::zero_moments(dev, &sizes)?,
            w: dev.tensor_from_vec(w, (in_dim, out_dim)),
            b: dev.tensor_from_vec(b, (out_dim,)),
            norm,
            mirror: Vec::new(),
        })
    }

    /// Zeroed optimizer moments (first, second) for parameters of `sizes` values.
    fn zero_moments(
        dev: &D,
        sizes: &[usize],
    ) -> Result<Vec<[<D as Storage<f32>>::Vec; 2]>, D::Err> {
        sizes
            .iter()
            .map(|&n| {
                let alloc = || Storage::<f32>::try_alloc_len(dev, n);
                Ok([alloc()?, alloc()?])
            })
            .collect()
    }

    /// A batch norm's parameters: gamma 1 as a `1 x channels` weight, beta 0 as the bias.
    fn batch_norm(dev: &D, channels: usize) -> Result<Self, D::Err> {
        let state = Self::zero_moments(dev, &[channels, channels])?;
        Ok(Layer {
            w: dev.tensor_from_vec(vec![1.0; channels], (1, channels)),
            b: dev.tensor_from_vec(vec![0.0; channels], (channels,)),
            norm: None,
            state,
            mirror: Vec::new(),
        })
    }

    /// Parameter names in checkpoints and model files (`layers.<i>.<name>`): the weight,
    /// then the vectors of [`Layer::vectors`].
    const NAMES: [&'static str; 4] = ["weight", "bias", "norm_weight", "norm_bias"];

    /// The bias, then the norm's gamma and beta when there is a norm.
    fn vectors(&self) -> Vec<&Vector<D>> {
        let mut v = vec![&self.b];
        if let Some((g, b)) = &self.norm {
            v.extend([g, b]);
        }
        v
    }

    fn vectors_mut(&mut self) -> Vec<&mut Vector<D>> {
        let mut v = vec![&mut self.b];
        if let Some((g, b)) = &mut self.norm {
            v.extend([g, b]);
        }
        v
    }
}

/// One embedding table (`[rows, dim]`, see [`kiln_core::EmbeddingSpec`]) and its
/// optimizer state.
pub(crate) struct Table<D: Device<f32>> {
    pub w: Matrix<D>,
    /// Optimizer moments (first, second).
    state: [<D as Storage<f32>>::Vec; 2],
    /// Host copy of the table for kiln's CPU Adam (as [`Layer::mirror`]).
    mirror: Option<Vec<f32>>,
}

/// The network: embedding tables, convolutions, layers, and the dropout of the hidden
/// layers.
pub(crate) struct Mlp<D: Device<f32>> {
    pub embeddings: Vec<Table<D>>,
    /// Per convolutional step, its weight (`[in · k · k, out]`) and bias as a
    /// [`Layer`]; None for a pooling step.
    pub convs: Vec<Option<Layer<D>>>,
    /// Per convolutional step, a batch norm's running mean and variance (host values,
    /// set by [`Mlp::refresh_batch_norm`]); None for the other steps.
    pub bn_stats: Vec<Option<kiln_core::conv::BatchNormStats>>,
    pub layers: Vec<Layer<D>>,
    pub spec: ModelSpec,
    pub dropout: f32,
    step: i32,
    /// The gather indices of the convolutional steps per batch size (see
    /// [`conv::WindowCache`]).
    windows: conv::WindowCache<D>,
}

impl<D: Device<f32>> Mlp<D> {
    /// Builds the network of `spec` with PyTorch's default initialisation
    /// (`U(-1/sqrt(fan_in), 1/sqrt(fan_in))` for weights and biases, norms at gamma 1 and
    /// beta 0), drawn from a ChaCha8 stream seeded with `seed`, so weights do not depend on
    /// the device. Embedding tables come after the layers in that stream, with values of
    /// unit variance (`U(-√3, √3)`, as PyTorch's `Embedding` draws `N(0, 1)`).
    pub fn new(dev: &D, spec: ModelSpec, dropout: f32, seed: u64) -> Result<Self, D::Err> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let layers = spec
            .layers
            .iter()
            .map(|l| Layer::new(dev, &mut rng, l.in_dim, l.out_dim, l.norm.is_some()))
            .collect::<Result<Vec<_>, D::Err>>()?;
        let bound = 3f32.sqrt();
        let embeddings = spec
            .embeddings
            .iter()
            .map(|e| {
                let n = e.rows * e.dim;
                let t: Vec<f32> = (0..n).map(|_| rng.gen_range(-bound..bound)).collect();
                let alloc = || Storage::<f32>::try_alloc_len(dev, n);
                Ok(Table {
                    w: dev.tensor_from_vec(t, (e.rows, e.dim)),
                    state: [alloc()?, alloc()?],
                    mirror: None,
                })
            })
            .collect::<Result<_, D::Err>>()?;
        // after the layers and tables in the stream: models without convolutions keep
        // their weights
        let mut convs = Vec::with_capacity(spec.conv.len());
        let mut bn_stats = Vec::with_capacity(spec.conv.len());
        let mut channels = spec.image.map_or(0, |i| i.channels);
        for step in &spec.conv {
            bn_stats.push(
                matches!(step, ConvStep::BatchNorm { .. })
                    .then(|| (vec![0.0; channels], vec![1.0; channels])),
            );
            convs.push(match *step {
                ConvStep::Conv2d {
                    channels: out,
                    kernel,
                    ..
                } => {
                    let k2 = channels * kernel * kernel;
                    channels = out;
                    Some(Layer::new(dev, &mut rng, k2, out, false)?)
                }
                // gamma 1 (as a 1 x channels weight) and beta 0, as PyTorch starts them
                ConvStep::BatchNorm { .. } => Some(Layer::batch_norm(dev, channels)?),
                _ => None,
            });
        }
        Ok(Mlp {
            embeddings,
            convs,
            bn_stats,
            layers,
            spec,
            dropout,
            step: 0,
            windows: conv::WindowCache::default(),
        })
    }

    /// Every parameter set with a weight and a bias: the convolutions', then the dense
    /// layers'.
    pub(crate) fn all_layers(&self) -> impl Iterator<Item = &Layer<D>> {
        self.convs.iter().flatten().chain(&self.layers)
    }

    /// [`Mlp::all_layers`], mutable.
    pub(crate) fn all_layers_mut(&mut self) -> impl Iterator<Item = &mut Layer<D>> {
        self.convs
            .iter_mut()
            .flatten()
            .chain(self.layers.iter_mut())
    }

    /// Forward pass with a gradient tape (for the parameters only; the input gets no
    /// gradient). `masks` are the dropout masks of [`Mlp::mask_sites`] (see
    /// [`Mlp::draw_masks`]); empty means no dropout.
    pub fn forward_train(&self, x: Matrix<D>, masks: &[&[f32]]) -> Traced<D>
    where
        D: Backend,
    {
        let Some((first, rest)) = self.layers.split_first() else {
            return x.traced(Gradients::leaky());
        };
        let (masks, conv_masks) = masks.split_at(self.hidden_mask_sites().min(masks.len()));
        let z = if self.spec.image.is_some() {
            self.conv_stack(x, conv_masks).matmul(first.w.clone())
        } else if self.embeddings.is_empty() {
            D::input_matmul(x, &first.w)
        } else {
            self.embed(x).matmul(first.w.clone())
        };
        let mut h = self.finish_layer(0, z, masks);
        for (i, l) in rest.iter().enumerate() {
            h = self.finish_layer(i + 1, h.matmul(l.w.clone()), masks);
        }
        h
    }

    /// The first layer's input on a tape: the features that are not embedded, then each
    /// embedding's rows looked up by the codes (dfdx's `gather`, whose backward adds each
    /// row's gradient into the table), as `kiln_core::forward::embed_input` computes it.
    fn embed(&self, x: Matrix<D>) -> Traced<D> {
        let dev = x.device().clone();
        let (rows, d) = *x.shape();
        let host = x.as_vec();
        let kept: Vec<usize> = (0..d).filter(|&i| !self.spec.is_embedded(i)).collect();
        let plain: Vec<f32> = host
            .chunks_exact(d.max(1))
            .flat_map(|r| kept.iter().map(|&i| r[i]))
            .collect();
        let mut h = dev
            .tensor_from_vec(plain, (rows, kept.len()))
            .traced(Gradients::leaky());
        for (e, t) in self.spec.embeddings.iter().zip(&self.embeddings) {
            let idx: Vec<usize> = host
                .chunks_exact(d.max(1))
                .map(|r| e.row(r[e.feature]))
                .collect();
            let looked: Traced<D> =
                t.w.clone()
                    .traced(Gradients::leaky())
                    .gather(dev.tensor_from_vec(idx, (rows,)));
            h = (h, looked).concat_along(Axis::<1>);
        }
        h
    }

    /// Layer `i` after its product `z = h · w`: bias, activation, dropout mask.
    fn finish_layer(&self, i: usize, z: Traced<D>, masks: &[&[f32]]) -> Traced<D> {
        let (l, s) = (&self.layers[i], &self.spec.layers[i]);
        let rows = z.shape().0;
        let shape = (rows, s.out_dim);
        let mut z = z + l
            .b
            .clone()
            .broadcast_like::<(usize, usize), Axis<0>>(&shape);
        if let Some((gamma, beta)) = &l.norm {
            z = z.normalize::<Axis<1>>(kiln_core::LAYER_NORM_EPS)
                * gamma
                    .clone()
                    .broadcast_like::<(usize, usize), Axis<0>>(&shape)
                + beta
                    .clone()
                    .broadcast_like::<(usize, usize), Axis<0>>(&shape);
        }
        let a = activate(z, s.activation);
        match masks.get(i) {
            Some(m) => {
                let dev = a.device().clone();
                a * dev.tensor_from_vec(m.to_vec(), (rows, s.out_dim))
            }
            None => a,
        }
    }

    /// Forward and backward of `batch`: the gradients of `scale` × its mean loss, the
    /// mean loss itself and the outputs.
    pub fn pass(&self, dev: &D, batch: &Batch, loss: LossFn, scale: f32) -> Result<Step<D>, D::Err>
    where
        D: Backend,
    {
        let w = batch.x.len() / batch.rows.max(1);
        let k = batch.y.len() / batch.rows.max(1);
        let x = dev.try_tensor_from_vec(batch.x.to_vec(), (batch.rows, w))?;
        let y = dev.try_tensor_from_vec(batch.y.to_vec(), (batch.rows, k))?;
        let drawn = match (batch.masks.is_empty(), &batch.mask_stream) {
            (true, Some(stream)) => self.draw_masks_at(stream, batch.rows),
            _ => Vec::new(),
        };
        let masks: Vec<&[f32]> = if drawn.is_empty() {
            batch.masks.clone()
        } else {
            drawn.iter().map(Vec::as_slice).collect()
        };
        let out = self.forward_train(x, &masks);
        let outputs = out.retaped::<NoneTape>().as_vec();
        let l = crate::batch_loss(loss.kind, out, y, loss.huber_delta);
        let value = l.retaped::<NoneTape>().as_vec()[0];
        let grads = (l * scale).backward();
        Ok(Step {
            grads,
            more: None,
            loss: value,
            outputs,
        })
    }

    /// Optimizer steps taken so far.
    pub fn step(&self) -> i32 {
        self.step
    }

    /// Multiplies each layer's weights by its mask (1 keeps, 0 prunes), where one is given.
    pub fn apply_masks(&mut self, masks: &[Option<Matrix<D>>]) {
        for (l, m) in self.layers.iter_mut().zip(masks) {
            if let Some(m) = m {
                l.mirror.clear();
                l.w = l.w.clone() * m.clone();
            }
        }
    }
}
