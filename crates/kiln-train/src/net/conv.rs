//! The convolutional steps of an image model on a tape. Each step gathers its windows
//! out of the flattened activations, then a convolution multiplies them by its weight
//! and a pooling step reduces them. On every device this can be done with dfdx's stable
//! ops alone (`gather`, whose backward adds each gradient back where the value came
//! from, overlapping windows included; `matmul`; `max` / `mean`): the [`Backend`]'s
//! defaults. The CPU overrides the convolution and the max pool with its own tape ops
//! (`conv_op`). Between steps the activations are `[images · positions, channels]`
//! (channels last, one row per output position); the input is the dataset's `[images,
//! channels · height · width]`, and the output goes back to that order, as kiln-core and
//! ONNX flatten it. A window reaching into the padding reads a zero appended after the
//! values.
//!
//! [`Backend`]: super::Backend

use super::{Matrix, Mlp, Traced, WindowArgs, activate};
use dfdx::prelude::*;
use dfdx::tensor::Gradients;
use kiln_core::{ConvStep, ImageShape, Window};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// An index tensor on the device.
pub(crate) type Index<D> = Tensor<(usize,), usize, D>;

/// The gather indices of each convolutional step (and of the last reordering) for each
/// batch size seen: they depend only on the step and the number of images, and building
/// them on the host for every batch cost about as much as the gathers themselves. A
/// training run sees two or three batch sizes (the halves of a full batch and of the
/// last one), so the cache stays small; cloning a cached tensor shares its buffer.
pub(crate) struct WindowCache<D: Device<f32>> {
    device: Mutex<HashMap<WindowKey, Index<D>>>,
    host: Mutex<HashMap<WindowKey, Arc<Vec<usize>>>>,
}

/// A window index's key: the step (the step count for the final reordering) and the
/// number of images.
type WindowKey = (usize, usize);

impl<D: Device<f32>> Default for WindowCache<D> {
    fn default() -> Self {
        WindowCache {
            device: Mutex::new(HashMap::new()),
            host: Mutex::new(HashMap::new()),
        }
    }
}

impl<D: Device<f32>> WindowCache<D> {
    /// The index of `key` (step, images) on the device, built by `make` on a miss.
    pub(crate) fn get(
        &self,
        dev: &D,
        key: (usize, usize),
        make: &dyn Fn() -> Vec<usize>,
    ) -> Index<D> {
        let mut map = match self.device.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(key)
            .or_insert_with(|| {
                let v = make();
                let len = v.len();
                dev.tensor_from_vec(v, (len,))
            })
            .clone()
    }

    /// The index of `key` on the host (for the CPU's own gather), built on a miss.
    pub(crate) fn host(
        &self,
        key: (usize, usize),
        make: &dyn Fn() -> Vec<usize>,
    ) -> Arc<Vec<usize>> {
        let mut map = match self.host.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(key).or_insert_with(|| Arc::new(make())).clone()
    }
}

/// Where the values of a batch of images lie in a flat buffer.
#[derive(Clone, Copy)]
enum Layout {
    /// The dataset's rows: image, channel, row, column.
    Chw,
    /// Between steps: image, row, column, channel.
    Hwc,
}

impl Layout {
    /// The flat index of `(image, channel, y, x)` in images of `s`.
    fn at(self, s: ImageShape, img: usize, c: usize, y: usize, x: usize) -> usize {
        match self {
            Layout::Chw => ((img * s.channels + c) * s.height + y) * s.width + x,
            Layout::Hwc => ((img * s.height + y) * s.width + x) * s.channels + c,
        }
    }
}

/// For every output position of a windowed step, the flat index of each value of its
/// window, in the order (image, out row, out column, channel, kernel row, kernel column),
/// or the zero after the values (`n · s.len()`) where the window reaches into the
/// padding. Read as rows of `channels · kh · kw` it is a convolution's im2col (columns
/// ordered as kiln-core's weight rows); read as rows of `kh · kw`, one pooling window per
/// position and channel.
fn window_index(
    n: usize,
    s: ImageShape,
    out: ImageShape,
    win: Window,
    layout: Layout,
) -> Vec<usize> {
    let zero = n * s.len();
    let kk = win.kh * win.kw;
    let mut idx = Vec::with_capacity(n * out.height * out.width * s.channels * kk);
    for img in 0..n {
        for oy in 0..out.height {
            for ox in 0..out.width {
                for c in 0..s.channels {
                    for ky in 0..win.kh {
                        for kx in 0..win.kw {
                            let y = (oy * win.stride + ky).checked_sub(win.padding);
                            let x = (ox * win.stride + kx).checked_sub(win.padding);
                            idx.push(match (y, x) {
                                (Some(y), Some(x)) if y < s.height && x < s.width => {
                                    layout.at(s, img, c, y, x)
                                }
                                _ => zero,
                            });
                        }
                    }
                }
            }
        }
    }
    idx
}

