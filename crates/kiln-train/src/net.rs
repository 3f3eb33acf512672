//! A multi-layer perceptron sized at run time: dfdx tensors with dynamic shapes
//! (`Tensor<(usize, usize), f32, D>`), generic over the device (CPU, or CUDA with the
//! `cuda` feature), with dfdx's optimizer kernels applied to each parameter.

use crate::config::{Loss, OptimizerConfig, OptimizerKind};
use dfdx::prelude::*;
use dfdx::tensor::Gradients;
use kiln_core::{Activation, ModelSpec, TensorStore};
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

/// Where a batch's dropout masks come from: the epoch's random stream at the batch's
/// first mask value. The masks of the whole batch (`rows` rows) lie there one layer
/// after the other, row after row, exactly as [`Mlp::draw_masks`] draws them; a part of
/// the batch starting at `first_row` seeks to its own rows, so the two halves of a batch
/// draw their masks at once, on their own threads, and get the very values one thread
/// drawing the whole batch would.
#[derive(Clone)]
pub(crate) struct MaskStream {
    pub rng: ChaCha8Rng,
    pub rows: usize,
    pub first_row: usize,
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

/// What kiln needs of a device beyond dfdx's `Device`: host copies of buffers (for
/// checkpoints), the input layer's product, and how a batch's gradients are computed.
pub(crate) trait Backend: Device<f32> {
    /// The buffer's values, or None when the device cannot copy them.
    fn download(&self, v: &<Self as Storage<f32>>::Vec) -> Option<Vec<f32>>;
    /// A device buffer holding `v`.
    fn upload(&self, v: &[f32]) -> Option<<Self as Storage<f32>>::Vec>;

    /// `x · w` for the input layer, on a fresh tape. The default is dfdx's matmul, whose
    /// backward computes the gradient of `x` too.
    fn input_matmul(x: Matrix<Self>, w: &Matrix<Self>) -> Traced<Self> {
        x.traced(Gradients::leaky()).matmul(w.clone())
    }

    /// Forward and backward of `batch` in one pass (the default), or however the device
    /// computes it best, giving the same gradients up to rounding.
    fn batch_step(
        &self,
        net: &Mlp<Self>,
        batch: &Batch,
        loss: LossFn,
    ) -> Result<Step<Self>, Self::Err> {
        net.pass(self, batch, loss, 1.0)
    }

    /// Adds `more` into `grads` for every parameter of `net` (only reached on devices
    /// whose `batch_step` returns two sets of gradients).
    fn merge_grads(
        _net: &Mlp<Self>,
        _grads: &mut Gradients<f32, Self>,
        _more: Gradients<f32, Self>,
    ) -> Result<(), Self::Err> {
        Ok(())
    }

    /// One Adam step on every parameter of `net` with the gradients `grads` + `more`, by
    /// the device's own kernel; None when it has none (dfdx's kernel runs instead).
    fn adam_step(
        _net: &mut Mlp<Self>,
        _grads: &mut Gradients<f32, Self>,
        _more: Option<&mut Gradients<f32, Self>>,
        _cfg: &AdamConfig,
        _t: i32,
    ) -> Option<Result<(), Self::Err>> {
        None
    }
}

impl Backend for Cpu {
    fn download(&self, v: &<Self as Storage<f32>>::Vec) -> Option<Vec<f32>> {
        Some(v.to_vec())
    }
    fn upload(&self, v: &[f32]) -> Option<<Self as Storage<f32>>::Vec> {
        let mut out = Storage::<f32>::try_alloc_len(self, v.len()).ok()?;
        out.copy_from_slice(v);
        Some(out)
    }

    /// Only `dW = xᵀ · dZ` on the way back: the data needs no gradient, and dfdx's matmul
    /// would also compute `dX = dZ · wᵀ`, as much work as the forward product (for
    /// 784-128-64-10 about 30 % of a training step).
    fn input_matmul(x: Matrix<Cpu>, w: &Matrix<Cpu>) -> Traced<Cpu> {
        let z = x.clone().matmul(w.clone());
        let (z_key, w_key) = (z.clone(), w.clone());
        let mut tape = OwnedTape::<f32, Cpu>::default();
        tape.add_backward_op(move |grads| {
            grads.try_alloc_for(&z_key)?;
            let dz = grads.get(&z_key);
            let dw = x.permute::<(usize, usize), Axes2<1, 0>>().try_matmul(dz)?;
            // `w` takes part in this tape through this product only (the tape starts
            // here, and the first layer's weight is used nowhere else), so its gradient
            // is exactly dW: copied in, not added (dfdx's element-wise `as_vec` costs as
            // much as the product itself)
            dw.copy_into(grads.get_or_alloc_mut(&w_key)?);
            Ok(())
        });
        z.put_tape(tape)
    }

    /// Every batch in two fixed halves, each through its own forward and backward pass
    /// with single-threaded matrix products, their gradients summed in a fixed order. At
    /// two or more threads the halves run at once on two one-thread pools; at one thread
    /// one after the other. The arithmetic is the same either way, so the weights are
    /// bit-identical at any thread count; and at batch 64 two sequential products on two
    /// cores beat one product split over both (dfdx hands every product to all threads).
    fn batch_step(
        &self,
        net: &Mlp<Cpu>,
        batch: &Batch,
        loss: LossFn,
    ) -> Result<Step<Cpu>, CpuError> {
        let n = batch.rows;
        if n < 2 {
            return net.pass(self, batch, loss, 1.0);
        }
        let (a, b) = batch.split(n / 2);
        let (sa, sb) = (a.rows as f32 / n as f32, b.rows as f32 / n as f32);
        let (ra, rb) = in_halves(
            || net.pass(self, &a, loss, sa),
            || net.pass(self, &b, loss, sb),
        );
        let (mut sa_, sb_) = (ra?, rb?);
        sa_.outputs.extend(sb_.outputs);
        Ok(Step {
            grads: sa_.grads,
            more: Some(sb_.grads),
            loss: (f64::from(sa_.loss) * a.rows as f64 + f64::from(sb_.loss) * b.rows as f64)
                as f32
                / n as f32,
            outputs: sa_.outputs,
        })
    }

    fn merge_grads(
        net: &Mlp<Cpu>,
        grads: &mut Gradients<f32, Cpu>,
        mut more: Gradients<f32, Cpu>,
    ) -> Result<(), CpuError> {
        for l in &net.layers {
            add_grad(grads, &mut more, &l.w)?;
            for v in l.vectors() {
                add_grad(grads, &mut more, v)?;
            }
        }
        Ok(())
    }

