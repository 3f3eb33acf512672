//! kiln's CPU Adam: dfdx's Adam arithmetic element for element (so the weights are
//! bit-identical to its kernel's), computed on host copies of the parameters, with the
//! second half-batch's gradient added on the way and large parameters updated in two
//! halves at once.

use super::Mlp;
use super::backend::in_halves;
use dfdx::prelude::*;
use dfdx::tensor::Gradients;

/// One Adam step (step number `t`) on every parameter of `net` with the gradients
/// `grads` + `more`: what [`super::Backend::adam_step`] does on the CPU.
pub(super) fn adam_step(
    net: &mut Mlp<Cpu>,
    grads: &mut Gradients<f32, Cpu>,
    mut more: Option<&mut Gradients<f32, Cpu>>,
    cfg: &AdamConfig,
    t: i32,
) -> Result<(), CpuError> {
    let k = AdamConsts::new(cfg, t);
    for e in &mut net.embeddings {
        adam_param(
            &k,
            &mut e.w,
            &mut e.state,
            grads,
            more.as_deref_mut(),
            &mut e.mirror,
        )?;
    }
    for l in net.all_layers_mut() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{OptimizerConfig, OptimizerKind};
    use crate::net::Backend;
    use kiln_core::{Activation, ModelSpec, Task};

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
}
