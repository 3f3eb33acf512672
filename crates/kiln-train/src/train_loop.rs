//! The training loop: epochs of shuffled mini-batches through the network, validation
//! after each, the best epoch's weights kept, early stopping, checkpoints (and resuming
//! from one), and the model artifact written at the end.

use crate::checkpoint::{CheckpointState, fingerprint, newest_checkpoint, save_checkpoint};
use crate::data::{Batch, Data};
use crate::head::{fold_target_scale, widen_binary_logit};
use crate::net::{self, Backend, Mlp};
use crate::{
    Config, EpochRecord, History, KeptBy, Loss, Output, Result, TrainError, argmax, dev_err,
};
use kiln_core::{ModelSpec, NativeModel, Progress, Task, TensorStore};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// Trains the network of `spec` on device `dev` (see [`crate::run_until`]). With a folder,
/// checkpoints go into it (and a run of the same config and data resumes from them) and
/// the model artifact is written at the end; without one, nothing touches the disk.
#[allow(clippy::too_many_arguments)]
pub(crate) fn train_on<D: dfdx::prelude::Device<f32> + Backend>(
    dev: D,
    spec: ModelSpec,
    config: &Config,
    train: &Data<'_>,
    valid: &Data<'_>,
    out_dir: Option<&Path>,
    progress: &dyn Progress,
    halt_after: Option<usize>,
) -> Result<Output> {
    let regression = spec.task == Task::Regression;
    let loss_kind = config.loss.resolve(spec.task);
    let binary = loss_kind == Loss::BinaryCrossEntropy;
    // The network trained: one logit for binary cross-entropy, else the saved shape.
    let mut net_spec = spec.clone();
    if binary && let Some(last) = net_spec.layers.last_mut() {
        last.out_dim = 1;
    }
    let k = net_spec.output_dim();
    let scale = train.target_scale();
    let metric_name = if regression { "r2" } else { "accuracy" };
    let kept_by = config.kept_by();
    let min_delta = config.early_stopping.as_ref().map_or(0.0, |e| e.min_delta);
    let store = |net: &Mlp<D>| {
        let mut s = net.to_store();
        if regression {
            fold_target_scale(&spec, &mut s, scale);
        }
        if binary {
            widen_binary_logit(&spec, &mut s);
        }
        s
    };
    let dropout = config.model_for(train.n_rows()).dropout;
    let mut net = Mlp::new(&dev, net_spec, dropout, config.seed).map_err(dev_err)?;
    // a batch larger than the train split is the whole split
    let bs = config.batch_size.min(train.n_rows()).max(1);
    let n_batches = train.n_rows().div_ceil(bs);
    let mut history = Vec::new();
    let mut best: Option<(f64, f64, usize, TensorStore)> = None; // (acc, loss, epoch, weights)
    let mut since_best = 0usize;
    let mut stopped_early = false;
    let mut first_epoch = 1;
    let mut resumed_from_epoch = None;
    let fp = fingerprint(config, train, valid);
    let checkpoint = match out_dir {
        Some(dir) if config.resume => newest_checkpoint(dir, &fp),
        _ => None,
    };
    if let Some((state, params, best_w)) = checkpoint
        && net.import_state(&dev, &params, state.step).is_some()
    {
        tracing::info!(epoch = state.epoch, "resuming from checkpoint");
        first_epoch = state.epoch + 1;
        resumed_from_epoch = Some(state.epoch);
        since_best = state.since_best;
        history = state.history;
        best = Some((state.best.1, state.best.2, state.best.0, best_w));
    }
    let started = std::time::Instant::now();
    let mut yb = Vec::with_capacity(bs * k);
    let mut epochs_run = 0usize;
    for epoch in first_epoch..=config.epochs {
        let _span = tracing::info_span!("epoch", epoch).entered();
        // One seeded stream per epoch (shuffle, then dropout masks): a resumed run draws
        // exactly what an uninterrupted one would.
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0x5eed_5eed_5eed_5eed);
        rng.set_stream(epoch as u64);
        progress.start(
            &format!("epoch {epoch}/{}", config.epochs),
            n_batches as u64,
        );
        // correct predictions (classification) or squared error of the standardized
        // target (regression)
        let (mut loss_sum, mut correct, mut sse) = (0.0f64, 0usize, 0.0f64);
        let mut step = |b: Batch<'_>, rng: &mut ChaCha8Rng| -> Result<()> {
            yb.clear();
            if regression {
                yb.extend(b.values.iter().map(|v| (v - scale.0) / scale.1));
            } else if binary {
                yb.extend(b.labels.iter().map(|&l| l as f32));
            } else {
                for &l in b.labels {
                    let mut onehot = vec![0.0f32; k];
                    onehot[l as usize] = 1.0;
                    yb.extend(onehot);
                }
            }
            // the batch's dropout masks are drawn in the pass (each half of the batch its
            // own rows, at once), from here in the epoch's stream, which then moves past them
            let batch = net::Batch {
                x: b.x,
                y: &yb,
                rows: b.rows,
                masks: Vec::new(),
                mask_stream: Some(net::MaskStream {
                    rng: rng.clone(),
                    rows: b.rows,
                    first_row: 0,
                }),
            };
            rng.set_word_pos(rng.get_word_pos() + net.mask_values(b.rows));
            let lossfn = net::LossFn {
                kind: loss_kind,
                huber_delta: config.huber_delta as f32,
            };
            let net::Step {
                mut grads,
                more,
                loss: lv,
                outputs: out,
            } = dev.batch_step(&net, &batch, lossfn).map_err(dev_err)?;
            if regression {
                sse += out
                    .iter()
                    .zip(&yb)
                    .map(|(p, t)| ((p - t) as f64).powi(2))
                    .sum::<f64>();
            } else {
                for (row, &l) in out.chunks_exact(k).zip(b.labels) {
                    let class = if binary {
                        usize::from(row[0] > 0.0)
                    } else {
                        argmax(row)
                    };
                    if class == l as usize {
                        correct += 1;
                    }
                }
            }
            if !lv.is_finite() {
                return Err(TrainError::Diverged { epoch, loss: lv });
            }
            loss_sum += lv as f64 * b.rows as f64;
            let lr = config.schedule.lr_at(
                config.optimizer.lr,
                net.step() as usize,
                n_batches,
                config.epochs,
            );
            net.update_with(&mut grads, more, &config.optimizer, lr)
                .map_err(dev_err)?;
            progress.advance(1);
            Ok(())
        };
        train.epoch(&mut rng, config.seed, epoch, bs, &mut step)?;
        epochs_run += 1;
        // batch norms: running statistics over the first training images in one batch
        let bn_rows = train.n_rows().min(crate::BATCH_NORM_ROWS);
        net.refresh_batch_norm(train.head(bn_rows), bn_rows)?;
        let weights = store(&net);
        let (valid_loss, valid_metric) = {
            let _span = tracing::info_span!("validate", rows = valid.n_rows()).entered();
            valid.evaluate(&spec, &weights)?
        };
        let n_train = train.n_rows() as f64;
        let rec = EpochRecord {
            epoch,
            train_loss: loss_sum / n_train,
            // the standardized target has variance 1, so R² = 1 - MSE
            train_metric: if regression {
                1.0 - sse / n_train
            } else {
                correct as f64 / n_train
            },
            valid_loss,
            valid_metric,
        };
        progress.message(&format!(
            "loss {:.4} valid {} {:.4}",
            rec.train_loss, metric_name, rec.valid_metric
        ));
        progress.finish();
        tracing::info!(
            epoch,
            train_loss = rec.train_loss,
            valid_metric,
            valid_loss,
            "epoch done"
        );
        progress.epoch(&kiln_core::artifact::progress::EpochPoint {
            epoch,
            of: config.epochs,
            train_loss: rec.train_loss,
            valid_loss: rec.valid_loss,
            valid_metric: rec.valid_metric,
        });
        history.push(rec);
        let improved = match &best {
            None => true,
            Some((m, loss, _, _)) => match kept_by {
                KeptBy::Loss => valid_loss < loss - min_delta,
                KeptBy::Metric => {
                    valid_metric > m + min_delta || (valid_metric >= *m && valid_loss < *loss)
                }
            },
        };
        if improved {
            best = Some((valid_metric, valid_loss, epoch, weights));
            since_best = 0;
        } else {
            since_best += 1;
            if let Some(es) = &config.early_stopping
                && since_best >= es.patience
            {
                stopped_early = epoch < config.epochs;
                tracing::info!(epoch, "early stopping");
                break;
            }
        }
        let every = config.checkpoint_every;
        if let Some(out_dir) = out_dir
            && every > 0
            && epoch % every == 0
            && epoch < config.epochs
            && let (Some(params), Some((acc, loss, be, bw))) = (net.export_state(&dev), &best)
        {
            let state = CheckpointState {
                fingerprint: fp.clone(),
                epoch,
                step: net.step(),
                since_best,
                best: (*be, *acc, *loss),
                history: history.clone(),
            };
            let _span = tracing::info_span!("checkpoint").entered();
            save_checkpoint(out_dir, &state, &params, bw)?;
        }
        if halt_after == Some(epoch) {
            return Err(TrainError::Halted { epoch });
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let samples = epochs_run * train.n_rows();
    let Some((best_acc, _, best_epoch, weights)) = best else {
        return Err(TrainError::Config("no epoch was run".into()));
    };
    let model = NativeModel::new(spec, weights)?;
    let history = History {
        metric: metric_name.to_string(),
        epochs: history,
        best_epoch,
        kept_by,
        stopped_early,
        streamed: train.streamed(),
    };
    let out = Output {
        model,
        history,
        best_valid_metric: best_acc,
        samples_per_sec: samples as f64 / elapsed.max(1e-9),
        resumed_from_epoch,
        schema: None,
    };
    if let Some(out_dir) = out_dir {
        out.save(out_dir)?;
        for d in [out_dir.join("checkpoint"), out_dir.join("checkpoint.tmp")] {
            if d.exists() {
                std::fs::remove_dir_all(&d).map_err(|e| kiln_core::CoreError::io(&d, e))?;
            }
        }
    }
    Ok(out)
}
