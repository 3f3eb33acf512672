//! Seeded augmentation of the train split: random oversampling of the smaller classes,
//! and augmented copies of each training row (images, grey or colour: random shift,
//! rotation, crop and horizontal flip, the same on every channel; any table: gaussian
//! noise on the features). Valid and test rows are never touched, and
//! the fitted statistics come from the original train rows only.

use crate::error::{PreprocessError, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// `augment = { … }` of a preprocess stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Augment {
    /// Augmented copies added per training row (after oversampling); each copy gets its
    /// own random shift, rotation and noise. Default 0.
    #[serde(default)]
    pub copies: usize,
    /// Image layout `[height, width]` of a row's raw feature columns, row-major, channel
    /// after channel when there are several (height × width × channels columns; needed by
    /// `shift`, `rotate`, `crop` and `flip`; IDX and image-folder sources give it
    /// themselves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<[usize; 2]>,
    /// Largest shift of a copy in pixels along each axis (uniform in [-shift, shift];
    /// pixels shifted in are 0).
    #[serde(default)]
    pub shift: usize,
    /// Largest rotation of a copy in degrees (uniform in [-rotate, rotate], about the
    /// image centre, bilinear; pixels from outside the image are 0).
    #[serde(default)]
    pub rotate: f32,
    /// Random crop of a copy: a window whose height and width are each a uniform share in
    /// [crop, 1] of the image's, at a uniform place, resized back to the image's size
    /// (bilinear). 0 (the default) is off; else in [0.1, 1).
    #[serde(default)]
    pub crop: f32,
    /// Mirror each copy left to right with probability 1/2 (for pictures whose meaning a
    /// mirror keeps: not for digits or text).
    #[serde(default)]
    pub flip: bool,
    /// Standard deviation of gaussian noise added to every feature of a copy, after the
    /// steps (so in standardized units when `standardize` ran).
    #[serde(default)]
    pub noise: f32,
    /// Classification: duplicate random rows of each smaller class until every class has
    /// as many train rows as the largest.
    #[serde(default)]
    pub oversample: bool,
}

/// The longest image side kiln reads (an IDX dimension, `augment.image`).
pub const MAX_SIDE: usize = 1 << 16;
/// The most augmented copies per train row.
pub const MAX_COPIES: usize = 100;

impl Augment {
    /// True when the block changes nothing (the default).
    pub fn is_off(&self) -> bool {
        self.copies == 0 && !self.oversample
    }

    /// Values out of range, as (key, message) pairs.
    pub(crate) fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let k = |s: &str| format!("augment.{s}");
        let transforms = self.is_geometric() || self.noise != 0.0;
        if self.copies > 0 && !transforms {
            p.push((
                k("copies"),
                "copies without `shift`, `rotate`, `crop`, `flip` or `noise` would add exact duplicates; set one of them (or use `oversample`)".into(),
            ));
        }
        if self.copies == 0 && transforms {
            p.push((
                k("copies"),
                "`shift`, `rotate`, `crop`, `flip` and `noise` act on augmented copies; set `copies` to 1 or more"
                    .into(),
            ));
        }
        if self.crop != 0.0 && !(0.1..1.0).contains(&self.crop) {
            p.push((
                k("crop"),
                format!(
                    "crop = {} must be 0 (off) or a share of each side in [0.1, 1)",
                    self.crop
                ),
            ));
        }
        if !(0.0..180.0).contains(&self.rotate) {
            p.push((
                k("rotate"),
                format!("rotate = {} must be in [0, 180) degrees", self.rotate),
            ));
        }
        if !self.noise.is_finite() || self.noise < 0.0 {
            p.push((
                k("noise"),
                format!(
                    "noise = {} must be a finite standard deviation ≥ 0",
                    self.noise
                ),
            ));
        }
        if let Some([h, w]) = self.image {
            if h == 0 || w == 0 {
                p.push((k("image"), format!("image = [{h}, {w}] has no pixels")));
            } else if h > MAX_SIDE || w > MAX_SIDE {
                p.push((
                    k("image"),
                    format!("image = [{h}, {w}]: a side is longer than kiln reads ({MAX_SIDE})"),
                ));
            }
        }
        if self.copies > MAX_COPIES {
            p.push((
                k("copies"),
                format!(
                    "copies = {} is more than kiln adds per row ({MAX_COPIES})",
                    self.copies
                ),
            ));
        }
        if self.shift > MAX_SIDE {
            p.push((
                k("shift"),
                format!(
                    "shift = {} is more than an image side can be ({MAX_SIDE})",
                    self.shift
                ),
            ));
        }
        p
    }

    /// Whether a copy is transformed as an image (shift, rotate, crop or flip).
    fn is_geometric(&self) -> bool {
        self.shift > 0 || self.rotate != 0.0 || self.crop != 0.0 || self.flip
    }

    /// The image layout `[channels, height, width]` for `width` raw feature columns:
    /// `image`, else `source` (the IDX or image-folder source's `[height, width]`), with
    /// as many channels as the columns hold; an error when an image transform needs one
    /// and none fits.
    pub(crate) fn layout(
        &self,
        width: usize,
        source: Option<[usize; 2]>,
    ) -> Result<Option<[usize; 3]>> {
        if !self.is_geometric() {
            return Ok(None);
        }
        let Some([h, w]) = self.image.or(source) else {
            return Err(PreprocessError::Invalid(format!(
                "augment: shift, rotate, crop and flip need the image layout; add `image = [height, width]` (height × width × channels = {width}, the number of raw feature columns)"
            )));
        };
        match h.checked_mul(w) {
            Some(pixels) if pixels > 0 && width.is_multiple_of(pixels) && width / pixels <= 4 => {
                Ok(Some([width / pixels, h, w]))
            }
            pixels => Err(PreprocessError::Invalid(format!(
                "augment.image = [{h}, {w}] is {} pixels but the rows have {width} raw feature columns, not 1 to 4 channels of them; give the layout of the raw columns",
                pixels.map_or_else(|| "more".to_string(), |p| p.to_string())
            ))),
        }
    }
}

