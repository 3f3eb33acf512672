//! Seeded augmentation of the train split: random oversampling of the smaller classes,
//! and augmented copies of each training row (images: random shift and rotation; any
//! table: gaussian noise on the features). Valid and test rows are never touched, and
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
    /// Image layout `[height, width]` of a row's raw feature columns, row-major (needed
    /// by `shift` and `rotate`; IDX sources give it themselves).
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
        let transforms = self.shift > 0 || self.rotate != 0.0 || self.noise != 0.0;
        if self.copies > 0 && !transforms {
            p.push((
                k("copies"),
                "copies without `shift`, `rotate` or `noise` would add exact duplicates; set one of them (or use `oversample`)".into(),
            ));
        }
        if self.copies == 0 && transforms {
            p.push((
                k("copies"),
                "`shift`, `rotate` and `noise` act on augmented copies; set `copies` to 1 or more"
                    .into(),
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

    /// The image layout for `width` raw feature columns: `image`, else `idx` (the IDX
    /// source's); an error when shift / rotate need one and none fits.
    pub(crate) fn layout(
        &self,
        width: usize,
        idx: Option<[usize; 2]>,
    ) -> Result<Option<[usize; 2]>> {
        if self.shift == 0 && self.rotate == 0.0 {
            return Ok(None);
        }
        let Some([h, w]) = self.image.or(idx) else {
            return Err(PreprocessError::Invalid(format!(
                "augment: shift and rotate need the image layout; add `image = [height, width]` (height × width = {width}, the number of raw feature columns)"
            )));
        };
        let pixels = h.checked_mul(w);
        if pixels != Some(width) {
            return Err(PreprocessError::Invalid(format!(
                "augment.image = [{h}, {w}] is {} pixels but the rows have {width} raw feature columns; give the layout of the raw columns",
                pixels.map_or_else(|| "more".to_string(), |p| p.to_string())
            )));
        }
        Ok(Some([h, w]))
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
/// columns); each copy is shifted and rotated by its own random draw when `layout` is
/// given.
pub(crate) fn copy_rows(
    cfg: &Augment,
    src: &[f32],
    w: usize,
    copies: &[u32],
    layout: Option<[usize; 2]>,
    seed: u64,
) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7368_6966_7421);
    let mut out = Vec::with_capacity(copies.len() * w);
    for &s in copies {
        let row = &src[s as usize * w..(s as usize + 1) * w];
        let Some([h, iw]) = layout else {
            out.extend_from_slice(row);
            continue;
        };
        let k = cfg.shift as i64;
        let dy = if k > 0 { rng.gen_range(-k..=k) } else { 0 };
        let dx = if k > 0 { rng.gen_range(-k..=k) } else { 0 };
        let deg = if cfg.rotate > 0.0 {
            rng.gen_range(-cfg.rotate..=cfg.rotate)
        } else {
            0.0
        };
        let rotated = if deg != 0.0 {
            rotate_image(row, h, iw, deg)
        } else {
            row.to_vec()
        };
        out.extend(shift_image(&rotated, h, iw, dy, dx));
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
            e.contains("shift and rotate need the image layout; add `image = [height, width]` (height × width = 784"),
            "{e}"
        );
        assert_eq!(a.layout(784, Some([28, 28])).unwrap(), Some([28, 28]));
        let e = a.layout(64, Some([28, 28])).unwrap_err().to_string();
        assert!(
            e.contains(
                "augment.image = [28, 28] is 784 pixels but the rows have 64 raw feature columns"
            ),
            "{e}"
        );
    }
}