impl<D: super::Backend> Mlp<D> {
    /// The convolutional steps on `x` (`[images, channels · height · width]`) with a
    /// tape: the first dense layer's input, `[images, channels · height · width]` of the
    /// last step's output. `masks`: one per `dropout` step with a rate above 0, each
    /// `images × values` (empty: no dropout, as in evaluation).
    pub(super) fn conv_stack(&self, x: Matrix<D>, masks: &[&[f32]]) -> Traced<D> {
        let mut masks = masks.iter();
        let dev = x.device().clone();
        let n = x.shape().0;
        let mut h: Traced<D> = x.traced(Gradients::leaky());
        let Some(mut shape) = self.spec.image else {
            return h;
        };
        let mut layout = Layout::Chw;
        for (i, (step, param)) in self.spec.conv.iter().zip(&self.convs).enumerate() {
            let Ok(out) = step.output(shape) else {
                // ModelSpec::validate refused the spec before any network was built
                return h;
            };
            if matches!(step, ConvStep::Conv2d { .. }) && param.is_none() {
                // a convolution always has its parameters (Mlp::new)
                return h;
            }
            if let (ConvStep::BatchNorm { activation }, Some(p)) = (*step, param) {
                // over this batch's values of each channel (rows: images · positions, the
                // channels-last layout every step but the first leaves)
                let (rows, c) = *h.shape();
                let gamma = p.w.clone().reshape_like(&(c,));
                let z = h.normalize::<Axis<0>>(kiln_core::conv::BATCH_NORM_EPS)
                    * gamma.broadcast_like::<(usize, usize), Axis<0>>(&(rows, c))
                    + p.b
                        .clone()
                        .broadcast_like::<(usize, usize), Axis<0>>(&(rows, c));
                h = activate(z, activation);
                continue;
            }
            if let ConvStep::Dropout { rate } = *step {
                if rate > 0.0
                    && let Some(m) = masks.next()
                {
                    let dims = *h.shape();
                    h = h * dev.tensor_from_vec(m.to_vec(), dims);
                }
                continue;
            }
            let win = step.window(shape);
            let positions = n * out.height * out.width;
            let make = || window_index(n, shape, out, win, layout);
            let args = |rows, cols| WindowArgs {
                key: (i, n),
                make: &make,
                images: n,
                rows,
                cols,
            };
            h = match (*step, param) {
                (ConvStep::Conv2d { activation, .. }, Some(p)) => {
                    let k2 = shape.channels * win.kh * win.kw;
                    // the data (and what only pools or dropout made of it) needs no gradient
                    let input_grad = self.spec.conv[..i]
                        .iter()
                        .any(|s| matches!(s, ConvStep::Conv2d { .. } | ConvStep::BatchNorm { .. }));
                    D::conv(self, h, args(positions, k2), p, activation, input_grad)
                }
                (ConvStep::MaxPool { .. }, _) => {
                    let kk = win.kh * win.kw;
                    D::max_pool(
                        self,
                        h,
                        args(positions * shape.channels, kk),
                        shape.channels,
                    )
                }
                _ => {
                    let kk = win.kh * win.kw;
                    let windows =
                        D::gather_flat(self, h, (i, n), &make, positions * shape.channels, kk);
                    let pooled: Tensor<(usize,), f32, D, _> = windows.mean::<(usize,), Axis<1>>();
                    pooled.reshape_like(&(positions, shape.channels))
                }
            };
            layout = Layout::Hwc;
            shape = out;
        }
        // back to the dataset's order, as kiln-core and ONNX `Flatten` read it
        let total = n * shape.len();
        let reorder = || {
            let mut idx = Vec::with_capacity(total);
            for img in 0..n {
                for c in 0..shape.channels {
                    for y in 0..shape.height {
                        for x in 0..shape.width {
                            idx.push(layout.at(shape, img, c, y, x));
                        }
                    }
                }
            }
            idx
        };
        D::gather_flat(self, h, (self.spec.conv.len(), n), &reorder, n, shape.len())
    }
}