pub use kiln_core::artifact::profile::AugmentCounts;

/// The augmentation plan: which train rows each added row comes from.
pub(crate) struct Plan {
    /// Oversampled rows (train row indices), exact copies.
    pub oversampled: Vec<u32>,
    /// Source of each augmented copy, as an index into originals ++ oversampled.
    pub copies: Vec<u32>,
}

/// Draws the plan from `labels` (classification; empty for regression).
pub(crate) fn plan(cfg: &Augment, labels: &[u32], n_classes: usize, n: usize, seed: u64) -> Plan {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6175_676d_656e_7421);
    let mut oversampled = Vec::new();
    if cfg.oversample && !labels.is_empty() {
        let mut by_class = vec![Vec::new(); n_classes];
        for (i, &l) in labels.iter().enumerate() {
            by_class[l as usize].push(i as u32);
        }
        let largest = by_class.iter().map(Vec::len).max().unwrap_or(0);
        for rows in by_class.iter().filter(|r| !r.is_empty()) {
            for _ in rows.len()..largest {
                oversampled.push(rows[rng.gen_range(0..rows.len())]);
            }
        }
    }
    let base = n + oversampled.len();
    let copies = (0..cfg.copies)
        .flat_map(|_| 0..base as u32)
        .collect::<Vec<u32>>();
    Plan {
        oversampled,
        copies,
    }
}

/// Raw rows of the augmented copies: `copies` names each copy's row of `src` (`w`
/// columns); when `layout` (`[channels, height, width]`) is given, each copy is rotated,
/// cropped, mirrored and shifted by its own random draw, every channel alike.
pub(crate) fn copy_rows(
    cfg: &Augment,
    src: &[f32],
    w: usize,
    copies: &[u32],
    layout: Option<[usize; 3]>,
    seed: u64,
) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7368_6966_7421);
    let mut out = Vec::with_capacity(copies.len() * w);
    for &s in copies {
        let row = &src[s as usize * w..(s as usize + 1) * w];
        let Some([_, h, iw]) = layout else {
            out.extend_from_slice(row);
            continue;
        };
        // the draws of shift and rotate come first, as before crop and flip existed
        let k = cfg.shift as i64;
        let dy = if k > 0 { rng.gen_range(-k..=k) } else { 0 };
        let dx = if k > 0 { rng.gen_range(-k..=k) } else { 0 };
        let deg = if cfg.rotate > 0.0 {
            rng.gen_range(-cfg.rotate..=cfg.rotate)
        } else {
            0.0
        };
        let crop = (cfg.crop > 0.0).then(|| {
            let side = |n: usize, rng: &mut ChaCha8Rng| {
                let f = rng.gen_range(cfg.crop..=1.0);
                ((n as f32 * f).round() as usize).clamp(1, n)
            };
            let (ch, cw) = (side(h, &mut rng), side(iw, &mut rng));
            let y0 = rng.gen_range(0..=h - ch);
            let x0 = rng.gen_range(0..=iw - cw);
            [y0, x0, ch, cw]
        });
        let flip = cfg.flip && rng.r#gen::<bool>();
        for plane in row.chunks_exact(h * iw) {
            let mut p = if deg != 0.0 {
                rotate_image(plane, h, iw, deg)
            } else {
                plane.to_vec()
            };
            if let Some(window) = crop {
                p = crop_resize(&p, h, iw, window);
            }
            if flip {
                for r in p.chunks_exact_mut(iw) {
                    r.reverse();
                }
            }
            out.extend(shift_image(&p, h, iw, dy, dx));
        }
    }
    out
}

