//! The network's parameters and optimizer state in and out of kiln tensor stores: for
//! checkpoints (parameters, moments, step), the start of a fine-tuning run and the model
//! files.

use super::{Backend, Layer, Mlp, Vector};
use dfdx::prelude::*;
use kiln_core::{ModelSpec, TensorStore};

impl<D: Device<f32>> Mlp<D> {
    /// Parameters and optimizer moments, for a checkpoint (None where the device cannot
    /// copy its buffers to the host).
    pub fn export_state(&self, dev: &D) -> Option<TensorStore>
    where
        D: Backend,
    {
        let mut s = self.to_store();
        for (j, e) in self.embeddings.iter().enumerate() {
            for (suffix, buf) in [("m", &e.state[0]), ("v", &e.state[1])] {
                let host = dev.download(buf)?;
                s.insert_f32(
                    &format!("opt.embeddings.{j}.weight.{suffix}"),
                    vec![host.len()],
                    host,
                );
            }
        }
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
        for (j, e) in self.embeddings.iter_mut().enumerate() {
            let n = e.w.shape().0 * e.w.shape().1;
            let [m, v] = &mut e.state;
            for (suffix, buf) in [("m", m), ("v", v)] {
                let host = s.f32(&format!("opt.embeddings.{j}.weight.{suffix}")).ok()?;
                if host.len() != n {
                    return None;
                }
                *buf = dev.upload(host)?;
            }
        }
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
        for (j, (t, e)) in self
            .embeddings
            .iter_mut()
            .zip(&self.spec.embeddings)
            .enumerate()
        {
            let w = s.f32(&ModelSpec::embedding_key(j)).ok()?;
            if w.len() != e.rows * e.dim {
                return None;
            }
            t.mirror = None;
            t.w = dev.tensor_from_vec(w.to_vec(), (e.rows, e.dim));
        }
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

    /// Copies the parameters out into a kiln TensorStore (`embeddings.<j>.weight`,
    /// `layers.<i>.weight|bias`, and `norm_weight|norm_bias` for a layer with a norm).
    pub fn to_store(&self) -> TensorStore {
        let mut s = TensorStore::default();
        for (j, (t, e)) in self
            .embeddings
            .iter()
            .zip(&self.spec.embeddings)
            .enumerate()
        {
            s.insert_f32(
                &ModelSpec::embedding_key(j),
                vec![e.rows, e.dim],
                t.w.as_vec(),
            );
        }
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
