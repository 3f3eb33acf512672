//! Building one candidate from the fp32 model: structured pruning (convolution channels,
//! then hidden units), magnitude pruning
//! (each in steps with fine-tuning after each), then int8 or fp16 quantization.

use crate::{CandidateConfig, Config, QuantizeMode, Result, Scheme, channels, prune, quantize};
use kiln_core::NativeModel;
use kiln_train::Data;

/// Builds one candidate from the fp32 `model`: pruning in `steps` steps with fine-tuning
/// after each, then quantization.
pub fn build(
    c: &CandidateConfig,
    model: &NativeModel,
    config: &Config,
    train: &Data<'_>,
    valid: &Data<'_>,
) -> Result<NativeModel> {
    let steps = c.steps.unwrap_or(1).max(1);
    let epochs = c.finetune_epochs.unwrap_or(0);
    let ft = kiln_train::Finetune {
        epochs,
        lr: config.finetune.lr,
        batch_size: config.finetune.batch_size,
        seed: config.finetune.seed,
    };
    let mut m = model.clone();
    if let Some(frac) = c.structured {
        let widths: Vec<usize> = model.spec.layers[..model.spec.layers.len() - 1]
            .iter()
            .map(|l| l.out_dim)
            .collect();
        let channel_widths = channels::conv_widths(&model.spec);
        for t in 1..=steps {
            let f = frac * t as f64 / steps as f64;
            // each convolution loses the same share of its channels as each hidden
            // layer of its units
            let keep: Vec<Option<usize>> = channel_widths
                .iter()
                .map(|w| w.map(|w| (w - (f * w as f64).round() as usize).max(1)))
                .collect();
            if keep.iter().any(Option::is_some) {
                let kept = channels::channels_to_keep(&m, &keep)?;
                m = channels::remove_channels(&m, &kept)?;
            }
            let keep: Vec<usize> = widths
                .iter()
                .map(|&w| (w - (f * w as f64).round() as usize).max(1))
                .collect();
            let kept = prune::units_to_keep(&m, &keep)?;
            m = prune::remove_units(&m, &kept, frac)?;
            if epochs > 0 {
                let spec = m.spec.clone();
                m = kiln_train::finetune_on(&m, &[], &ft, train, valid)?;
                m.spec.pruning = spec.pruning;
            }
        }
    }
    if let Some(s) = c.prune {
        let scope = c.scope.unwrap_or_default();
        let pruning = m.spec.pruning.clone();
        for t in 1..=steps {
            let (p, masks) = prune::magnitude(&m, s * t as f64 / steps as f64, scope)?;
            m = p;
            if epochs > 0 {
                let masks: Vec<Option<Vec<f32>>> = masks.into_iter().map(Some).collect();
                let spec = m.spec.clone();
                m = kiln_train::finetune_on(&m, &masks, &ft, train, valid)?;
                m.spec.pruning = spec.pruning;
            }
        }
        if pruning.is_some() {
            // structured, then magnitude: record the structural change
            m.spec.pruning = pruning;
        }
    }
    if c.quantize == Some(QuantizeMode::Fp16) {
        return quantize::fp16(&m);
    }
    if let Some(q) = &c.quantize {
        let scheme = if *q == QuantizeMode::Static {
            Scheme::Static
        } else {
            Scheme::Dynamic
        };
        let calibration = train.split_data().head(config.calibration_rows)?;
        m = quantize::quantize_with(
            &m,
            scheme,
            c.per_channel.unwrap_or(true),
            c.symmetric.unwrap_or(true),
            Some((&calibration, config.calibration_rows)),
        )?;
    }
    Ok(m)
}
