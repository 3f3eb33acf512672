//! Metrics computed from targets and predictions, with scikit-learn's definitions.
//! Classification: accuracy, confusion matrix, per-class precision / recall / F1, macro
//! and weighted F1, balanced accuracy, log-loss, top-k, ROC-AUC, PR-AUC, ECE (0 for an
//! undefined ratio, as `zero_division=0`). Regression: MSE, RMSE, MAE, R², MAPE.

use serde::{Deserialize, Serialize};

/// Counts per (true class, predicted class).
pub fn confusion_matrix(truth: &[u32], pred: &[u32], k: usize) -> Vec<Vec<u64>> {
    let mut m = vec![vec![0u64; k]; k];
    for (&t, &p) in truth.iter().zip(pred) {
        if (t as usize) < k && (p as usize) < k {
            m[t as usize][p as usize] += 1;
        }
    }
    m
}

/// Fraction of rows predicted correctly.
pub fn accuracy(truth: &[u32], pred: &[u32]) -> f64 {
    if truth.is_empty() {
        return 0.0;
    }
    truth.iter().zip(pred).filter(|(a, b)| a == b).count() as f64 / truth.len() as f64
}

/// Precision, recall, F1 and support of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScores {
    /// Class label.
    pub label: String,
    /// TP / (TP + FP), 0 when the class is never predicted.
    pub precision: f64,
    /// TP / (TP + FN), 0 when the class never occurs.
    pub recall: f64,
    /// Harmonic mean of precision and recall, 0 when both are 0.
    pub f1: f64,
    /// Rows of this class.
    pub support: u64,
}