    /// dfdx's Adam arithmetic, element for element (so the weights are bit-identical to
    /// its kernel's), with three differences: the bias corrections are computed once per
    /// step instead of once per element, the second half-batch's gradient is added on
    /// the way (no separate pass), and a large parameter is updated in two halves at once
    /// on the two pools. Elementwise work, so the result does not depend on the split.
    fn adam_step(
        net: &mut Mlp<Cpu>,
        grads: &mut Gradients<f32, Cpu>,
        mut more: Option<&mut Gradients<f32, Cpu>>,
        cfg: &AdamConfig,
        t: i32,
    ) -> Option<Result<(), CpuError>> {
        let k = AdamConsts::new(cfg, t);
        let mut run = || -> Result<(), CpuError> {
            for l in &mut net.layers {
                l.mirror.resize_with(l.state.len(), || None);
                let (sw, rest) = l.state.split_at_mut(1);
                let (mw, mrest) = l.mirror.split_at_mut(1);
                adam_param(
                    &k,
                    &mut l.w,
                    &mut sw[0],
                    grads,
                    more.as_deref_mut(),
                    &mut mw[0],
                )?;
                let mut vectors = vec![&mut l.b];
                if let Some((g, b)) = &mut l.norm {
                    vectors.extend([g, b]);
                }
                for ((p, st), mi) in vectors.into_iter().zip(rest).zip(mrest) {
                    adam_param(&k, p, st, grads, more.as_deref_mut(), mi)?;
                }
            }
            Ok(())
        };
        Some(run())
    }
}

/// The per-step constants of dfdx's Adam kernel, in f32 as it computes them.
struct AdamConsts {
    b1: f32,
    b2: f32,
    /// `1 / (1 - b1^t)` and `1 / (1 - b2^t)`.
    c1: f32,
    c2: f32,
    eps: f32,
    lr: f32,
    l2: Option<f32>,
    decoupled: Option<f32>,
}

impl AdamConsts {
    fn new(cfg: &AdamConfig, t: i32) -> Self {
        let [b1, b2] = cfg.betas.map(|b| b as f32);
        AdamConsts {
            b1,
            b2,
            c1: (1.0 - b1.powi(t)).recip(),
            c2: (1.0 - b2.powi(t)).recip(),
            eps: cfg.eps as f32,
            lr: cfg.lr as f32,
            l2: match cfg.weight_decay {
                Some(WeightDecay::L2(wd)) => Some(wd as f32),
                _ => None,
            },
            decoupled: match cfg.weight_decay {
                Some(WeightDecay::Decoupled(wd)) => Some((wd * cfg.lr) as f32),
                _ => None,
            },
        }
    }

    /// Updates `p`, `m`, `v` in place with the gradient `ga` (+ `gb`).
    fn apply(&self, p: &mut [f32], m: &mut [f32], v: &mut [f32], ga: &[f32], gb: Option<&[f32]>) {
        // one monomorphic loop per case over slices of one length, so that the compiler
        // drops the bounds checks and vectorizes each
        let n = p.len();
        let (m, v, ga) = (&mut m[..n], &mut v[..n], &ga[..n]);
        match (gb, self.l2, self.decoupled) {
            (Some(gb), None, None) => {
                let gb = &gb[..n];
                for i in 0..n {
                    p[i] -= self.step(&mut m[i], &mut v[i], ga[i] + gb[i]);
                }
            }
            (None, None, None) => {
                for i in 0..n {
                    p[i] -= self.step(&mut m[i], &mut v[i], ga[i]);
                }
            }
            (gb, l2, dec) => {
                for i in 0..n {
                    let mut g = match gb {
                        Some(b) => ga[i] + b[i],
                        None => ga[i],
                    };
                    if let Some(wd) = l2 {
                        g += wd * p[i];
                    }
                    let mut u = self.step(&mut m[i], &mut v[i], g);
                    if let Some(wd) = dec {
                        u += wd * p[i];
                    }
                    p[i] -= u;
                }
            }
        }
    }

    /// Moves the moments by gradient `g` and returns the step `lr · m̂ / (√v̂ + eps)`.
    #[inline(always)]
    fn step(&self, m: &mut f32, v: &mut f32, g: f32) -> f32 {
        *m = *m * self.b1 + g * (1.0 - self.b1);
        *v = *v * self.b2 + g * g * (1.0 - self.b2);
        let m_hat = *m * self.c1;
        let v_hat = *v * self.c2;
        self.lr * m_hat / (v_hat.sqrt() + self.eps)
    }
}

/// Parameters at least this large are updated in two halves at once.
const PARALLEL_ADAM: usize = 16 * 1024;

/// One Adam step on parameter `p`, computed on its host copy `mirror` (taken from the
/// tensor when there is none) and copied into the tensor: dfdx gives no mutable view of
/// a tensor's data, and keeping the copy saves copying 0.4 MB out of the input layer's
/// weights every step.
fn adam_param<S: Shape>(
    k: &AdamConsts,
    p: &mut Tensor<S, f32, Cpu>,
    [m, v]: &mut [<Cpu as Storage<f32>>::Vec; 2],
    grads: &mut Gradients<f32, Cpu>,
    more: Option<&mut Gradients<f32, Cpu>>,
    mirror: &mut Option<Vec<f32>>,
) -> Result<(), CpuError> {
    let scratch = match mirror.take() {
        Some(host) if host.len() == m.len() => mirror.insert(host),
        _ => {
            let mut host = vec![0.0; m.len()];
            p.copy_into(&mut host);
            mirror.insert(host)
        }
    };
    let ga: &[f32] = grads.get_or_alloc_mut(p)?;
    let gb: Option<&[f32]> = match more {
        Some(g) => Some(g.get_or_alloc_mut(p)?),
        None => None,
    };
    let (ps, ms, vs): (&mut [f32], &mut [f32], &mut [f32]) = (scratch, m, v);
    if ps.len() >= PARALLEL_ADAM {
        let h = ps.len() / 2;
        let (p0, p1) = ps.split_at_mut(h);
        let (m0, m1) = ms.split_at_mut(h);
        let (v0, v1) = vs.split_at_mut(h);
        let (a0, a1) = ga.split_at(h);
        let (b0, b1) = match gb {
            Some(b) => {
                let (x, y) = b.split_at(h);
                (Some(x), Some(y))
            }
            None => (None, None),
        };
        in_halves(
            || k.apply(p0, m0, v0, a0, b0),
            || k.apply(p1, m1, v1, a1, b1),
        );
    } else {
        k.apply(ps, ms, vs, ga, gb);
    }
    p.copy_from(ps);
    Ok(())
}

/// Runs `a` and `b` at once on the two one-thread pools when rayon has two or more
/// threads (this thread waits, blocked, while the cores run the halves), else one after
/// the other. Either way each runs single-threaded, so the arithmetic is the same.
fn in_halves<A: Send, B: Send>(
    a: impl FnOnce() -> A + Send,
    b: impl FnOnce() -> B + Send,
) -> (A, B) {
    match half_pools() {
        // on pool a's thread (see `on_half_pool`) `a` runs right here
        Some((pa, pb))
            if pa.current_thread_index().is_some() || rayon::current_num_threads() > 1 =>
        {
            let mut rb = None;
            let mut b = Some(b);
            let ra = pb.in_place_scope(|s| {
                let (rb, b) = (&mut rb, &mut b);
                s.spawn(move |_| {
                    if let Some(b) = b.take() {
                        *rb = Some(b());
                    }
                });
                pa.install(a)
            });
            match (rb, b) {
                (Some(r), _) => (ra, r),
                (None, Some(b)) => (ra, b()),
                (None, None) => unreachable!("the spawned half ran or did not"),
            }
        }
        _ => (a(), b()),
    }
}

/// Runs `f` (a training loop) on the first half's pool thread when rayon has two or more
/// threads: the first half of every batch then runs inline on that thread, and only the
/// second half's thread is woken per step (instead of both halves' threads, with this
/// thread sleeping in between).
pub(crate) fn on_half_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match half_pools() {
        Some((pa, _))
            if rayon::current_num_threads() > 1 && pa.current_thread_index().is_none() =>
        {
            pa.install(f)
        }
        _ => f(),
    }
}