/// The window `[y0, x0, height, width]` of the `h × w` image `src`, resized back to
/// `h × w` (bilinear, pixel centres aligned as `image`'s resize aligns them).
pub fn crop_resize(src: &[f32], h: usize, w: usize, [y0, x0, ch, cw]: [usize; 4]) -> Vec<f32> {
    let at = |y: usize, x: usize| f64::from(src[(y0 + y) * w + x0 + x]);
    let mut out = vec![0.0; h * w];
    let (sy, sx) = (ch as f64 / h as f64, cw as f64 / w as f64);
    for y in 0..h {
        let fy = ((y as f64 + 0.5) * sy - 0.5).clamp(0.0, (ch - 1) as f64);
        let (ya, ty) = (fy.floor() as usize, fy - fy.floor());
        let yb = (ya + 1).min(ch - 1);
        for x in 0..w {
            let fx = ((x as f64 + 0.5) * sx - 0.5).clamp(0.0, (cw - 1) as f64);
            let (xa, tx) = (fx.floor() as usize, fx - fx.floor());
            let xb = (xa + 1).min(cw - 1);
            let v = at(ya, xa) * (1.0 - tx) * (1.0 - ty)
                + at(ya, xb) * tx * (1.0 - ty)
                + at(yb, xa) * (1.0 - tx) * ty
                + at(yb, xb) * tx * ty;
            out[y * w + x] = v as f32;
        }
    }
    out
}

/// Adds N(0, `std`²) noise to every value of `rows`, from a seeded stream.
pub(crate) fn add_noise(rows: &mut [f32], std: f32, seed: u64) {
    if std == 0.0 {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6e6f_6973_6521);
    for pair in rows.chunks_mut(2) {
        let (a, b) = gaussian_pair(&mut rng);
        pair[0] += std * a;
        if let Some(x) = pair.get_mut(1) {
            *x += std * b;
        }
    }
}

/// Two independent standard normal draws (Box–Muller; hand-written because it is five
/// lines and keeps `rand_distr` out of the build).
fn gaussian_pair(rng: &mut ChaCha8Rng) -> (f32, f32) {
    let u1: f64 = 1.0 - rng.r#gen::<f64>(); // (0, 1]: ln is finite
    let u2: f64 = rng.r#gen::<f64>();
    let r = (-2.0 * u1.ln()).sqrt();
    let t = std::f64::consts::TAU * u2;
    ((r * t.cos()) as f32, (r * t.sin()) as f32)
}

/// The `h × w` image `src` moved down by `dy` and right by `dx` pixels; pixels moved in
/// from outside are 0.
pub fn shift_image(src: &[f32], h: usize, w: usize, dy: i64, dx: i64) -> Vec<f32> {
    let mut out = vec![0.0; h * w];
    for y in 0..h as i64 {
        let sy = y - dy;
        if !(0..h as i64).contains(&sy) {
            continue;
        }
        for x in 0..w as i64 {
            let sx = x - dx;
            if (0..w as i64).contains(&sx) {
                out[(y * w as i64 + x) as usize] = src[(sy * w as i64 + sx) as usize];
            }
        }
    }
    out
}