/// Per-class scores from a confusion matrix.
pub fn per_class(cm: &[Vec<u64>], labels: &[String]) -> Vec<ClassScores> {
    let k = cm.len();
    (0..k)
        .map(|c| {
            let tp = cm[c][c] as f64;
            let predicted: u64 = (0..k).map(|r| cm[r][c]).sum();
            let support: u64 = cm[c].iter().sum();
            let precision = if predicted == 0 {
                0.0
            } else {
                tp / predicted as f64
            };
            let recall = if support == 0 {
                0.0
            } else {
                tp / support as f64
            };
            let f1 = if precision + recall == 0.0 {
                0.0
            } else {
                2.0 * precision * recall / (precision + recall)
            };
            ClassScores {
                label: labels.get(c).cloned().unwrap_or_else(|| c.to_string()),
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect()
}

/// Unweighted mean of the per-class F1 scores.
pub fn macro_f1(scores: &[ClassScores]) -> f64 {
    if scores.is_empty() {
        return 0.0;
    }
    scores.iter().map(|s| s.f1).sum::<f64>() / scores.len() as f64
}

/// Mean recall over the classes that occur in `truth` (scikit-learn's
/// `balanced_accuracy_score`).
pub fn balanced_accuracy(cm: &[Vec<u64>]) -> f64 {
    let recalls: Vec<f64> = cm
        .iter()
        .enumerate()
        .filter_map(|(c, row)| {
            let support: u64 = row.iter().sum();
            (support > 0).then(|| row[c] as f64 / support as f64)
        })
        .collect();
    if recalls.is_empty() {
        0.0
    } else {
        recalls.iter().sum::<f64>() / recalls.len() as f64
    }
}

/// Support-weighted mean of the per-class F1 scores.
pub fn weighted_f1(scores: &[ClassScores]) -> f64 {
    let total: u64 = scores.iter().map(|s| s.support).sum();
    if total == 0 {
        return 0.0;
    }
    scores.iter().map(|s| s.f1 * s.support as f64).sum::<f64>() / total as f64
}

/// Mean negative log-likelihood of the true class; probabilities clipped to [1e-15, 1].
pub fn log_loss(truth: &[u32], probs: &[f32], k: usize) -> f64 {
    if truth.is_empty() {
        return 0.0;
    }
    let total: f64 = truth
        .iter()
        .zip(probs.chunks_exact(k))
        .map(|(&t, row)| {
            let sum: f64 = row.iter().map(|&p| p as f64).sum();
            -((row[t as usize] as f64 / sum).clamp(1e-15, 1.0)).ln()
        })
        .sum();
    total / truth.len() as f64
}

/// Fraction of rows whose true class is among the `top` highest scores
/// (scikit-learn's `top_k_accuracy_score`).
pub fn top_k_accuracy(truth: &[u32], probs: &[f32], k: usize, top: usize) -> f64 {
    if truth.is_empty() {
        return 0.0;
    }
    let hits = truth
        .iter()
        .zip(probs.chunks_exact(k))
        .filter(|(t, row)| {
            // Ties rank the higher class index first, as scikit-learn's reversed stable sort.
            let t = **t as usize;
            let mine = row[t];
            row.iter()
                .enumerate()
                .filter(|&(j, &p)| p > mine || (p == mine && j > t))
                .count()
                < top
        })
        .count();
    hits as f64 / truth.len() as f64
}

/// Area under the ROC curve of scores for a binary `positive` flag (ties count half, as
/// the Mann-Whitney statistic); None when one class is absent.
pub fn roc_auc(positive: &[bool], scores: &[f64]) -> Option<f64> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks over ties.
    let mut rank = vec![0.0f64; scores.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &t in &idx[i..=j] {
            rank[t] = r;
        }
        i = j + 1;
    }
    let n_pos = positive.iter().filter(|&&p| p).count() as f64;
    let n_neg = positive.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return None;
    }
    let sum_pos: f64 = positive
        .iter()
        .zip(&rank)
        .filter(|(p, _)| **p)
        .map(|(_, r)| r)
        .sum();
    Some((sum_pos - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg))
}

/// Average precision (scikit-learn's `average_precision_score`, the area under the
/// precision-recall curve as a step sum); None when there is no positive row.
pub fn average_precision(positive: &[bool], scores: &[f64]) -> Option<f64> {
    let n_pos = positive.iter().filter(|&&p| p).count();
    if n_pos == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp, mut ap, mut prev_recall) = (0usize, 0usize, 0.0f64, 0.0f64);
    let mut i = 0;
    while i < idx.len() {
        // Every row sharing this score crosses the threshold together.
        let s = scores[idx[i]];
        while i < idx.len() && scores[idx[i]] == s {
            if positive[idx[i]] {
                tp += 1
            } else {
                fp += 1
            }
            i += 1;
        }
        let recall = tp as f64 / n_pos as f64;
        let precision = tp as f64 / (tp + fp) as f64;
        ap += (recall - prev_recall) * precision;
        prev_recall = recall;
    }
    Some(ap)
}

/// One-vs-rest macro average of a binary ranking metric over the classes present.
pub fn one_vs_rest(
    truth: &[u32],
    probs: &[f32],
    k: usize,
    metric: fn(&[bool], &[f64]) -> Option<f64>,
) -> Option<f64> {
    if k == 2 {
        let pos: Vec<bool> = truth.iter().map(|&t| t == 1).collect();
        let s: Vec<f64> = probs.chunks_exact(2).map(|r| r[1] as f64).collect();
        return metric(&pos, &s);
    }
    let vals: Vec<f64> = (0..k)
        .filter_map(|c| {
            let pos: Vec<bool> = truth.iter().map(|&t| t as usize == c).collect();
            let s: Vec<f64> = probs.chunks_exact(k).map(|r| r[c] as f64).collect();
            metric(&pos, &s)
        })
        .collect();
    (!vals.is_empty()).then(|| vals.iter().sum::<f64>() / vals.len() as f64)
}

