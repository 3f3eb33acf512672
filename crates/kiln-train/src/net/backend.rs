//! What kiln needs of a device beyond dfdx's `Device` (the [`Backend`] trait), and the
//! CPU's implementation: every batch in two fixed halves on two one-thread rayon pools,
//! so that the weights are bit-identical at any thread count.

use super::{
    Batch, Layer, LossFn, Matrix, Mlp, Step, Traced, activate, conv_op, cpu_adam, gather_op,
    input_grad,
};
use dfdx::prelude::*;
use dfdx::tensor::Gradients;
use kiln_core::Activation;

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

    /// The values of `h` (read flat, row-major) at the index `key` of `net`'s window
    /// cache (built by `make` on a miss), as a `[rows, cols]` matrix on `h`'s tape; an
    /// index of `h`'s length reads 0 (the padding). The default is dfdx's `gather` after
    /// appending that zero.
    fn gather_flat(
        net: &Mlp<Self>,
        h: Traced<Self>,
        key: (usize, usize),
        make: &dyn Fn() -> Vec<usize>,
        rows: usize,
        cols: usize,
    ) -> Traced<Self> {
        let dev = h.device().clone();
        let (r, c) = *h.shape();
        let flat = (
            h.reshape_like(&(r * c, 1usize)),
            dev.zeros_like(&(1usize, 1usize)),
        )
            .concat_along(Axis::<0>);
        flat.gather(net.windows.get(&dev, key, make))
            .reshape_like(&(rows, cols))
    }

    /// A convolution: the windows `win` of `h` times `p.w`, plus `p.b`, through
    /// `activation`, as `[win.rows, output channels]`; `input_grad`: whether `h` needs a
    /// gradient. The default gathers the windows ([`Backend::gather_flat`]) and
    /// multiplies them with dfdx's matmul.
    fn conv(
        net: &Mlp<Self>,
        h: Traced<Self>,
        win: WindowArgs,
        p: &Layer<Self>,
        activation: Activation,
        input_grad: bool,
    ) -> Traced<Self> {
        let _ = input_grad;
        let rows = win.rows;
        let z = Self::gather_flat(net, h, win.key, win.make, rows, win.cols).matmul(p.w.clone());
        let channels = p.w.shape().1;
        let z = z + p
            .b
            .clone()
            .broadcast_like::<(usize, usize), Axis<0>>(&(rows, channels));
        activate(z, activation)
    }

    /// The maximum of each window `win` of `h` (`win.rows` windows of `win.cols` values,
    /// `channels` windows to an output position) as a `[positions, channels]` matrix.
    /// The default gathers the windows and takes dfdx's `max`.
    fn max_pool(
        net: &Mlp<Self>,
        h: Traced<Self>,
        win: WindowArgs,
        channels: usize,
    ) -> Traced<Self> {
        let pooled: Tensor<(usize,), f32, Self, _> =
            Self::gather_flat(net, h, win.key, win.make, win.rows, win.cols)
                .max::<(usize,), Axis<1>>();
        pooled.reshape_like(&(win.rows / channels.max(1), channels))
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
        input_grad::input_matmul(x, w)
    }

    /// One loop each way over a host index (see [`gather_op`]).
    fn gather_flat(
        net: &Mlp<Cpu>,
        h: Traced<Cpu>,
        key: (usize, usize),
        make: &dyn Fn() -> Vec<usize>,
        rows: usize,
        cols: usize,
    ) -> Traced<Cpu> {
        gather_op::gather_flat(h, net.windows.host(key, make), rows, cols)
    }

    /// Image by image, in cache, with gemm's AVX-512 kernels, the bias and a ReLU fused
    /// in (see [`conv_op`]); other activations after it, by dfdx.
    fn conv(
        net: &Mlp<Cpu>,
        h: Traced<Cpu>,
        win: WindowArgs,
        p: &Layer<Cpu>,
        activation: Activation,
        input_grad: bool,
    ) -> Traced<Cpu> {
        let relu = activation == Activation::Relu;
        let windows = conv_op::Windows {
            idx: net.windows.host(win.key, win.make),
            images: win.images,
            width: win.cols,
            input_grad,
        };
        let z = conv_op::conv_product(h, windows, &p.w, &p.b, relu);
        if relu { z } else { activate(z, activation) }
    }

    /// One loop each way, no window matrix (see [`conv_op::max_pool`]).
    fn max_pool(net: &Mlp<Cpu>, h: Traced<Cpu>, win: WindowArgs, channels: usize) -> Traced<Cpu> {
        conv_op::max_pool(h, net.windows.host(win.key, win.make), win.cols, channels)
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
        for t in &net.embeddings {
            add_grad(grads, &mut more, &t.w)?;
        }
        for l in net.all_layers() {
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
        more: Option<&mut Gradients<f32, Cpu>>,
        cfg: &AdamConfig,
        t: i32,
    ) -> Option<Result<(), CpuError>> {
        Some(cpu_adam::adam_step(net, grads, more, cfg, t))
    }
}

/// The windows of a windowed step: the key of the network's window cache (step, images),
/// how to build the index on a miss, and the number of windows (`rows`, over `images`
/// images) and of values in each (`cols`).
pub(crate) struct WindowArgs<'a> {
    pub key: (usize, usize),
    pub make: &'a dyn Fn() -> Vec<usize>,
    pub images: usize,
    pub rows: usize,
    pub cols: usize,
}

/// Runs `a` and `b` at once on the two one-thread pools when rayon has two or more
/// threads (this thread waits, blocked, while the cores run the halves), else one after
/// the other. Either way each runs single-threaded, so the arithmetic is the same.
pub(super) fn in_halves<A: Send, B: Send>(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Loss;
    use kiln_core::{Activation, ModelSpec, Task};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

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
}
