//! The report's plots, drawn with plotters into SVG and PNG files (PNG text uses the
//! bundled DejaVu Sans Mono, so no system fonts are needed): training curves, confusion
//! matrix heatmap, reliability diagram, ROC and precision-recall curves (binary tasks),
//! predicted-vs-actual (regression) and misclassified test images (image models).

use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

/// Pixel size of every plot.
pub const SIZE: (u32, u32) = (800, 500);

const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");

/// One epoch of a training history (history.json's record).
pub use kiln_core::artifact::history::EpochRecord as EpochPoint;

/// A training history to draw, named after the stage that trained it.
#[derive(Debug, Clone, PartialEq)]
pub struct Curves {
    /// The training stage's id.
    pub name: String,
    /// `accuracy` or `r2`.
    pub metric: String,
    /// The epochs run.
    pub epochs: Vec<EpochPoint>,
    /// The epoch whose weights were kept.
    pub best_epoch: usize,
}

type PlotResult = Result<(), String>;

/// Points of a line, (x, y).
pub type Line = Vec<(f64, f64)>;

fn err<E: std::fmt::Display>(e: E) -> String {
    format!("drawing a plot: {e}")
}

/// Something that draws itself on any plotters backend.
pub trait Draw {
    /// Draws onto `root` (already filled white).
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> PlotResult;
}

/// Draws `plot` into `<dir>/<stem>.svg` and `<dir>/<stem>.png`, each written atomically.
/// Returns the two file names.
pub fn save(plot: &impl Draw, dir: &Path, stem: &str) -> Result<[String; 2], String> {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        if plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_err() {
            tracing::warn!("the bundled font did not load; plots will lack text");
        }
    });
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        plot.draw(&root)?;
        root.present().map_err(err)?;
    }
    let mut rgb = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        plot.draw(&root)?;
        root.present().map_err(err)?;
    }
    let mut png_bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png_bytes, SIZE.0, SIZE.1);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(err)?;
        w.write_image_data(&rgb).map_err(err)?;
    }
    let (svg_name, png_name) = (format!("{stem}.svg"), format!("{stem}.png"));
    kiln_core::atomic_write(&dir.join(&svg_name), svg.as_bytes()).map_err(err)?;
    kiln_core::atomic_write(&dir.join(&png_name), &png_bytes).map_err(err)?;
    Ok([svg_name, png_name])
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    if lo > hi {
        (0.0, 1.0)
    } else if (hi - lo).abs() < 1e-12 {
        (lo - 0.5, hi + 0.5)
    } else {
        let pad = (hi - lo) * 0.05;
        (lo - pad, hi + pad)
    }
}

fn line_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    x: (f64, f64),
    y: (f64, f64),
    series: &[(&str, RGBColor, Line)],
) -> PlotResult {
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style((FONT, 13))
        .draw()
        .map_err(err)?;
    for (name, color, points) in series {
        let c = *color;
        chart
            .draw_series(LineSeries::new(points.iter().copied(), c.stroke_width(2)))
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        if points.len() <= 60 {
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, c.filled())))
                .map_err(err)?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 13))
        .draw()
        .map_err(err)
}

impl Draw for Curves {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> PlotResult {
        let panels = root.split_evenly((1, 2));
        let ep = |f: fn(&EpochPoint) -> f64| -> Vec<(f64, f64)> {
            self.epochs.iter().map(|e| (e.epoch as f64, f(e))).collect()
        };
        let x = (0.5, self.epochs.len().max(1) as f64 + 0.5);
        let (tl, vl) = (ep(|e| e.train_loss), ep(|e| e.valid_loss));
        let yl = range(tl.iter().chain(&vl).map(|p| p.1));
        line_chart(
            &panels[0],
            &format!("{}: loss (best epoch {})", self.name, self.best_epoch),
            "epoch",
            "loss",
            x,
            yl,
            &[("train", BLUE, tl), ("valid", RED, vl)],
        )?;
        let (tm, vm) = (ep(|e| e.train_metric), ep(|e| e.valid_metric));
        let ym = range(tm.iter().chain(&vm).map(|p| p.1));
        line_chart(
            &panels[1],
            &format!("{}: {}", self.name, self.metric),
            "epoch",
            &self.metric,
            x,
            ym,
            &[("train", BLUE, tm), ("valid", RED, vm)],
        )
    }
}

/// Images per side of the misclassified grid.
pub const GRID: usize = 4;

