//! Dropout masks drawn from the epoch's ChaCha8 stream: each part of a batch seeks to
//! its own rows, so the two halves of a batch draw the very masks one draw over the whole
//! batch gives.

use super::Mlp;
use dfdx::prelude::*;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Where a batch's dropout masks come from: the epoch's random stream at the batch's
/// first mask value. The masks of the whole batch (`rows` rows) lie there one layer
/// after the other, row after row, exactly as [`Mlp::draw_masks`] draws them; a part of
/// the batch starting at `first_row` seeks to its own rows, so the two halves of a batch
/// draw their masks at once, on their own threads, and get the very values one thread
/// drawing the whole batch would.
#[derive(Clone)]
pub(crate) struct MaskStream {
    pub rng: ChaCha8Rng,
    pub rows: usize,
    pub first_row: usize,
}

impl<D: Device<f32>> Mlp<D> {
    /// Where dropout applies, in mask order: each hidden layer when the network has a
    /// dropout rate (its width), then each `dropout` convolutional step (its input's
    /// values per image), as (rate, values per row).
    pub(crate) fn mask_sites(&self) -> Vec<(f32, usize)> {
        let hidden = self.spec.layers.len().saturating_sub(1);
        let mut sites: Vec<(f32, usize)> = if self.dropout > 0.0 {
            self.spec.layers[..hidden]
                .iter()
                .map(|s| (self.dropout, s.out_dim))
                .collect()
        } else {
            Vec::new()
        };
        if let (Some(image), Ok(shapes)) = (self.spec.image, self.spec.conv_shapes()) {
            let inputs = std::iter::once(image).chain(shapes);
            for (step, shape) in self.spec.conv.iter().zip(inputs) {
                if let kiln_core::ConvStep::Dropout { rate } = *step
                    && rate > 0.0
                {
                    sites.push((rate, shape.len()));
                }
            }
        }
        sites
    }

    /// How many of [`Mlp::mask_sites`] are hidden layers (the rest are convolutional).
    pub(crate) fn hidden_mask_sites(&self) -> usize {
        if self.dropout > 0.0 {
            self.spec.layers.len().saturating_sub(1)
        } else {
            0
        }
    }

    /// Dropout masks for a batch of `rows`: one per mask site (rows × values, 0 with
    /// probability p, else 1/(1-p)), drawn from kiln's seeded stream (not the device's), so
    /// a resumed run draws the same ones. None without dropout.
    #[cfg(test)]
    pub fn draw_masks(&self, rows: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<f32>> {
        self.mask_sites()
            .into_iter()
            .map(|(p, width)| {
                let keep = 1.0 / (1.0 - p);
                (0..rows * width)
                    .map(|_| if rng.r#gen::<f32>() < p { 0.0 } else { keep })
                    .collect()
            })
            .collect()
    }

    /// Mask values one batch of `rows` rows takes from the random stream (what
    /// [`Mlp::draw_masks`] draws): rows × the mask sites' widths.
    pub fn mask_values(&self, rows: usize) -> u128 {
        let widths: usize = self.mask_sites().iter().map(|s| s.1).sum();
        (rows * widths) as u128
    }

    /// The masks of `rows` rows of a batch drawn from `stream` (see [`MaskStream`]).
    pub(super) fn draw_masks_at(&self, stream: &MaskStream, rows: usize) -> Vec<Vec<f32>> {
        let mut rng = stream.rng.clone();
        let mut site_start = stream.rng.get_word_pos();
        self.mask_sites()
            .into_iter()
            .map(|(p, width)| {
                let keep = 1.0 / (1.0 - p);
                // one u32 word per value (rand's f32 takes one)
                rng.set_word_pos(site_start + (stream.first_row * width) as u128);
                site_start += (stream.rows * width) as u128;
                (0..rows * width)
                    .map(|_| if rng.r#gen::<f32>() < p { 0.0 } else { keep })
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::{Activation, ModelSpec, Task};
    use rand::SeedableRng;

    /// The two halves of a batch, each drawing its own rows from the batch's place in
    /// the stream, get the masks one draw over the whole batch gives; the stream then
    /// moves on by as many values as that draw took.
    #[test]
    fn halves_draw_the_masks_of_the_whole_batch() {
        let dev = Cpu::seed_from_u64(0);
        let spec = ModelSpec::mlp(3, &[4, 5], Activation::Relu, Task::Classification, 2);
        let net = Mlp::new(&dev, spec, 0.3, 7).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        rng.set_stream(3);
        let _ = rng.r#gen::<u64>(); // not at the stream's start
        let mut after = rng.clone();
        let whole = net.draw_masks(7, &mut after);
        assert_eq!(
            after.get_word_pos(),
            rng.get_word_pos() + net.mask_values(7)
        );
        let stream = MaskStream {
            rng: rng.clone(),
            rows: 7,
            first_row: 0,
        };
        let a = net.draw_masks_at(&stream, 3);
        let b = net.draw_masks_at(
            &MaskStream {
                first_row: 3,
                ..stream
            },
            4,
        );
        for (l, w) in [4, 5].into_iter().enumerate() {
            assert_eq!(a[l], whole[l][..3 * w]);
            assert_eq!(b[l], whole[l][3 * w..]);
        }
        assert!(whole[0].contains(&0.0) && whole[1].iter().any(|&m| m > 1.0));
    }
}
