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
        for (key, l) in self.named_layers() {
            for (name, [m, v]) in Layer::<D>::NAMES.iter().zip(&l.state) {
                for (suffix, buf) in [("m", m), ("v", v)] {
                    let host = dev.download(buf)?;
                    s.insert_f32(
                        &format!("opt.{key}.{name}.{suffix}"),
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
        let keys: Vec<String> = self.named_layers().into_iter().map(|(k, _)| k).collect();
        for (key, l) in keys.iter().zip(self.all_layers_mut()) {
            let sizes: Vec<usize> = std::iter::once(l.w.shape().0 * l.w.shape().1)
                .chain(l.vectors().iter().map(|v| v.shape().0))
                .collect();
            for ((name, [m, v]), n) in Layer::<D>::NAMES.iter().zip(&mut l.state).zip(sizes) {
                for (suffix, buf) in [("m", m), ("v", v)] {
                    let host = s.f32(&format!("opt.{key}.{name}.{suffix}")).ok()?;
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
        let keys: Vec<String> = self.named_layers().into_iter().map(|(k, _)| k).collect();
        for (key, l) in keys.iter().zip(self.all_layers_mut()) {
            let (rows, cols) = *l.w.shape();
            let w = s.f32(&format!("{key}.weight")).ok()?;
            if w.len() != rows * cols {
                return None;
            }
            l.mirror.clear();
            l.w = dev.tensor_from_vec(w.to_vec(), (rows, cols));
            l.b = vector(format!("{key}.bias"), cols)?;
            if l.norm.is_some() {
                l.norm = Some((
                    vector(format!("{key}.norm_weight"), cols)?,
                    vector(format!("{key}.norm_bias"), cols)?,
                ));
            }
        }
        for (i, stats) in self.bn_stats.iter_mut().enumerate() {
            if let Some((mean, var)) = stats {
                let read = |name: &str, n: usize| -> Option<Vec<f32>> {
                    let v = s.f32(&format!("conv.{i}.{name}")).ok()?;
                    (v.len() == n).then(|| v.to_vec())
                };
                *mean = read("running_mean", mean.len())?;
                *var = read("running_var", var.len())?;
            }
        }
        Some(())
    }

    /// Every weight-and-bias parameter set with its key prefix in tensor stores:
    /// `conv.<i>` for convolution `i`, `layers.<i>` for dense layer `i`.
    fn named_layers(&self) -> Vec<(String, &Layer<D>)> {
        let convs = self
            .convs
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|l| (format!("conv.{i}"), l)));
        let dense = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("layers.{i}"), l));
        convs.chain(dense).collect()
    }

    /// Copies the parameters out into a kiln TensorStore (`embeddings.<j>.weight`,
    /// `conv.<i>.weight|bias`, `layers.<i>.weight|bias`, and `norm_weight|norm_bias` for a
    /// layer with a norm).
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
        for (key, l) in self.named_layers() {
            let (rows, cols) = *l.w.shape();
            s.insert_f32(&format!("{key}.weight"), vec![rows, cols], l.w.as_vec());
            for (name, v) in Layer::<D>::NAMES[1..].iter().zip(l.vectors()) {
                s.insert_f32(&format!("{key}.{name}"), vec![cols], v.as_vec());
            }
        }
        for (i, stats) in self.bn_stats.iter().enumerate() {
            if let Some((mean, var)) = stats {
                s.insert_f32(
                    &format!("conv.{i}.running_mean"),
                    vec![mean.len()],
                    mean.clone(),
                );
                s.insert_f32(
                    &format!("conv.{i}.running_var"),
                    vec![var.len()],
                    var.clone(),
                );
            }
        }
        s
    }

    /// Sets every batch norm's running statistics to what it sees in training over the
    /// `n` images `x` taken as one batch ([`kiln_core::conv::batch_norm_statistics`]):
    /// after each epoch, on the first training images. No-op without batch norms.
    pub fn refresh_batch_norm(&mut self, x: &[f32], n: usize) -> kiln_core::Result<()> {
        if self.bn_stats.iter().all(Option::is_none) || n == 0 {
            return Ok(());
        }
        let stats = kiln_core::conv::batch_norm_statistics(&self.spec, &self.to_store(), x, n)?;
        for (slot, s) in self.bn_stats.iter_mut().zip(stats) {
            if slot.is_some() {
                *slot = s;
            }
        }
        Ok(())
    }
}
