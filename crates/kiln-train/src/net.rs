//! A multi-layer perceptron sized at run time: dfdx tensors with dynamic shapes
//! (`Tensor<(usize, usize), f32, D>`), generic over the device (CPU, or CUDA with the
//! `cuda` feature), with dfdx's optimizer kernels applied to each parameter.

use crate::config::{OptimizerConfig, OptimizerKind};
use dfdx::prelude::*;
use dfdx::tensor::Gradients;
use kiln_core::{Activation, ModelSpec, TensorStore};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One dense layer's parameters and optimizer state.
pub(crate) struct Layer<D: Device<f32>> {
    pub w: Tensor<(usize, usize), f32, D>,
    pub b: Tensor<(usize,), f32, D>,
    state: [<D as Storage<f32>>::Vec; 4],
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
    /// (`U(-1/sqrt(fan_in), 1/sqrt(fan_in))` for weights and biases), drawn from a ChaCha8
    /// stream seeded with `seed`, so weights do not depend on the device.
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
            layers.push(Layer {
                w: dev.tensor_from_vec(w, (l.in_dim, l.out_dim)),
                b: dev.tensor_from_vec(b, (l.out_dim,)),
                state: [
                    Storage::<f32>::try_alloc_len(dev, l.in_dim * l.out_dim)?,
                    Storage::<f32>::try_alloc_len(dev, l.in_dim * l.out_dim)?,
                    Storage::<f32>::try_alloc_len(dev, l.out_dim)?,
                    Storage::<f32>::try_alloc_len(dev, l.out_dim)?,
                ],
            });
        }
        Ok(Mlp {
            layers,
            spec,
            dropout,
            step: 0,
        })
    }

    /// Forward pass with a gradient tape; dropout is active.
    pub fn forward_train(
        &self,
        x: Tensor<(usize, usize), f32, D, OwnedTape<f32, D>>,
    ) -> Tensor<(usize, usize), f32, D, OwnedTape<f32, D>> {
        let mut h = x;
        let n = self.layers.len();
        for (i, (l, s)) in self.layers.iter().zip(&self.spec.layers).enumerate() {
            let rows = h.shape().0;
            let z = h.matmul(l.w.clone());
            let z = z + l
                .b
                .clone()
                .broadcast_like::<(usize, usize), Axis<0>>(&(rows, s.out_dim));
            h = match s.activation {
                Activation::Relu => z.relu(),
                Activation::Tanh => z.tanh(),
                Activation::Sigmoid => z.sigmoid(),
                Activation::Identity => z,
            };
            if i + 1 < n && self.dropout > 0.0 {
                h = h.dropout(self.dropout);
            }
        }
        h
    }

    /// Applies one optimizer step using the gradients of every parameter.
    pub fn update(
        &mut self,
        grads: &mut Gradients<f32, D>,
        opt: &OptimizerConfig,
    ) -> Result<(), D::Err> {
        self.step += 1;
        let decay = if opt.weight_decay > 0.0 {
            Some(match opt.kind {
                OptimizerKind::Adamw => WeightDecay::Decoupled(opt.weight_decay),
                _ => WeightDecay::L2(opt.weight_decay),
            })
        } else {
            None
        };
        for l in &mut self.layers {
            let [mw, vw, mb, vb] = &mut l.state;
            match opt.kind {
                OptimizerKind::Adam | OptimizerKind::Adamw => {
                    let cfg = AdamConfig {
                        lr: opt.lr,
                        betas: [0.9, 0.999],
                        eps: 1e-8,
                        weight_decay: decay,
                    };
                    let gw = grads.get_or_alloc_mut(&l.w)?;
                    cfg.try_update(self.step, &mut l.w, mw, vw, gw)?;
                    let gb = grads.get_or_alloc_mut(&l.b)?;
                    cfg.try_update(self.step, &mut l.b, mb, vb, gb)?;
                }
                OptimizerKind::Sgd => {
                    let cfg = SgdConfig {
                        lr: opt.lr,
                        momentum: (opt.momentum > 0.0).then_some(Momentum::Classic(opt.momentum)),
                        weight_decay: decay,
                    };
                    let gw = grads.get_or_alloc_mut(&l.w)?;
                    cfg.try_update(&mut l.w, mw, gw)?;
                    let gb = grads.get_or_alloc_mut(&l.b)?;
                    cfg.try_update(&mut l.b, mb, gb)?;
                }
            }
        }
        Ok(())
    }

    /// Copies the parameters out into a kiln TensorStore (`layers.<i>.weight|bias`).
    pub fn to_store(&self) -> TensorStore {
        let mut s = TensorStore::default();
        for (i, (l, spec)) in self.layers.iter().zip(&self.spec.layers).enumerate() {
            s.insert_f32(
                &format!("layers.{i}.weight"),
                vec![spec.in_dim, spec.out_dim],
                l.w.as_vec(),
            );
            s.insert_f32(
                &format!("layers.{i}.bias"),
                vec![spec.out_dim],
                l.b.as_vec(),
            );
        }
        s
    }
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
        let logits = net.forward_train(x.traced(Gradients::leaky()));
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
        };
        net.update(&mut grads, &opt).unwrap();
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

    /// SGD with momentum 0.9, two steps with the same gradient g: v1 = g, v2 = 0.9 g + g.
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
        };
        let x = dev.tensor_from_vec(vec![1.0f32], (1, 1));
        let y = dev.tensor_from_vec(vec![1.0f32, 0.0], (1, 2));
        let loss = dfdx::losses::cross_entropy_with_logits_loss(
            net.forward_train(x.traced(Gradients::leaky())),
            y,
        );
        let mut grads = loss.backward();
        net.update(&mut grads, &opt).unwrap();
        // z = [0, 0], p = [0.5, 0.5], dz = [-0.5, 0.5]; w -= 0.1 * dz
        assert_eq!(net.layers[0].w.as_vec(), vec![0.05, -0.05]);
    }
}