/// The first `limit` test rows whose predicted class is not the true one, as (row, true
/// class, predicted class).
pub fn misclassified(truth: &[u32], predicted: &[u32], limit: usize) -> Vec<(usize, u32, u32)> {
    truth
        .iter()
        .zip(predicted)
        .enumerate()
        .filter(|(_, (t, p))| t != p)
        .map(|(i, (&t, &p))| (i, t, p))
        .take(limit)
        .collect()
}

/// Misclassified test images in a [`GRID`] x [`GRID`] grid, each captioned "true →
/// predicted"; each image's values stretched from its own minimum (black) to maximum
/// (white), one channel as grey, three as red, green and blue.
pub struct Misclassified<'a> {
    /// Variant name.
    pub name: &'a str,
    /// The shape of every image.
    pub image: kiln_core::ImageShape,
    /// (the image's features, its true label, the predicted label).
    pub cells: Vec<(&'a [f32], &'a str, &'a str)>,
}

impl Draw for Misclassified<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> PlotResult {
        let root = root
            .titled(
                &format!(
                    "{}: misclassified test images (true → predicted)",
                    self.name
                ),
                (FONT, 18),
            )
            .map_err(err)?;
        let s = self.image;
        let plane = s.height * s.width;
        for (area, (px, truth, predicted)) in
            root.split_evenly((GRID, GRID)).iter().zip(&self.cells)
        {
            let cell = area
                .titled(&format!("{truth} → {predicted}"), (FONT, 14))
                .map_err(err)?;
            let (w, h) = cell.dim_in_pixel();
            let side = (w.min(h) as usize / s.height.max(s.width)).max(1) as i32;
            // centred in its cell
            let left = (w as i32 - side * s.width as i32).max(0) / 2;
            let (lo, hi) = range(px.iter().map(|&v| f64::from(v)));
            let shade = |v: f32| {
                (((f64::from(v) - lo) / (hi - lo).max(1e-12)) * 255.0).clamp(0.0, 255.0) as u8
            };
            for y in 0..s.height {
                for x in 0..s.width {
                    let at = |c: usize| shade(px[c * plane + y * s.width + x]);
                    let colour = if s.channels >= 3 {
                        RGBColor(at(0), at(1), at(2))
                    } else {
                        let g = at(0);
                        RGBColor(g, g, g)
                    };
                    let (x0, y0) = (left + x as i32 * side, y as i32 * side);
                    cell.draw(&Rectangle::new(
                        [(x0, y0), (x0 + side, y0 + side)],
                        colour.filled(),
                    ))
                    .map_err(err)?;
                }
            }
        }
        Ok(())
    }
}

/// A confusion matrix heatmap, each row normalised by its class count.
pub struct Confusion<'a> {
    /// Variant name.
    pub name: &'a str,
    /// Class labels in index order.
    pub labels: &'a [String],
    /// Counts, rows = truth.
    pub matrix: &'a [Vec<u64>],
}

impl Draw for Confusion<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> PlotResult {
        let k = self.matrix.len();
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!(
                    "{}: confusion matrix (rows = truth, share of the row)",
                    self.name
                ),
                (FONT, 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(72)
            .build_cartesian_2d((0..k).into_segmented(), (0..k).into_segmented())
            .map_err(err)?;
        let labels = self.labels;
        // truth 0 at the top: row t is drawn at y = k - 1 - t
        let x_name = move |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        };
        let y_name = move |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) if *i < k => {
                labels.get(k - 1 - *i).cloned().unwrap_or_default()
            }
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("predicted")
            .y_desc("true")
            .x_labels(k.min(30))
            .y_labels(k.min(30))
            .x_label_formatter(&x_name)
            .y_label_formatter(&y_name)
            .label_style((FONT, 12))
            .draw()
            .map_err(err)?;
        let mut cells = Vec::new();
        for (t, row) in self.matrix.iter().enumerate() {
            let total = row.iter().sum::<u64>().max(1) as f64;
            for (p, &c) in row.iter().enumerate() {
                cells.push((p, k - 1 - t, c, c as f64 / total));
            }
        }
        use SegmentValue::{CenterOf, Exact};
        chart
            .draw_series(cells.iter().map(|&(x, y, _, share)| {
                // white (0) to dark blue (1)
                let shade = (255.0 * (1.0 - share)) as u8;
                let color = RGBColor(shade, shade, 255 - (share * 100.0) as u8);
                Rectangle::new(
                    [(Exact(x), Exact(y)), (Exact(x + 1), Exact(y + 1))],
                    color.filled(),
                )
            }))
            .map_err(err)?;
        if k <= 12 {
            chart
                .draw_series(
                    cells
                        .iter()
                        .filter(|c| c.2 > 0)
                        .map(|&(x, y, count, share)| {
                            let color = if share > 0.5 { WHITE } else { BLACK };
                            Text::new(
                                count.to_string(),
                                (CenterOf(x), CenterOf(y)),
                                (FONT, 13).into_font().color(&color).pos(
                                    plotters::style::text_anchor::Pos::new(
                                        plotters::style::text_anchor::HPos::Center,
                                        plotters::style::text_anchor::VPos::Center,
                                    ),
                                ),
                            )
                        }),
                )
                .map_err(err)?;
        }
        Ok(())
    }
}

