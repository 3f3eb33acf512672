//! Classification metrics computed from labels and predictions: accuracy, confusion
//! matrix, per-class precision / recall / F1 and macro F1 (scikit-learn's definitions,
//! with 0 for an undefined ratio, as its `zero_division=0`).

use serde::Serialize;

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
#[derive(Debug, Clone, PartialEq, Serialize)]
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
}