/// Two one-thread rayon pools for the two halves of a batch (None if the threads cannot
/// be started: the halves then run one after the other).
fn half_pools() -> Option<&'static (rayon::ThreadPool, rayon::ThreadPool)> {
    static POOLS: std::sync::OnceLock<Option<(rayon::ThreadPool, rayon::ThreadPool)>> =
        std::sync::OnceLock::new();
    POOLS
        .get_or_init(|| {
            let pool = || rayon::ThreadPoolBuilder::new().num_threads(1).build().ok();
            Some((pool()?, pool()?))
        })
        .as_ref()
}

/// Adds `b`'s gradient of `t` to `a`'s.
fn add_grad<S: Shape>(
    a: &mut Gradients<f32, Cpu>,
    b: &mut Gradients<f32, Cpu>,
    t: &Tensor<S, f32, Cpu>,
) -> Result<(), CpuError> {
    let gb = b.get_or_alloc_mut(t)?;
    let ga = a.get_or_alloc_mut(t)?;
    for (x, y) in ga.iter_mut().zip(gb.iter()) {
        *x += *y;
    }
    Ok(())
}

/// CUDA runs do not checkpoint yet: the optimizer moments stay on the device.
#[cfg(feature = "cuda")]
impl Backend for Cuda {
    fn download(&self, _: &<Self as Storage<f32>>::Vec) -> Option<Vec<f32>> {
        None
    }
    fn upload(&self, _: &[f32]) -> Option<<Self as Storage<f32>>::Vec> {
        None
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
    /// Host copies of the parameters for kiln's CPU Adam (see `adam_param`), empty until
    /// its first step. Whatever replaces a parameter tensor clears them
    /// ([`Mlp::set_weights`], [`Mlp::apply_masks`]).
    mirror: Vec<Option<Vec<f32>>>,
}

impl<D: Device<f32>> Layer<D> {
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

/// How parameters move: dfdx's Adam (with AdamW's decoupled decay) or SGD.
enum Rule {
    Adam(AdamConfig),
    Sgd(SgdConfig),
}

impl Rule {
    /// Moves `p` by its gradient in `grads`, with moments `m`.
    fn apply<S: Shape, D: Device<f32>>(
        &self,
        step: i32,
        p: &mut Tensor<S, f32, D>,
        [m, v]: &mut [<D as Storage<f32>>::Vec; 2],
        grads: &mut Gradients<f32, D>,
    ) -> Result<(), D::Err> {
        let g = grads.get_or_alloc_mut(p)?;
        match self {
            Rule::Adam(c) => c.try_update(step, p, m, v, g),
            Rule::Sgd(c) => c.try_update(p, m, g),
        }
    }
}

/// The network: layers plus the activation and dropout of the hidden layers.
pub(crate) struct Mlp<D: Device<f32>> {
    pub layers: Vec<Layer<D>>,
    pub spec: ModelSpec,
    pub dropout: f32,
    step: i32,
}

impl<D: Device<f32>> Mlp<D> {
    /// Builds the network of `spec` with PyTorch's default initialisation
    /// (`U(-1/sqrt(fan_in), 1/sqrt(fan_in))` for weights and biases, norms at gamma 1 and
    /// beta 0), drawn from a ChaCha8 stream seeded with `seed`, so weights do not depend on
    /// the device.
    pub fn new(dev: &D, spec: ModelSpec, dropout: f32, seed: u64) -> Result<Self, D::Err> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut layers = Vec::new();
        for l in &spec.layers {
            let bound = 1.0 / (l.in_dim as f32).sqrt();
            let w: Vec<f32> = (0..l.in_dim * l.out_dim)
                .map(|_| rng.gen_range(-bound..bound))
                .collect();
            let b: Vec<f32> = (0..l.out_dim)
                .map(|_| rng.gen_range(-bound..bound))
                .collect();
            let norm = l.norm.map(|_| {
                (
                    dev.tensor_from_vec(vec![1.0; l.out_dim], (l.out_dim,)),
                    dev.tensor_from_vec(vec![0.0; l.out_dim], (l.out_dim,)),
                )
            });
            let mut sizes = vec![l.in_dim * l.out_dim, l.out_dim];
            if norm.is_some() {
                sizes.extend([l.out_dim, l.out_dim]);
            }
            let state = sizes
                .into_iter()
                .map(|n| {
                    let alloc = || Storage::<f32>::try_alloc_len(dev, n);
                    Ok([alloc()?, alloc()?])
                })
                .collect::<Result<_, D::Err>>()?;
            layers.push(Layer {
                w: dev.tensor_from_vec(w, (l.in_dim, l.out_dim)),
                b: dev.tensor_from_vec(b, (l.out_dim,)),
                norm,
                state,
                mirror: Vec::new(),
            });
        }
        Ok(Mlp {
            layers,
            spec,
            dropout,
            step: 0,
        })
    }