/// A reliability diagram: per confidence bin, the accuracy against the mean confidence.
pub struct Reliability<'a> {
    /// Variant name.
    pub name: &'a str,
    /// (mean confidence, accuracy, rows) per non-empty bin.
    pub bins: Vec<(f64, f64, usize)>,
}

impl Draw for Reliability<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> PlotResult {
        let points: Vec<(f64, f64)> = self.bins.iter().map(|b| (b.0, b.1)).collect();
        line_chart(
            root,
            &format!("{}: reliability (10 bins)", self.name),
            "mean confidence",
            "accuracy",
            (0.0, 1.0),
            (0.0, 1.0),
            &[
                (
                    "perfect calibration",
                    RGBColor(150, 150, 150),
                    vec![(0.0, 0.0), (1.0, 1.0)],
                ),
                ("model", BLUE, points),
            ],
        )
    }
}

/// The ten equal-width confidence bins of a reliability diagram: (mean confidence,
/// accuracy, rows) for each bin that holds rows. The bins are [`crate::metrics::ece`]'s:
/// `(lo, hi]` (a confidence of exactly 0.5 is in (0.4, 0.5]), the first `[0, 0.1]`.
pub fn reliability_bins(truth: &[u32], probs: &[f32], k: usize) -> Vec<(f64, f64, usize)> {
    let mut acc = [(0.0f64, 0usize, 0usize); 10];
    for (row, &t) in probs.chunks_exact(k.max(1)).zip(truth) {
        let (best, conf) = row
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (j, &p)| if p > b.1 { (j, p) } else { b });
        let bin = ((conf as f64 * 10.0).ceil() as usize).clamp(1, 10) - 1;
        acc[bin].0 += f64::from(conf);
        acc[bin].1 += usize::from(best == t as usize);
        acc[bin].2 += 1;
    }
    acc.iter()
        .filter(|b| b.2 > 0)
        .map(|&(c, ok, n)| (c / n as f64, ok as f64 / n as f64, n))
        .collect()
}

/// ROC and precision-recall curves of a binary classifier, side by side.
pub struct BinaryCurves<'a> {
    /// Variant name.
    pub name: &'a str,
    /// The positive class label.
    pub positive: &'a str,
    /// (false positive rate, true positive rate) points from the highest threshold down.
    pub roc: Vec<(f64, f64)>,
    /// (recall, precision) points from the highest threshold down.
    pub pr: Vec<(f64, f64)>,
    /// Area under the ROC curve.
    pub roc_auc: f64,
    /// Average precision.
    pub pr_auc: f64,
}

impl BinaryCurves<'_> {
    /// The curves of `scores` (probability of the positive class) against `positive`.
    pub fn points(positive: &[bool], scores: &[f64]) -> (Line, Line) {
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        let p = positive.iter().filter(|&&x| x).count().max(1) as f64;
        let n = (positive.len() as f64 - p).max(1.0);
        let (mut tp, mut fp) = (0.0, 0.0);
        let mut roc = vec![(0.0, 0.0)];
        let mut pr = vec![(0.0, 1.0)];
        for (i, &r) in order.iter().enumerate() {
            if positive[r] {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            // one point per distinct threshold
            if i + 1 == order.len() || scores[order[i + 1]] != scores[r] {
                roc.push((fp / n, tp / p));
                pr.push((tp / p, tp / (tp + fp)));
            }
        }
        (roc, pr)
    }
}

impl Draw for BinaryCurves<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> PlotResult {
        let panels = root.split_evenly((1, 2));
        let grey = RGBColor(150, 150, 150);
        line_chart(
            &panels[0],
            &format!("{}: ROC, AUC {:.4}", self.name, self.roc_auc),
            "false positive rate",
            &format!("true positive rate ({})", self.positive),
            (0.0, 1.0),
            (0.0, 1.0),
            &[
                ("chance", grey, vec![(0.0, 0.0), (1.0, 1.0)]),
                ("model", BLUE, self.roc.clone()),
            ],
        )?;
        line_chart(
            &panels[1],
            &format!("{}: precision-recall, AP {:.4}", self.name, self.pr_auc),
            "recall",
            "precision",
            (0.0, 1.0),
            (0.0, 1.05),
            &[("model", RED, self.pr.clone())],
        )
    }
}

