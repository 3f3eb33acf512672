//! Fine-tuning of a trained (possibly pruned) model: a few epochs of Adam from its own
//! weights, with pruned weights held at zero by masks — what kiln-optimize runs between
//! pruning steps. CPU only, seeded, deterministic like training.

use crate::data::{Batch, Data};
use crate::net::Mlp;
use crate::{Loss, OptimizerConfig, Result, TrainError, batch_loss, dev_err};
use dfdx::prelude::*;
use kiln_core::{Dataset, NativeModel, Task};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// `finetune = { epochs = 1, lr = 1e-4, batch_size = 64 }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Finetune {
    /// Epochs over the training split (0 = no fine-tuning).
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Adam learning rate (default 1e-4: the weights are already trained).
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Rows per step (default 64).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Shuffling seed (the pipeline fills it from its top-level `seed`).
    #[serde(default)]
    pub seed: u64,
}

fn default_epochs() -> usize {
    1
}
fn default_lr() -> f64 {
    1e-4
}
fn default_batch() -> usize {
    64
}

impl Default for Finetune {
    fn default() -> Self {
        Finetune {
            epochs: default_epochs(),
            lr: default_lr(),
            batch_size: default_batch(),
            seed: 0,
        }
    }
}

/// Trains `model` (fp32) for `cfg.epochs` more epochs on `train`: cross-entropy on the
/// logits for classifiers, MSE scaled by the target's standard deviation for regressors.
/// `masks[i]`, when given, holds one 0/1 value per weight of layer `i` (`[in, out]`,
/// row-major); masked weights are zero after every step. Returns the weights of the best
/// epoch on `valid` by accuracy (R² for regressors), the starting weights included, so
/// fine-tuning never makes the model worse on the validation split.
pub fn finetune(
    model: &NativeModel,
    masks: &[Option<Vec<f32>>],
    cfg: &Finetune,
    train: &Dataset,
    valid: &Dataset,
) -> Result<NativeModel> {
    finetune_on(
        model,
        masks,
        cfg,
        &Data::Memory(train),
        &Data::Memory(valid),
    )
}

/// [`finetune`] on splits held in memory or streamed from their shards ([`Data`]; a
/// streamed epoch reads the shards in an order seeded by `cfg.seed` and the epoch).
pub fn finetune_on(
    model: &NativeModel,
    masks: &[Option<Vec<f32>>],
    cfg: &Finetune,
    train: &Data<'_>,
    valid: &Data<'_>,
) -> Result<NativeModel> {
    let spec = model.spec.clone();
    if spec.quantization.is_some() {
        return Err(TrainError::Config(
            "fine-tuning needs an fp32 model; quantize after fine-tuning".into(),
        ));
    }
    if cfg.batch_size == 0 || !(cfg.lr > 0.0 && cfg.lr.is_finite()) {
        return Err(TrainError::Config(format!(
            "finetune: batch_size must be at least 1 and lr positive (got {} and {})",
            cfg.batch_size, cfg.lr
        )));
    }
    let k_out = spec.output_dim();
    if train.n_features() != spec.input_dim
        || (spec.task == Task::Regression) != train.is_regression()
        || train.label_max().is_some_and(|l| l as usize >= k_out)
    {
        return Err(TrainError::Config(format!(
            "fine-tuning data does not fit the model ({} features for {} inputs, or labels / targets of another task); use the dataset the model was trained on",
            train.n_features(),
            spec.input_dim
        )));
    }
    let (_, start_metric) = valid.evaluate(&spec, &model.weights)?;
    let mut best = (start_metric, model.weights.clone());
    if cfg.epochs == 0 || train.n_rows() == 0 {
        return Ok(model.clone());
    }
    let dev = Cpu::seed_from_u64(cfg.seed);
    let mut net = Mlp::new(&dev, spec.clone(), 0.0, cfg.seed).map_err(dev_err)?;
    net.set_weights(&dev, &model.weights)
        .ok_or_else(|| TrainError::Config("the model's weights do not match its spec".into()))?;
    let mut mask_t = Vec::new();
    for (i, l) in spec.layers.iter().enumerate() {
        mask_t.push(match masks.get(i) {
            Some(Some(m)) if m.len() == l.in_dim * l.out_dim => {
                Some(dev.tensor_from_vec(m.clone(), (l.in_dim, l.out_dim)))
            }
            Some(Some(m)) => {
                return Err(TrainError::Config(format!(
                    "mask of layer {i} holds {} values, the layer has {} weights",
                    m.len(),
                    l.in_dim * l.out_dim
                )));
            }
            _ => None,
        });
    }
    let regression = spec.task == Task::Regression;
    let k = spec.output_dim();
    let w = train.n_features();
    // Regressors predict the target itself: the loss is taken on (prediction / std)
    // against (target / std), the scale training used.
    let inv_std = if regression {
        let (_, var) = train.target_moments();
        if var > 0.0 {
            (1.0 / var.sqrt()) as f32
        } else {
            1.0
        }
    } else {
        1.0
    };
    let opt = OptimizerConfig {
        lr: cfg.lr,
        ..Default::default()
    };
    let loss_kind = if regression {
        Loss::Mse
    } else {
        Loss::CrossEntropy
    };
    let mut yb = Vec::new();
    for epoch in 1..=cfg.epochs {
        let _span = tracing::info_span!("finetune", epoch).entered();
        let seed = cfg.seed ^ 0xf1e7_f1e7;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(epoch as u64);
        let mut step = |b: Batch<'_>, _: &mut ChaCha8Rng| -> Result<()> {
            yb.clear();
            if regression {
                yb.extend(b.values.iter().map(|v| v * inv_std));
            } else {
                for &l in b.labels {
                    let mut onehot = vec![0.0f32; k];
                    onehot[l as usize] = 1.0;
                    yb.extend(onehot);
                }
            }
            let x = dev.tensor_from_vec(b.x.to_vec(), (b.rows, w));
            let y = dev.tensor_from_vec(yb.clone(), (b.rows, k));
            let out = net.forward_train(x, &[]);
            let out = if regression { out * inv_std } else { out };
            let loss = batch_loss(loss_kind, out, y, 1.0);
            let lv = loss.retaped::<NoneTape>().as_vec()[0];
            if !lv.is_finite() {
                return Err(TrainError::Diverged { epoch, loss: lv });
            }
            let mut grads = loss.backward();
            net.update(&mut grads, &opt, cfg.lr).map_err(dev_err)?;
            net.apply_masks(&mask_t);
            Ok(())
        };
        train.epoch(&mut rng, seed, epoch, cfg.batch_size, &mut step)?;
        let bn_rows = train.n_rows().min(crate::BATCH_NORM_ROWS);
        net.refresh_batch_norm(train.head(bn_rows), bn_rows)?;
        let weights = net.to_store();
        let (_, metric) = valid.evaluate(&spec, &weights)?;
        tracing::info!(epoch, valid_metric = metric, "fine-tuned");
        if metric > best.0 {
            best = (metric, weights);
        }
    }
    Ok(NativeModel::new(spec, best.1)?)
}