/// Expected calibration error: 10 equal-width bins of the top probability `(lo, hi]`,
/// weighted |accuracy - confidence| per bin.
pub fn ece(truth: &[u32], probs: &[f32], k: usize) -> f64 {
    let n = truth.len();
    if n == 0 {
        return 0.0;
    }
    let mut bins = [(0usize, 0.0f64, 0usize); 10]; // (count, confidence sum, correct)
    for (&t, row) in truth.iter().zip(probs.chunks_exact(k)) {
        let (mut best, mut conf) = (0usize, row[0]);
        for (j, &p) in row.iter().enumerate() {
            if p > conf {
                best = j;
                conf = p;
            }
        }
        let b = ((conf as f64 * 10.0).ceil() as usize).clamp(1, 10) - 1;
        bins[b].0 += 1;
        bins[b].1 += conf as f64;
        bins[b].2 += usize::from(best == t as usize);
    }
    bins.iter()
        .filter(|b| b.0 > 0)
        .map(|&(c, s, ok)| (c as f64 / n as f64) * (ok as f64 / c as f64 - s / c as f64).abs())
        .sum()
}

/// Regression scores of `pred` against `truth`.
#[derive(Debug, Clone, PartialEq)]
pub struct RegressionScores {
    /// Mean squared error.
    pub mse: f64,
    /// Square root of the MSE.
    pub rmse: f64,
    /// Mean absolute error.
    pub mae: f64,
    /// Coefficient of determination; `Err` with the reason when it is undefined (a
    /// constant target).
    pub r2: Result<f64, String>,
    /// Mean absolute percentage error as a fraction, `|y - p| / max(|y|, f64::EPSILON)`
    /// (scikit-learn's `mean_absolute_percentage_error`).
    pub mape: f64,
}