/// Predicted against actual values of a regressor, with the line y = x.
pub struct Scatter<'a> {
    /// Variant name.
    pub name: &'a str,
    /// (actual, predicted) per row.
    pub points: Vec<(f64, f64)>,
}

impl Draw for Scatter<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> PlotResult {
        let r = range(self.points.iter().flat_map(|p| [p.0, p.1]));
        let mut chart = ChartBuilder::on(root)
            .caption(format!("{}: predicted vs actual", self.name), (FONT, 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(r.0..r.1, r.0..r.1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("actual")
            .y_desc("predicted")
            .label_style((FONT, 13))
            .draw()
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(
                [(r.0, r.0), (r.1, r.1)],
                RGBColor(150, 150, 150).stroke_width(2),
            ))
            .map_err(err)?;
        chart
            .draw_series(
                self.points
                    .iter()
                    .map(|&p| Circle::new(p, 2, BLUE.mix(0.5).filled())),
            )
            .map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// The grid shows the first misclassified rows, in row order, up to its limit.
    #[test]
    fn misclassified_rows_are_the_first_wrong_ones() {
        let truth = [0, 1, 2, 1, 0, 2, 2];
        let predicted = [0, 2, 2, 0, 0, 1, 2];
        assert_eq!(
            super::misclassified(&truth, &predicted, 16),
            [(1, 1, 2), (3, 1, 0), (5, 2, 1)]
        );
        assert_eq!(
            super::misclassified(&truth, &predicted, 2),
            [(1, 1, 2), (3, 1, 0)]
        );
        assert!(super::misclassified(&truth, &truth, 16).is_empty());
    }

    use super::*;

    #[test]
    fn roc_and_pr_points_by_hand() {
        // scores 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg)
        let (roc, pr) = BinaryCurves::points(&[true, false, true, false], &[0.9, 0.8, 0.7, 0.1]);
        assert_eq!(
            roc,
            vec![(0.0, 0.0), (0.0, 0.5), (0.5, 0.5), (0.5, 1.0), (1.0, 1.0)]
        );
        assert_eq!(
            pr,
            vec![
                (0.0, 1.0),
                (0.5, 1.0),
                (0.5, 0.5),
                (1.0, 2.0 / 3.0),
                (1.0, 0.5)
            ]
        );
        // tied scores are one threshold: 0.9 (pos) and 0.9 (neg) enter together
        let (roc, pr) = BinaryCurves::points(&[true, false, true], &[0.9, 0.9, 0.1]);
        assert_eq!(roc, vec![(0.0, 0.0), (1.0, 0.5), (1.0, 1.0)]);
        assert_eq!(pr, vec![(0.0, 1.0), (0.5, 0.5), (1.0, 2.0 / 3.0)]);
    }

    #[test]
    fn reliability_bins_by_hand() {
        // confidences 0.95 (right), 0.91 (wrong), 0.6 (right)
        let probs = [0.95, 0.05, 0.09, 0.91, 0.6, 0.4];
        let bins = reliability_bins(&[0, 0, 0], &probs, 2);
        assert_eq!(bins.len(), 2);
        assert!((bins[0].0 - 0.6).abs() < 1e-6 && bins[0].1 == 1.0 && bins[0].2 == 1);
        assert!((bins[1].0 - 0.93).abs() < 1e-6 && bins[1].1 == 0.5 && bins[1].2 == 2);
    }

    /// The diagram's bins are ECE's `(lo, hi]`: a confidence of exactly 0.5 is in
    /// (0.4, 0.5], apart from 0.55 in (0.5, 0.6]; 1.0 is in (0.9, 1]; and the ECE
    /// recomputed from the bins is metrics::ece.
    #[test]
    fn reliability_bins_are_the_bins_of_ece() {
        let probs = [0.5, 0.5, 0.45, 0.55, 1.0, 0.0];
        let truth = [0, 0, 0];
        let bins = reliability_bins(&truth, &probs, 2);
        assert_eq!(bins.len(), 3, "{bins:?}");
        assert_eq!(bins[0], (0.5, 1.0, 1));
        assert!((bins[1].0 - 0.55).abs() < 1e-6 && bins[1].1 == 0.0 && bins[1].2 == 1);
        assert_eq!(bins[2], (1.0, 1.0, 1));
        let ece: f64 = bins
            .iter()
            .map(|&(c, a, n)| n as f64 / 3.0 * (a - c).abs())
            .sum();
        assert!((ece - crate::metrics::ece(&truth, &probs, 2)).abs() < 1e-12);
    }
}