#[cfg(test)]
mod tests {
    use super::super::gradcheck::GradCheck;
    use super::*;
    use kiln_core::{Activation, ModelSpec, Task};

    /// A 2 x 6 x 6 image through every kind of step: a padded convolution, an
    /// overlapping average pool (stride 1), a max pool, an unpadded convolution and the
    /// global average pool; tanh after each convolution.
    fn spec() -> ModelSpec {
        spec_with(Activation::Tanh)
    }

    /// [`spec`] with `activation` after each convolution.
    fn spec_with(activation: Activation) -> ModelSpec {
        let conv = |channels, kernel, padding| ConvStep::Conv2d {
            channels,
            kernel,
            stride: 1,
            padding,
            activation,
        };
        let image = ImageShape {
            channels: 2,
            height: 6,
            width: 6,
        };
        ModelSpec::mlp(72, &[3], Activation::Tanh, Task::Regression, 1).with_conv(
            image,
            vec![
                conv(3, 3, 1),
                ConvStep::AvgPool {
                    kernel: 2,
                    stride: Some(1),
                },
                ConvStep::MaxPool {
                    kernel: 2,
                    stride: None,
                },
                conv(4, 2, 0),
                ConvStep::GlobalAvgPool,
            ],
        )
    }

    /// Every `every`-th gradient of each convolutional step's weight and bias against the
    /// loss's central difference; returns how many of them were not near 0.
    fn check_conv_gradients(net: &Mlp<Cpu>, check: &GradCheck, every: usize) -> usize {
        let mut checked = 0;
        for (i, c) in net.convs.iter().enumerate() {
            let Some(layer) = c else { continue };
            for (name, grad) in [
                ("weight", check.step.grads.get(&layer.w).as_vec()),
                ("bias", check.step.grads.get(&layer.b).as_vec()),
            ] {
                let key = format!("conv.{i}.{name}");
                for k in (0..grad.len()).step_by(every) {
                    let fd = check.central_difference(&key, k);
                    assert!(
                        (f64::from(grad[k]) - fd).abs() < 2e-3 * (1.0 + fd.abs()),
                        "{key}[{k}]: gradient {}, central difference {fd}",
                        grad[k]
                    );
                    checked += usize::from(fd.abs() > 1e-4);
                }
            }
        }
        checked
    }

    /// The training pass computes kiln-core's reference forward pass, and its convolution
    /// gradients are the loss's central differences through that reference: with tanh
    /// (applied after the CPU's convolution op) and with ReLU (fused into it).
    #[test]
    fn conv_steps_match_the_reference_and_its_gradients() {
        for activation in [Activation::Tanh, Activation::Relu] {
            let spec = spec_with(activation);
            spec.validate().unwrap();
            assert_eq!(spec.layers[0].in_dim, 4);
            let dev = Cpu::seed_from_u64(0);
            let net = Mlp::new(&dev, spec.clone(), 0.0, 9).unwrap();
            let rows = 3;
            let x: Vec<f32> = (0..rows * 72).map(|i| (i as f32 * 0.61).sin()).collect();
            let y = vec![0.3, -0.2, 0.5];
            let forward = net
                .forward_train(dev.tensor_from_vec(x.clone(), (rows, 72)), &[])
                .retaped::<NoneTape>()
                .as_vec();
            let reference = kiln_core::forward(&spec, &net.to_store(), &x, rows).unwrap();
            for (a, b) in forward.iter().zip(&reference) {
                assert!((a - b).abs() < 1e-5, "{activation:?}: {a} vs {b}");
            }
            let check = GradCheck::new(&dev, &net, &x, &y, 1e-5);
            let checked = check_conv_gradients(&net, &check, 5);
            assert!(checked >= 6, "{activation:?}: {checked} gradients checked");
        }
    }