/// MSE, RMSE, MAE, R² and MAPE of `pred` against `truth`.
pub fn regression(truth: &[f32], pred: &[f32]) -> RegressionScores {
    let n = truth.len().max(1) as f64;
    let (mut se, mut ae, mut ape) = (0.0f64, 0.0f64, 0.0f64);
    for (&t, &p) in truth.iter().zip(pred) {
        let (t, p) = (f64::from(t), f64::from(p));
        se += (t - p).powi(2);
        ae += (t - p).abs();
        ape += (t - p).abs() / t.abs().max(f64::EPSILON);
    }
    let mean = truth.iter().map(|&t| f64::from(t)).sum::<f64>() / n;
    let sst: f64 = truth.iter().map(|&t| (f64::from(t) - mean).powi(2)).sum();
    let r2 = if sst > 0.0 {
        Ok(1.0 - se / sst)
    } else {
        Err(format!(
            "R² is undefined: every test target equals {mean}, so there is no variance to explain; judge the model by MAE or RMSE"
        ))
    };
    RegressionScores {
        mse: se / n,
        rmse: (se / n).sqrt(),
        mae: ae / n,
        r2,
        mape: ape / n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden numbers from scikit-learn 1.5:
    /// y_true = [0, 0, 1, 1, 2, 2, 2, 0], y_pred = [0, 1, 1, 1, 2, 0, 2, 0]
    /// accuracy_score = 0.75; f1_score(average=None) = [0.6666667, 0.8, 0.8];
    /// f1_score(average="macro") = 0.7555556
    #[test]
    fn matches_scikit_learn() {
        let t = [0, 0, 1, 1, 2, 2, 2, 0];
        let p = [0, 1, 1, 1, 2, 0, 2, 0];
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(accuracy(&t, &p), 0.75);
        let cm = confusion_matrix(&t, &p, 3);
        assert_eq!(cm, vec![vec![2, 1, 0], vec![0, 2, 0], vec![1, 0, 2]]);
        let s = per_class(&cm, &labels);
        let f1: Vec<f64> = s.iter().map(|c| c.f1).collect();
        for (a, b) in f1.iter().zip([2.0 / 3.0, 0.8, 0.8]) {
            assert!((a - b).abs() < 1e-12, "{f1:?}");
        }
        assert!((macro_f1(&s) - 0.755_555_555_555_555_6).abs() < 1e-12);
    }

    /// Golden numbers from scikit-learn 1.9.1 on 8 rows of 3-class probabilities.
    #[test]
    fn probability_metrics_match_scikit_learn() {
        let t = [0, 0, 1, 1, 2, 2, 2, 0];
        let p: Vec<f32> = vec![
            0.7, 0.2, 0.1, 0.3, 0.4, 0.3, 0.1, 0.8, 0.1, 0.2, 0.5, 0.3, 0.1, 0.1, 0.8, 0.5, 0.2,
            0.3, 0.2, 0.2, 0.6, 0.6, 0.3, 0.1,
        ];
        let pred = [0, 1, 1, 1, 2, 0, 2, 0];
        let cm = confusion_matrix(&t, &pred, 3);
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        close(balanced_accuracy(&cm), 0.777_777_777_777_777_7);
        close(weighted_f1(&per_class(&cm, &[])), 0.75);
        close(log_loss(&t, &p, 3), 0.615_713_260_413_868_9);
        close(top_k_accuracy(&t, &p, 3, 2), 0.875);
        close(
            one_vs_rest(&t, &p, 3, roc_auc).unwrap(),
            0.955_555_555_555_555_4,
        );
        close(ece(&t, &p, 3), 0.2375);
        // binary: roc_auc_score 0.7777778, average_precision_score 0.8666667
        let pos = [false, false, true, true, false, true];
        let s = [0.1, 0.4, 0.35, 0.8, 0.4, 0.9];
        close(roc_auc(&pos, &s).unwrap(), 0.777_777_777_777_777_8);
        close(
            average_precision(&pos, &s).unwrap(),
            0.866_666_666_666_666_7,
        );
        assert_eq!(roc_auc(&[true, true], &[0.1, 0.2]), None);
    }

    /// A class that is never predicted gets precision 0 and F1 0 (zero_division=0).
    #[test]
    fn never_predicted_class_scores_zero() {
        let t = [0, 1, 2, 2];
        let p = [0, 1, 1, 1];
        let s = per_class(&confusion_matrix(&t, &p, 3), &[]);
        assert_eq!((s[2].precision, s[2].recall, s[2].f1), (0.0, 0.0, 0.0));
        assert!((s[1].precision - 1.0 / 3.0).abs() < 1e-12);
        // sklearn: f1_score(average="macro") = (1 + 0.5 + 0) / 3
        assert!((macro_f1(&s) - 0.5).abs() < 1e-12);
        assert_eq!(accuracy(&t, &t), 1.0);
    }

    #[test]
    fn regression_matches_scikit_learn() {
        // sklearn.metrics on y = [3, -0.5, 2, 7, 0], p = [2.5, 0.0, 2, 8, 0.25]
        let y = [3.0, -0.5, 2.0, 7.0, 0.0];
        let p = [2.5, 0.0, 2.0, 8.0, 0.25];
        let r = regression(&y, &p);
        let close =
            |a: f64, b: f64| assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} vs {b}");
        close(r.mse, 0.3125);
        close(r.rmse, 0.5590169943749475);
        close(r.mae, 0.45);
        close(r.r2.clone().unwrap(), 0.956354748603352);
        // a zero target divides by f64::EPSILON, as scikit-learn does
        close(r.mape, 225179981368525.06);
        // a perfect fit
        let perfect = regression(&y, &y);
        assert_eq!(
            (perfect.mse, perfect.mae, perfect.r2.unwrap()),
            (0.0, 0.0, 1.0)
        );
        // a constant target: R² is undefined and says why
        let flat = regression(&[2.0, 2.0, 2.0], &[2.0, 2.5, 1.0]);
        let e = flat.r2.unwrap_err();
        assert!(e.contains("every test target equals 2"), "{e}");
        close(flat.mae, 0.5);
    }
}
