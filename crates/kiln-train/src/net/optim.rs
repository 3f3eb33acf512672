//! Optimizer steps on the network: gradient clipping, then Adam / AdamW (kiln's CPU
//! kernel where the device has one, else dfdx's) or SGD with classic or Nesterov
//! momentum, with dfdx's kernels.

use super::{Backend, Mlp};
use crate::config::{OptimizerConfig, OptimizerKind};
use dfdx::prelude::*;
use dfdx::tensor::Gradients;

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

impl<D: Device<f32>> Mlp<D> {
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
    /// [`Step`](super::Step)).
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
        for e in &mut self.embeddings {
            e.mirror = None;
            rule.apply(step, &mut e.w, &mut e.state, grads)?;
        }
        for l in self.all_layers_mut() {
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
        for e in &self.embeddings {
            sq += sum_sq(grads.get(&e.w).as_vec());
        }
        for l in self.all_layers() {
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
        for e in &self.embeddings {
            scale_grad(grads, &e.w, c)?;
        }
        for l in self.all_layers() {
            scale_grad(grads, &l.w, c)?;
            for v in l.vectors() {
                scale_grad(grads, v, c)?;
            }
        }
        Ok(())
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
    use kiln_core::{Activation, ModelSpec, Task};

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