/// The `h × w` image `src` rotated by `degrees` (counter-clockwise as displayed, y down)
/// about its centre, bilinear; pixels sampled from outside the image are 0.
pub fn rotate_image(src: &[f32], h: usize, w: usize, degrees: f32) -> Vec<f32> {
    let (s, c) = f64::from(degrees).to_radians().sin_cos();
    let (cy, cx) = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
    let px = |y: i64, x: i64| -> f64 {
        if (0..h as i64).contains(&y) && (0..w as i64).contains(&x) {
            f64::from(src[y as usize * w + x as usize])
        } else {
            0.0
        }
    };
    let mut out = vec![0.0; h * w];
    for y in 0..h {
        for x in 0..w {
            // Inverse map: the source point that lands on (y, x).
            let (oy, ox) = (y as f64 - cy, x as f64 - cx);
            let sx = c * ox - s * oy + cx;
            let sy = s * ox + c * oy + cy;
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as i64, y0 as i64);
            let v = px(y0, x0) * (1.0 - fx) * (1.0 - fy)
                + px(y0, x0 + 1) * fx * (1.0 - fy)
                + px(y0 + 1, x0) * (1.0 - fx) * fy
                + px(y0 + 1, x0 + 1) * fx * fy;
            out[y * w + x] = v as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_moves_pixels_and_fills_zeros() {
        // 3 × 3: 1..=9
        let img: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        assert_eq!(
            shift_image(&img, 3, 3, 1, -1),
            [0., 0., 0., 2., 3., 0., 5., 6., 0.]
        );
        assert_eq!(shift_image(&img, 3, 3, 0, 0), img);
        assert_eq!(shift_image(&img, 3, 3, 3, 0), vec![0.0; 9]);
    }

    #[test]
    fn rotation_by_quarter_turns_permutes_pixels() {
        let img: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let r = rotate_image(&img, 3, 3, 90.0);
        // Counter-clockwise as displayed: the top row becomes the left column, reversed.
        let want = [3., 6., 9., 2., 5., 8., 1., 4., 7.];
        for (a, b) in r.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{r:?}");
        }
        assert_eq!(rotate_image(&img, 3, 3, 0.0), img);
        // Half a pixel's turn keeps the centre pixel and mixes the others bilinearly.
        let r = rotate_image(&img, 3, 3, 10.0);
        assert!((r[4] - 5.0).abs() < 1e-6);
        let (s, c) = 10f64.to_radians().sin_cos();
        // (y=0, x=1) samples the source at x = 1 + s, y = c·(-1) + 1 = 1 - c.
        let (sx, sy) = (1.0 + s, 1.0 - c);
        let want = 2.0 * (1.0 - (sx - 1.0)) * (1.0 - sy)
            + 3.0 * (sx - 1.0) * (1.0 - sy)
            + 5.0 * (1.0 - (sx - 1.0)) * sy
            + 6.0 * (sx - 1.0) * sy;
        assert!((f64::from(r[1]) - want).abs() < 1e-5, "{} vs {want}", r[1]);
    }

    #[test]
    fn noise_has_the_asked_spread_and_is_seeded() {
        let mut a = vec![1.0f32; 100_000];
        add_noise(&mut a, 0.5, 7);
        let mean = a.iter().map(|&x| f64::from(x)).sum::<f64>() / a.len() as f64;
        let var = a
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / a.len() as f64;
        assert!((mean - 1.0).abs() < 0.01, "{mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.01, "{}", var.sqrt());
        let mut b = vec![1.0f32; 100_000];
        add_noise(&mut b, 0.5, 7);
        assert_eq!(a, b);
        add_noise(&mut b, 0.0, 8);
        assert_eq!(a, b);
    }

    #[test]
    fn oversampling_balances_classes_exactly() {
        let labels = [0, 0, 0, 0, 0, 1, 1, 2];
        let cfg = Augment {
            oversample: true,
            copies: 1,
            noise: 0.1,
            ..Default::default()
        };
        let p = plan(&cfg, &labels, 3, labels.len(), 3);
        assert_eq!(p.oversampled.len(), 3 + 4);
        let mut counts = [0usize; 3];
        for &i in labels
            .iter()
            .chain(p.oversampled.iter().map(|&i| &labels[i as usize]))
        {
            counts[i as usize] += 1;
        }
        assert_eq!(counts, [5, 5, 5]);
        assert_eq!(p.copies, (0..15).collect::<Vec<u32>>());
        assert_eq!(plan(&cfg, &labels, 3, 8, 3).oversampled, p.oversampled);
    }

    #[test]
    fn crop_resize_of_the_whole_image_is_the_image_and_of_a_quarter_magnifies_it() {
        let src: Vec<f32> = (0..16).map(|v| v as f32).collect();
        assert_eq!(crop_resize(&src, 4, 4, [0, 0, 4, 4]), src);
        // the top-left 2 x 2 window [[0, 1], [4, 5]] blown up to 4 x 4: corners kept,
        // the middle interpolated (pixel centres aligned)
        let up = crop_resize(&src, 4, 4, [0, 0, 2, 2]);
        assert_eq!(up[0], 0.0);
        assert_eq!(up[3], 1.0);
        assert_eq!(up[12], 4.0);
        assert_eq!(up[15], 5.0);
        assert_eq!(up[1], 0.25);
        assert_eq!(up[5], 0.25 + 4.0 * 0.25);
        // a window of one row, two columns further right and down
        let w = crop_resize(&src, 4, 4, [2, 1, 2, 3]);
        assert_eq!(w[0], 9.0);
        assert_eq!(w[15], 15.0);
    }

    /// A colour image's copies: every channel gets the same crop, mirror and shift (here
    /// the planes are the same picture times 1, 2 and 3, and stay so); nearly every copy
    /// differs from the image; the draws are seeded; with `flip` alone each copy is the
    /// image or its mirror, about half each.
    #[test]
    fn colour_copies_transform_every_channel_alike() {
        let (h, w) = (6, 5);
        let plane: Vec<f32> = (0..h * w).map(|v| (v * 7 % 11) as f32 + 1.0).collect();
        let row: Vec<f32> = [1.0, 2.0, 3.0]
            .iter()
            .flat_map(|k| plane.iter().map(move |v| v * k))
            .collect();
        let cfg = Augment {
            copies: 40,
            shift: 1,
            crop: 0.6,
            flip: true,
            ..Default::default()
        };
        let copies = vec![0u32; 40];
        let out = copy_rows(&cfg, &row, 3 * h * w, &copies, Some([3, h, w]), 7);
        assert_eq!(out.len(), 40 * 3 * h * w);
        let mut changed = 0;
        for c in out.chunks_exact(3 * h * w) {
            let (r, g, b) = (&c[..h * w], &c[h * w..2 * h * w], &c[2 * h * w..]);
            for i in 0..h * w {
                assert!((g[i] - 2.0 * r[i]).abs() < 1e-4 && (b[i] - 3.0 * r[i]).abs() < 1e-4);
            }
            changed += usize::from(r != &plane[..]);
        }
        assert!(changed >= 35, "{changed} of 40 copies changed");
        assert_eq!(
            out,
            copy_rows(&cfg, &row, 3 * h * w, &copies, Some([3, h, w]), 7)
        );
        // flip alone: each copy is the image or its mirror, about half each
        let flip = Augment {
            copies: 1,
            flip: true,
            ..Default::default()
        };
        let out = copy_rows(&flip, &row, 3 * h * w, &copies, Some([3, h, w]), 3);
        let mirror: Vec<f32> = row
            .chunks_exact(w)
            .flat_map(|r| r.iter().rev().copied())
            .collect();
        let flipped = out
            .chunks_exact(3 * h * w)
            .filter(|c| *c == &mirror[..])
            .count();
        let same = out
            .chunks_exact(3 * h * w)
            .filter(|c| *c == &row[..])
            .count();
        assert_eq!(flipped + same, 40);
        assert!((10..=30).contains(&flipped), "{flipped} of 40 mirrored");
    }

    #[test]
    fn problems_name_the_key() {
        let keys = |a: Augment| a.problems().into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(Augment {
                copies: 2,
                ..Default::default()
            }),
            ["augment.copies"]
        );
        assert_eq!(
            keys(Augment {
                shift: 2,
                ..Default::default()
            }),
            ["augment.copies"]
        );
        assert_eq!(
            keys(Augment {
                copies: 1,
                rotate: 200.0,
                noise: -1.0,
                ..Default::default()
            }),
            ["augment.rotate", "augment.noise"]
        );
        let a = Augment {
            copies: 1,
            shift: 1,
            ..Default::default()
        };
        let e = a.layout(784, None).unwrap_err().to_string();
        assert!(
            e.contains("shift, rotate, crop and flip need the image layout; add `image = [height, width]` (height × width × channels = 784"),
            "{e}"
        );
        assert_eq!(a.layout(784, Some([28, 28])).unwrap(), Some([1, 28, 28]));
        assert_eq!(
            a.layout(3 * 784, Some([28, 28])).unwrap(),
            Some([3, 28, 28])
        );
        assert_eq!(
            keys(Augment {
                copies: 1,
                crop: 1.5,
                ..Default::default()
            }),
            ["augment.crop"]
        );
        let e = a.layout(64, Some([28, 28])).unwrap_err().to_string();
        assert!(
            e.contains(
                "augment.image = [28, 28] is 784 pixels but the rows have 64 raw feature columns"
            ),
            "{e}"
        );
    }
}