    /// A `dropout` step between convolutions: its mask site holds the values of one image
    /// at that point (after the first convolution: 3 x 6 x 6), a mask of ones gives the
    /// reference (which, like ONNX, passes values unchanged), a mask of zeros gives the
    /// reference with that convolution's output zeroed, and the two halves of a batch
    /// draw the masks one draw over the batch gives, hidden layers' first.
    #[test]
    fn dropout_between_convolutions_masks_the_activations() {
        let mut spec = spec();
        spec.conv.insert(1, ConvStep::Dropout { rate: 0.5 });
        spec.validate().unwrap();
        let dev = Cpu::seed_from_u64(0);
        let net = Mlp::new(&dev, spec.clone(), 0.0, 9).unwrap();
        assert_eq!(net.mask_sites(), vec![(0.5, 108)]);
        let rows = 3;
        let x: Vec<f32> = (0..rows * 72).map(|i| (i as f32 * 0.37).cos()).collect();
        let run = |m: f32| {
            let mask = vec![m; rows * 108];
            net.forward_train(dev.tensor_from_vec(x.clone(), (rows, 72)), &[&mask])
                .retaped::<NoneTape>()
                .as_vec()
        };
        let store = net.to_store();
        let reference = kiln_core::forward(&spec, &store, &x, rows).unwrap();
        for (a, b) in run(1.0).iter().zip(&reference) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        let mut zeroed = store.clone();
        for key in ["conv.0.weight", "conv.0.bias"] {
            zeroed
                .f32_mut(key)
                .unwrap()
                .iter_mut()
                .for_each(|v| *v = 0.0);
        }
        let want = kiln_core::forward(&spec, &zeroed, &x, rows).unwrap();
        let got = run(0.0);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert!(
            got.iter()
                .zip(&reference)
                .any(|(a, b)| (a - b).abs() > 1e-3)
        );

        // with hidden dropout too: hidden masks first, then the convolution's
        let net = Mlp::new(&dev, spec, 0.2, 9).unwrap();
        assert_eq!(net.mask_sites(), vec![(0.2, 3), (0.5, 108)]);
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let _ = rng.r#gen::<u32>();
        let mut after = rng.clone();
        let whole = net.draw_masks(5, &mut after);
        assert_eq!(
            after.get_word_pos(),
            rng.get_word_pos() + net.mask_values(5)
        );
        let stream = super::super::MaskStream {
            rng,
            rows: 5,
            first_row: 0,
        };
        let a = net.draw_masks_at(&stream, 2);
        let b = net.draw_masks_at(
            &super::super::MaskStream {
                first_row: 2,
                ..stream
            },
            3,
        );
        for (site, w) in [3, 108].into_iter().enumerate() {
            assert_eq!(a[site], whole[site][..2 * w]);
            assert_eq!(b[site], whole[site][2 * w..]);
        }
        let zeros = whole[1].iter().filter(|&&m| m == 0.0).count();
        assert!(
            (200..340).contains(&zeros),
            "{zeros} of 540 zeroed at rate 0.5"
        );
        assert!(whole[1].iter().all(|&m| m == 0.0 || m == 2.0));
    }

    /// Batch norms (after a convolution, and after the average pool) train over the
    /// batch's own statistics: the pass equals kiln-core's reference with the running
    /// statistics set to that batch's, and the gradients of the convolutions and of
    /// gamma and beta are the central differences of that (statistics recomputed at each
    /// step). Gamma starts at 1 and beta at 0.
    #[test]
    fn batch_norm_trains_on_the_batch_statistics() {
        let mut spec = spec();
        let identity = |c: &mut ConvStep| {
            if let ConvStep::Conv2d { activation, .. } = c {
                *activation = Activation::Identity;
            }
        };
        identity(&mut spec.conv[0]);
        spec.conv.insert(
            1,
            ConvStep::BatchNorm {
                activation: Activation::Tanh,
            },
        );
        spec.conv.insert(
            3,
            ConvStep::BatchNorm {
                activation: Activation::Relu,
            },
        );
        spec.validate().unwrap();
        let dev = Cpu::seed_from_u64(0);
        let net = Mlp::new(&dev, spec, 0.0, 9).unwrap();
        let store = net.to_store();
        assert_eq!(store.f32("conv.1.weight").unwrap(), [1.0; 3]);
        assert_eq!(store.f32("conv.1.bias").unwrap(), [0.0; 3]);
        let rows = 4;
        let x: Vec<f32> = (0..rows * 72).map(|i| (i as f32 * 0.43).sin()).collect();
        let y = vec![0.3, -0.2, 0.5, 0.1];
        let check = GradCheck::new(&dev, &net, &x, &y, 1e-4);
        let checked = check_conv_gradients(&net, &check, 3);
        assert!(checked >= 8, "{checked} gradients checked");
        // the first step cannot be a batch norm
        let mut first = super::tests::spec();
        first.conv.insert(
            0,
            ConvStep::BatchNorm {
                activation: Activation::Relu,
            },
        );
        let e = first.validate().unwrap_err().to_string();
        assert!(
            e.contains("a batch norm normalizes what a step before it computed"),
            "{e}"
        );
    }
}