    /// Dropout masks for a batch of `rows`: one per hidden layer (rows × width, 0 with
    /// probability p, else 1/(1-p)), drawn from kiln's seeded stream (not the device's), so
    /// a resumed run draws the same ones. None without dropout.
    #[cfg(test)]
    pub fn draw_masks(&self, rows: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<f32>> {
        if self.dropout <= 0.0 {
            return Vec::new();
        }
        let p = self.dropout;
        let keep = 1.0 / (1.0 - p);
        let hidden = self.spec.layers.len().saturating_sub(1);
        self.spec.layers[..hidden]
            .iter()
            .map(|s| {
                (0..rows * s.out_dim)
                    .map(|_| if rng.r#gen::<f32>() < p { 0.0 } else { keep })
                    .collect()
            })
            .collect()
    }

    /// Mask values one batch of `rows` rows takes from the random stream (what
    /// [`Mlp::draw_masks`] draws): rows × the hidden layers' widths.
    pub fn mask_values(&self, rows: usize) -> u128 {
        if self.dropout <= 0.0 {
            return 0;
        }
        let hidden = self.spec.layers.len().saturating_sub(1);
        let widths: usize = self.spec.layers[..hidden].iter().map(|s| s.out_dim).sum();
        (rows * widths) as u128
    }

    /// The masks of `rows` rows of a batch drawn from `stream` (see [`MaskStream`]).
    fn draw_masks_at(&self, stream: &MaskStream, rows: usize) -> Vec<Vec<f32>> {
        if self.dropout <= 0.0 {
            return Vec::new();
        }
        let (p, keep) = (self.dropout, 1.0 / (1.0 - self.dropout));
        let hidden = self.spec.layers.len().saturating_sub(1);
        let mut rng = stream.rng.clone();
        let mut layer_start = stream.rng.get_word_pos();
        self.spec.layers[..hidden]
            .iter()
            .map(|s| {
                // one u32 word per value (rand's f32 takes one)
                rng.set_word_pos(layer_start + (stream.first_row * s.out_dim) as u128);
                layer_start += (stream.rows * s.out_dim) as u128;
                (0..rows * s.out_dim)
                    .map(|_| if rng.r#gen::<f32>() < p { 0.0 } else { keep })
                    .collect()
            })
            .collect()
    }

    /// Forward pass with a gradient tape (for the parameters only; the input gets no
    /// gradient). `masks` are the hidden layers' dropout masks (see [`Mlp::draw_masks`]);
    /// empty means no dropout.
    pub fn forward_train(&self, x: Matrix<D>, masks: &[&[f32]]) -> Traced<D>
    where
        D: Backend,
    {
        let Some((first, rest)) = self.layers.split_first() else {
            return x.traced(Gradients::leaky());
        };
        let mut h = self.finish_layer(0, D::input_matmul(x, &first.w), masks);
        for (i, l) in rest.iter().enumerate() {
            h = self.finish_layer(i + 1, h.matmul(l.w.clone()), masks);
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
        let a = match s.activation {
            Activation::Relu => z.relu(),
            Activation::Tanh => z.tanh(),
            Activation::Sigmoid => z.sigmoid(),
            Activation::LeakyRelu => z.prelu(kiln_core::LEAKY_RELU_ALPHA),
            Activation::Gelu => z.accurate_gelu(),
            Activation::Identity => z,
        };
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

    /// Applies one optimizer step with learning rate `lr` using every parameter's gradient.
    pub fn update(
        &mut self,
        grads: &mut Gradients<f32, D>,
        opt: &OptimizerConfig,
        lr: f64,
    ) -> Result<(), D::Err>
    where
        D: Backend,
    {
        self.update_with(grads, None, opt, lr)
    }

    /// [`Mlp::update`] with the gradients `grads` + `more` (a batch's two halves, see
    /// [`Step`]).
    pub fn update_with(
        &mut self,
        grads: &mut Gradients<f32, D>,
        mut more: Option<Gradients<f32, D>>,
        opt: &OptimizerConfig,
        lr: f64,
    ) -> Result<(), D::Err>
    where
        D: Backend,
    {
        self.step += 1;
        let adam = matches!(opt.kind, OptimizerKind::Adam | OptimizerKind::Adamw);
        // clipping needs the whole gradient first; the device's Adam adds `more` itself
        if (opt.clip_grad_norm.is_some() || !adam)
            && let Some(m) = more.take()
        {
            D::merge_grads(self, grads, m)?;
        }
        if let Some(max_norm) = opt.clip_grad_norm {
            self.clip(grads, max_norm as f32)?;
        }
        let decay = if opt.weight_decay > 0.0 {
            Some(match opt.kind {
                OptimizerKind::Adamw => WeightDecay::Decoupled(opt.weight_decay),
                _ => WeightDecay::L2(opt.weight_decay),
            })
        } else {
            None
        };
        let rule = match opt.kind {
            OptimizerKind::Adam | OptimizerKind::Adamw => Rule::Adam(AdamConfig {
                lr,
                betas: [0.9, 0.999],
                eps: 1e-8,
                weight_decay: decay,
            }),
            OptimizerKind::Sgd => Rule::Sgd(SgdConfig {
                lr,
                momentum: (opt.momentum > 0.0).then_some(if opt.nesterov {
                    Momentum::Nesterov(opt.momentum)
                } else {
                    Momentum::Classic(opt.momentum)
                }),
                weight_decay: decay,
            }),
        };
        let step = self.step;
        if let Rule::Adam(cfg) = &rule
            && let Some(done) = D::adam_step(self, grads, more.as_mut(), cfg, step)
        {
            return done;
        }
        if let Some(m) = more.take() {
            D::merge_grads(self, grads, m)?;
        }
        for l in &mut self.layers {
            // dfdx's kernels change the tensors in place: host copies would go stale
            l.mirror.clear();
            let mut state = std::mem::take(&mut l.state);
            let result = (|| {
                let (sw, rest) = state.split_at_mut(1);
                rule.apply(step, &mut l.w, &mut sw[0], grads)?;
                for (p, s) in l.vectors_mut().into_iter().zip(rest) {
                    rule.apply(step, p, s, grads)?;
                }
                Ok(())
            })();
            l.state = state;
            result?;
        }
        Ok(())
    }

    /// Scales every gradient by `max_norm / norm` when their global L2 norm exceeds
    /// `max_norm` (PyTorch's `clip_grad_norm_` without its epsilon).
    fn clip(&self, grads: &mut Gradients<f32, D>, max_norm: f32) -> Result<(), D::Err>
    where
        D: Backend,
    {
        let sum_sq = |v: Vec<f32>| v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>();
        let mut sq = 0.0f64;
        for l in &self.layers {
            sq += sum_sq(grads.get(&l.w).as_vec());
            for v in l.vectors() {
                sq += sum_sq(grads.get(v).as_vec());
            }
        }
        let norm = sq.sqrt() as f32;
        if norm <= max_norm || norm == 0.0 {
            return Ok(());
        }
        let c = max_norm / norm;
        for l in &self.layers {
            scale_grad(grads, &l.w, c)?;
            for v in l.vectors() {
                scale_grad(grads, v, c)?;
            }
        }
        Ok(())
    }

    /// Optimizer steps taken so far.
    pub fn step(&self) -> i32 {
        self.step
    }

    /// Parameters and optimizer moments, for a checkpoint (None where the device cannot
    /// copy its buffers to the host).
    pub fn export_state(&self, dev: &D) -> Option<TensorStore>
    where
        D: Backend,
    {
        let mut s = self.to_store();
        for (i, l) in self.layers.iter().enumerate() {
            for (name, [m, v]) in Layer::<D>::NAMES.iter().zip(&l.state) {
                for (suffix, buf) in [("m", m), ("v", v)] {
                    let host = dev.download(buf)?;
                    s.insert_f32(
                        &format!("opt.layers.{i}.{name}.{suffix}"),
                        vec![host.len()],
                        host,
                    );
                }
            }
        }
        Some(s)
    }

    /// Restores parameters, moments and the step count from a checkpoint.
    pub fn import_state(&mut self, dev: &D, s: &TensorStore, step: i32) -> Option<()>
    where
        D: Backend,
    {
        self.set_weights(dev, s)?;
        for (i, l) in self.layers.iter_mut().enumerate() {
            let sizes: Vec<usize> = std::iter::once(l.w.shape().0 * l.w.shape().1)
                .chain(l.vectors().iter().map(|v| v.shape().0))
                .collect();
            for ((name, [m, v]), n) in Layer::<D>::NAMES.iter().zip(&mut l.state).zip(sizes) {
                for (suffix, buf) in [("m", m), ("v", v)] {
                    let host = s.f32(&format!("opt.layers.{i}.{name}.{suffix}")).ok()?;
                    if host.len() != n {
                        return None;
                    }
                    *buf = dev.upload(host)?;
                }
            }
        }
        self.step = step;
        Some(())
    }

    /// Replaces the parameters with those of `s` (optimizer moments stay zero): the start
    /// of a fine-tuning run. None when a tensor is missing or has the wrong size.
    pub fn set_weights(&mut self, dev: &D, s: &TensorStore) -> Option<()> {
        let vector = |key: String, n: usize| -> Option<Vector<D>> {
            let v = s.f32(&key).ok()?;
            (v.len() == n).then(|| dev.tensor_from_vec(v.to_vec(), (n,)))
        };
        for (i, (l, spec)) in self.layers.iter_mut().zip(&self.spec.layers).enumerate() {
            let w = s.f32(&format!("layers.{i}.weight")).ok()?;
            if w.len() != spec.in_dim * spec.out_dim {
                return None;
            }
            l.mirror.clear();
            l.w = dev.tensor_from_vec(w.to_vec(), (spec.in_dim, spec.out_dim));
            l.b = vector(format!("layers.{i}.bias"), spec.out_dim)?;
            if l.norm.is_some() {
                l.norm = Some((
                    vector(format!("layers.{i}.norm_weight"), spec.out_dim)?,
                    vector(format!("layers.{i}.norm_bias"), spec.out_dim)?,
                ));
            }
        }
        Some(())
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

    /// Copies the parameters out into a kiln TensorStore (`layers.<i>.weight|bias`, and
    /// `norm_weight|norm_bias` for a layer with a norm).
    pub fn to_store(&self) -> TensorStore {
        let mut s = TensorStore::default();
        for (i, (l, spec)) in self.layers.iter().zip(&self.spec.layers).enumerate() {
            s.insert_f32(
                &format!("layers.{i}.weight"),
                vec![spec.in_dim, spec.out_dim],
                l.w.as_vec(),
            );
            for (name, v) in Layer::<D>::NAMES[1..].iter().zip(l.vectors()) {
                s.insert_f32(
                    &format!("layers.{i}.{name}"),
                    vec![spec.out_dim],
                    v.as_vec(),
                );
            }
        }
        s
    }
}

/// Multiplies the gradient of `t` by `c`. Devices that cannot take host buffers (CUDA for
/// now) keep the gradient: `Config::problems` refuses clipping there before training.
fn scale_grad<S: Shape, D: Backend>(
    grads: &mut Gradients<f32, D>,
    t: &Tensor<S, f32, D>,
    c: f32,
) -> Result<(), D::Err> {
    let g = (grads.get(t) * c).as_vec();
    if let Some(v) = t.device().upload(&g) {
        *grads.get_or_alloc_mut(t)? = v;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::Task;

    /// One Adam step on a 2-input, 2-class linear model, against values worked by hand:
    /// x = [1, 2], class 0, W = [[0.1, -0.2], [0.3, 0.05]], b = [0, 0.1]
    /// z = [0.7, -0.2 + 0.1 + 0.1] = [0.7, 0.0]; softmax = [0.668188, 0.331812]
    /// dL/dz = p - y = [-0.331812, 0.331812]; dW = x^T dz; db = dz.
    /// Adam step 1 moves every parameter by lr * g / (|g| + eps) = ±lr.
    #[test]
    fn adam_first_step_matches_hand_computation() {
        let dev = Cpu::seed_from_u64(0);
        let spec = ModelSpec::mlp(2, &[], Activation::Identity, Task::Classification, 2);
        let mut net = Mlp::new(&dev, spec, 0.0, 0).unwrap();
        net.layers[0].w = dev.tensor_from_vec(vec![0.1, -0.2, 0.3, 0.05], (2, 2));
        net.layers[0].b = dev.tensor_from_vec(vec![0.0, 0.1], (2,));
        let x = dev.tensor_from_vec(vec![1.0f32, 2.0], (1, 2));
        let y = dev.tensor_from_vec(vec![1.0f32, 0.0], (1, 2));
        let logits = net.forward_train(x, &[]);
        assert_eq!(logits.retaped::<NoneTape>().as_vec(), vec![0.70000005, 0.0]);
        let loss = dfdx::losses::cross_entropy_with_logits_loss(logits, y);
        let lv = loss.retaped::<NoneTape>().as_vec()[0];
        assert!((lv - 0.403186).abs() < 1e-5, "{lv}");
        let mut grads = loss.backward();
        assert!((grads.get(&net.layers[0].w).as_vec()[2] - (-0.663624)).abs() < 1e-5);
        let opt = OptimizerConfig {
            kind: OptimizerKind::Adam,
            lr: 0.01,
            weight_decay: 0.0,
            momentum: 0.0,
            ..Default::default()
        };
        net.update(&mut grads, &opt, opt.lr).unwrap();
        let w = net.layers[0].w.as_vec();
        let want = [0.11, -0.21, 0.31, 0.04];
        for (a, b) in w.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{w:?}");
        }
        let b = net.layers[0].b.as_vec();
        assert!(
            (b[0] - 0.01).abs() < 1e-6 && (b[1] - 0.09).abs() < 1e-6,
            "{b:?}"
        );
    }

    /// The two halves of a batch, each drawing its own rows from the batch's place in
    /// the stream, get the masks one draw over the whole batch gives; the stream then
    /// moves on by as many values as that draw took.
    #[test]
    fn halves_draw_the_masks_of_the_whole_batch() {
        let dev = Cpu::seed_from_u64(0);
        let spec = ModelSpec::mlp(3, &[4, 5], Activation::Relu, Task::Classification, 2);
        let net = Mlp::new(&dev, spec, 0.3, 7).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        rng.set_stream(3);
        let _ = rng.r#gen::<u64>(); // not at the stream's start
        let mut after = rng.clone();
        let whole = net.draw_masks(7, &mut after);
        assert_eq!(
            after.get_word_pos(),
            rng.get_word_pos() + net.mask_values(7)
        );
        let stream = MaskStream {
            rng: rng.clone(),
            rows: 7,
            first_row: 0,
        };
        let a = net.draw_masks_at(&stream, 3);
        let b = net.draw_masks_at(
            &MaskStream {
                first_row: 3,
                ..stream
            },
            4,
        );
        for (l, w) in [4, 5].into_iter().enumerate() {
            assert_eq!(a[l], whole[l][..3 * w]);
            assert_eq!(b[l], whole[l][3 * w..]);
        }
        assert!(whole[0].contains(&0.0) && whole[1].iter().any(|&m| m > 1.0));
    }

    /// kiln's CPU Adam kernel gives dfdx's kernel's values bit for bit, with and without a
    /// second gradient and with either weight decay, over several steps.
    #[test]
    fn cpu_adam_is_dfdx_adam_bit_for_bit() {
        let dev = Cpu::seed_from_u64(0);
        let n = PARALLEL_ADAM + 5; // the two-half path
        let wave = |k: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * k).sin() * 0.1).collect() };
        for decay in [
            None,
            Some(WeightDecay::L2(0.1)),
            Some(WeightDecay::Decoupled(0.1)),
        ] {
            let cfg = AdamConfig {
                lr: 0.01,
                betas: [0.9, 0.999],
                eps: 1e-8,
                weight_decay: decay,
            };
            let mut theirs: Tensor<(usize,), f32, Cpu> = dev.tensor_from_vec(wave(0.37), (n,));
            let [mut m1, mut v1] = [(); 2].map(|_| dev.try_alloc_len(n).unwrap());
            let mut ours = wave(0.37);
            let (mut m2, mut v2) = (vec![0.0f32; n], vec![0.0f32; n]);
            for t in 1..=4 {
                let (ga, gb) = (wave(0.11 * t as f32), wave(0.23 * t as f32));
                let sum: Vec<f32> = ga.iter().zip(&gb).map(|(a, b)| a + b).collect();
                let g = dev.upload(&sum).unwrap();
                cfg.try_update(t, &mut theirs, &mut m1, &mut v1, &g)
                    .unwrap();
                AdamConsts::new(&cfg, t).apply(&mut ours, &mut m2, &mut v2, &ga, Some(&gb));
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&theirs.as_vec()), bits(&ours), "{decay:?}");
            assert_eq!(bits(&m1), bits(&m2));
            assert_eq!(bits(&v1), bits(&v2));
        }
    }

    /// A parameter replaced after an Adam step (a new tensor) is what the next step
    /// starts from, not the stale host copy of the old one.
    #[test]
    fn replaced_weights_are_not_overwritten_by_the_host_copy() {
        let dev = Cpu::seed_from_u64(0);
        let spec = ModelSpec::mlp(2, &[], Activation::Identity, Task::Classification, 2);
        let mut net = Mlp::new(&dev, spec, 0.0, 0).unwrap();
        let opt = OptimizerConfig {
            kind: OptimizerKind::Adam,
            lr: 0.01,
            weight_decay: 0.0,
            ..Default::default()
        };
        // zero gradients: Adam moves nothing, so the weights must stay what they are
        net.update(&mut Gradients::leaky(), &opt, opt.lr).unwrap();
        let mut s = net.to_store();
        s.insert_f32("layers.0.weight", vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        net.set_weights(&dev, &s).unwrap();
        net.update(&mut Gradients::leaky(), &opt, opt.lr).unwrap();
        assert_eq!(net.layers[0].w.as_vec(), [1.0, 2.0, 3.0, 4.0]);
        let mask = dev.tensor_from_vec(vec![1.0, 0.0, 1.0, 0.0], (2, 2));
        net.apply_masks(&[Some(mask)]);
        net.update(&mut Gradients::leaky(), &opt, opt.lr).unwrap();
        assert_eq!(net.layers[0].w.as_vec(), [1.0, 0.0, 3.0, 0.0]);
    }

    /// The CPU's two-half step (dW only for the input layer) gives the gradients, loss and
    /// outputs of one pass over the whole batch with dfdx's own matmul, up to rounding.
    #[test]
    fn half_batches_equal_one_pass() {
        let dev = Cpu::seed_from_u64(0);
        let spec = ModelSpec::mlp(3, &[4], Activation::Tanh, Task::Classification, 2);
        let net = Mlp::new(&dev, spec, 0.5, 7).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let rows = 5;
        let x: Vec<f32> = (0..rows * 3).map(|i| (i as f32 * 0.37).sin()).collect();
        let y: Vec<f32> = (0..rows)
            .flat_map(|r| [(r % 2) as f32, 1.0 - (r % 2) as f32])
            .collect();
        let masks = net.draw_masks(rows, &mut rng);
        assert_eq!(masks.len(), 1);
        assert!(masks[0].iter().all(|&m| m == 0.0 || m == 2.0));
        let batch = Batch {
            x: &x,
            y: &y,
            rows,
            masks: masks.iter().map(Vec::as_slice).collect(),
            mask_stream: None,
        };
        let loss = LossFn {
            kind: Loss::CrossEntropy,
            huber_delta: 1.0,
        };
        let split = dev.batch_step(&net, &batch, loss).unwrap();
        // one pass, every product through dfdx's matmul (both operand gradients)
        let xt = dev.tensor_from_vec(x.clone(), (rows, 3));
        let mut h = xt
            .traced(Gradients::leaky())
            .matmul(net.layers[0].w.clone());
        h = net.finish_layer(0, h, &batch.masks);
        h = net.finish_layer(1, h.matmul(net.layers[1].w.clone()), &batch.masks);
        let out = h.retaped::<NoneTape>().as_vec();
        let l = crate::batch_loss(loss.kind, h, dev.tensor_from_vec(y.clone(), (rows, 2)), 1.0);
        let lv = l.retaped::<NoneTape>().as_vec()[0];
        let g = l.backward();
        let close = |a: &[f32], b: &[f32]| {
            assert_eq!(a.len(), b.len());
            for (p, q) in a.iter().zip(b) {
                assert!((p - q).abs() < 1e-6, "{a:?} vs {b:?}");
            }
        };
        close(&split.outputs, &out);
        close(&[split.loss], &[lv]);
        let merged = split.merge(&net).unwrap();
        for layer in &net.layers {
            close(&merged.get(&layer.w).as_vec(), &g.get(&layer.w).as_vec());
            close(&merged.get(&layer.b).as_vec(), &g.get(&layer.b).as_vec());
        }
        assert!(
            g.get(&net.layers[0].w)
                .as_vec()
                .iter()
                .any(|v| v.abs() > 1e-3)
        );
    }

    /// `steps` steps of `kind` (lr 0.01, weight decay 0.1, betas 0.9 / 0.999, eps 1e-8) on
    /// the model of `adam_first_step_matches_hand_computation`, same x and class each step.
    fn adam_steps(kind: OptimizerKind, steps: usize) -> (Vec<f32>, Vec<f32>) {
        let opt = OptimizerConfig {
            kind,
            lr: 0.01,
            weight_decay: 0.1,
            ..Default::default()
        };
        optimizer_steps(&opt, steps)
    }

    /// `steps` steps of `opt` on a 2-in, 2-out linear classifier (W = [[0.1, -0.2],
    /// [0.3, 0.05]] as in × out, b = [0, 0.1]), x = [1, 2] and class 0 every step; the
    /// model of golden/torch_optimizers.py.
    fn optimizer_steps(opt: &OptimizerConfig, steps: usize) -> (Vec<f32>, Vec<f32>) {
        let dev = Cpu::seed_from_u64(0);
        let spec = ModelSpec::mlp(2, &[], Activation::Identity, Task::Classification, 2);
        let mut net = Mlp::new(&dev, spec, 0.0, 0).unwrap();
        net.layers[0].w = dev.tensor_from_vec(vec![0.1, -0.2, 0.3, 0.05], (2, 2));
        net.layers[0].b = dev.tensor_from_vec(vec![0.0, 0.1], (2,));
        for _ in 0..steps {
            let x = dev.tensor_from_vec(vec![1.0f32, 2.0], (1, 2));
            let y = dev.tensor_from_vec(vec![1.0f32, 0.0], (1, 2));
            let loss = dfdx::losses::cross_entropy_with_logits_loss(net.forward_train(x, &[]), y);
            let mut grads = loss.backward();
            net.update(&mut grads, opt, opt.lr).unwrap();
        }
        (net.layers[0].w.as_vec(), net.layers[0].b.as_vec())
    }

    /// `want` as f64: PyTorch's float32 values printed with 9 significant digits.
    fn assert_close(got: &[f32], want: &[f64]) {
        for (a, b) in got.iter().zip(want) {
            assert!((f64::from(*a) - b).abs() < 2e-7, "{got:?} vs {want:?}");
        }
        assert_eq!(got.len(), want.len());
    }

    /// AdamW (decoupled weight decay: p -= lr * wd * p beside the Adam step) against
    /// (golden/torch_optimizers.py) PyTorch 2.15's `torch.optim.AdamW(lr=0.01, weight_decay=0.1)` on the same model,
    /// three steps (W as in × out; `weight_decay` applies to biases too, as in one torch
    /// parameter group). Step 1 by hand: 0.1 - 0.01 * 0.1 * 0.1 + 0.01 = 0.1099.
    #[test]
    fn adamw_steps_match_pytorch() {
        let golden: [([f64; 4], [f64; 2]); 3] = [
            (
                [0.109899998, -0.209800005, 0.309700012, 0.0399499983],
                [0.00999999978, 0.0899000019],
            ),
            (
                [0.119772524, -0.219572634, 0.319372714, 0.02992763],
                [0.0199724175, 0.0798276812],
            ),
            (
                [0.129605338, -0.229305655, 0.329005927, 0.0199451186],
                [0.0299050324, 0.0697952732],
            ),
        ];
        for (i, (w, b)) in golden.iter().enumerate() {
            let (gw, gb) = adam_steps(OptimizerKind::Adamw, i + 1);
            assert_close(&gw, w);
            assert_close(&gb, b);
        }
    }

    /// Adam with L2 weight decay (wd * p added to the gradient before the moments)
    /// against (golden/torch_optimizers.py) PyTorch 2.15's `torch.optim.Adam(lr=0.01, weight_decay=0.1)`, three steps.
    /// Step 1 moves every parameter by exactly lr, as without decay; later steps differ.
    #[test]
    fn adam_l2_steps_match_pytorch() {
        let golden: [([f64; 4], [f64; 2]); 3] = [
            (
                [0.109999999, -0.210000008, 0.310000002, 0.0399999991],
                [0.00999999978, 0.0900000036],
            ),
            (
                [0.119980209, -0.21997942, 0.319980502, 0.0300182309],
                [0.0199809559, 0.0800183564],
            ),
            (
                [0.129926592, -0.229923561, 0.329927713, 0.0200674944],
                [0.0299294125, 0.0700679719],
            ),
        ];
        for (i, (w, b)) in golden.iter().enumerate() {
            let (gw, gb) = adam_steps(OptimizerKind::Adam, i + 1);
            assert_close(&gw, w);
            assert_close(&gb, b);
        }
    }

    /// One plain SGD step (momentum 0) of the zero network on x = 1, class 0, by hand.
    #[test]
    fn sgd_moves_against_the_gradient() {
        let dev = Cpu::seed_from_u64(0);
        let spec = ModelSpec::mlp(1, &[], Activation::Identity, Task::Classification, 2);
        let mut net = Mlp::new(&dev, spec, 0.0, 0).unwrap();
        net.layers[0].w = dev.tensor_from_vec(vec![0.0, 0.0], (1, 2));
        net.layers[0].b = dev.tensor_from_vec(vec![0.0, 0.0], (2,));
        let opt = OptimizerConfig {
            kind: OptimizerKind::Sgd,
            lr: 0.1,
            weight_decay: 0.0,
            momentum: 0.0,
            ..Default::default()
        };
        let x = dev.tensor_from_vec(vec![1.0f32], (1, 1));
        let y = dev.tensor_from_vec(vec![1.0f32, 0.0], (1, 2));
        let loss = dfdx::losses::cross_entropy_with_logits_loss(net.forward_train(x, &[]), y);
        let mut grads = loss.backward();
        net.update(&mut grads, &opt, opt.lr).unwrap();
        // z = [0, 0], p = [0.5, 0.5], dz = [-0.5, 0.5]; w -= 0.1 * dz
        assert_eq!(net.layers[0].w.as_vec(), vec![0.05, -0.05]);
    }

    /// SGD (lr 0.01), plain, with momentum 0.9 and with Nesterov momentum 0.9, each with
    /// weight decay 0 and 0.1 (L2: wd * p added to the gradient, biases too), three steps
    /// against PyTorch 2.15's `torch.optim.SGD` (golden/torch_optimizers.py).
    #[test]
    fn sgd_steps_match_pytorch() {
        type Golden = [([f64; 4], [f64; 2]); 3];
        let cases: [(f64, bool, f64, Golden); 6] = [
            (
                0.0,
                false,
                0.0,
                [
                    (
                        [0.103318125, -0.203318119, 0.306636244, 0.0433637574],
                        [0.00331812189, 0.096681878],
                    ),
                    (
                        [0.106548563, -0.206548557, 0.313097119, 0.0369028784],
                        [0.00654856255, 0.0934514403],
                    ),
                    (
                        [0.109694816, -0.209694818, 0.319389641, 0.0306103695],
                        [0.00969481654, 0.0903051868],
                    ),
                ],
            ),
            (
                0.9,
                false,
                0.0,
                [
                    (
                        [0.103318125, -0.203318119, 0.306636244, 0.0433637574],
                        [0.00331812189, 0.096681878],
                    ),
                    (
                        [0.109534875, -0.209534869, 0.319069743, 0.0309302583],
                        [0.00953487214, 0.0904651284],
                    ),
                    (
                        [0.118199445, -0.218199447, 0.3363989, 0.013601114],
                        [0.0181994438, 0.0818005577],
                    ),
                ],
            ),
            (
                0.9,
                true,
                0.0,
                [
                    (
                        [0.106304429, -0.206304431, 0.312608868, 0.0373911373],
                        [0.00630443124, 0.0936955735],
                    ),
                    (
                        [0.114982001, -0.214982003, 0.329964012, 0.0200359952],
                        [0.0149820028, 0.0850180015],
                    ),
                    (
                        [0.125525728, -0.225525722, 0.35105145, -0.00105145539],
                        [0.0255257282, 0.0744742751],
                    ),
                ],
            ),
            (
                0.0,
                false,
                0.1,
                [
                    (
                        [0.103218123, -0.203118131, 0.306336254, 0.0433137566],
                        [0.00331812189, 0.0965818763],
                    ),
                    (
                        [0.106346875, -0.206146985, 0.312493861, 0.0368065014],
                        [0.00654677488, 0.0932533219],
                    ),
                    (
                        [0.109389849, -0.209090158, 0.318480015, 0.0304710586],
                        [0.00968954712, 0.0900107473],
                    ),
                ],
            ),
            (
                0.9,
                false,
                0.1,
                [
                    (
                        [0.103218123, -0.203118131, 0.306336254, 0.0433137566],
                        [0.00331812189, 0.0965818763],
                    ),
                    (
                        [0.109243184, -0.208953291, 0.318196476, 0.0307888798],
                        [0.00953308493, 0.0901770145],
                    ),
                    (
                        [0.117630355, -0.217069849, 0.334700197, 0.0133379782],
                        [0.0181908794, 0.0812485963],
                    ),
                ],
            ),
            (
                0.9,
                true,
                0.1,
                [
                    (
                        [0.106114432, -0.205924436, 0.312038869, 0.0372961387],
                        [0.00630443124, 0.0935055688],
                    ),
                    (
                        [0.114514843, -0.214054212, 0.328569055, 0.0198187213],
                        [0.0149754798, 0.0845638812],
                    ),
                    (
                        [0.124697477, -0.22389397, 0.348591447, -0.00140372175],
                        [0.025500983, 0.0736955106],
                    ),
                ],
            ),
        ];
        for (momentum, nesterov, weight_decay, golden) in cases {
            let opt = OptimizerConfig {
                kind: OptimizerKind::Sgd,
                lr: 0.01,
                momentum,
                nesterov,
                weight_decay,
                ..Default::default()
            };
            for (i, (w, b)) in golden.iter().enumerate() {
                let (gw, gb) = optimizer_steps(&opt, i + 1);
                assert_close(&gw, w);
                assert_close(&gb, b);
            }
        }
    }

    /// One SGD step of the zero network on x = 1, target class 0: the gradients of w and
    /// b are both [-0.5, 0.5] (global norm 1).
    fn one_step(opt: &OptimizerConfig) -> (Vec<f32>, Vec<f32>) {
        let dev = Cpu::seed_from_u64(0);
        let spec = ModelSpec::mlp(1, &[], Activation::Identity, Task::Classification, 2);
        let mut net = Mlp::new(&dev, spec, 0.0, 0).unwrap();
        net.layers[0].w = dev.tensor_from_vec(vec![0.0, 0.0], (1, 2));
        net.layers[0].b = dev.tensor_from_vec(vec![0.0, 0.0], (2,));
        let x = dev.tensor_from_vec(vec![1.0f32], (1, 1));
        let y = dev.tensor_from_vec(vec![1.0f32, 0.0], (1, 2));
        let loss = dfdx::losses::cross_entropy_with_logits_loss(net.forward_train(x, &[]), y);
        let mut grads = loss.backward();
        net.update(&mut grads, opt, opt.lr).unwrap();
        (net.layers[0].w.as_vec(), net.layers[0].b.as_vec())
    }

    #[test]
    fn clipping_scales_the_global_gradient_norm() {
        let sgd = |clip| OptimizerConfig {
            kind: OptimizerKind::Sgd,
            lr: 1.0,
            clip_grad_norm: clip,
            ..Default::default()
        };
        // norm 1 > 0.1: every gradient times 0.1, so each parameter moves by 0.05
        let (w, b) = one_step(&sgd(Some(0.1)));
        for v in w.iter().chain(&b) {
            assert!((v.abs() - 0.05).abs() < 1e-7, "{w:?} {b:?}");
        }
        // norm 1 <= 2: untouched
        assert_eq!(one_step(&sgd(Some(2.0))), one_step(&sgd(None)));
        assert_eq!(one_step(&sgd(None)).0, vec![0.5, -0.5]);
    }

    /// Nesterov (PyTorch's form): v = m v + g, step = g + m v; the first step is
    /// (1 + m) g.
    #[test]
    fn nesterov_first_step_is_one_plus_momentum_times_the_gradient() {
        let opt = OptimizerConfig {
            kind: OptimizerKind::Sgd,
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            ..Default::default()
        };
        let (w, _) = one_step(&opt);
        assert!(
            (w[0] - 0.095).abs() < 1e-7 && (w[1] + 0.095).abs() < 1e-7,
            "{w:?}"
        );
    }
}
