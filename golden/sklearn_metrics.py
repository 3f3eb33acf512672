"""Golden numbers for crates/kiln-evaluate/src/metrics.rs, from scikit-learn.

Run: /tmp/golden-venv/bin/python golden/sklearn_metrics.py

Every f64 is printed with 17 significant digits (it reads back as the same f64), under
the name of the Rust test that uses it. kiln's classification metrics take the
probabilities as f32, so the probability-based metrics are printed twice: on the f64
values of the decimal literals (what scikit-learn sees when the test's numbers are typed
into Python) and on those literals rounded to f32 and widened to f64 (what kiln sees).
"""

import warnings

import numpy as np
import sklearn
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_absolute_percentage_error,
    mean_squared_error,
    precision_score,
    r2_score,
    recall_score,
    roc_auc_score,
    root_mean_squared_error,
    top_k_accuracy_score,
)


def f64(v):
    """An f64 as a Rust literal with 17 significant digits."""
    s = f"{float(v):.17g}"
    if "." not in s and "e" not in s and "inf" not in s and "nan" not in s:
        s += ".0"
    return s


def arr(vs):
    return "[" + ", ".join(f64(v) for v in vs) + "]"


def show(name, v):
    print(f"  {name} = {arr(v) if np.ndim(v) else f64(v)}")


def ece(truth, probs, bins=10):
    """Expected calibration error with kiln's definition (scikit-learn has no ECE):
    bins (lo, hi] of the top probability, first index wins a tie for the top,
    sum over bins of count / n * |accuracy - mean confidence|."""
    truth = np.asarray(truth)
    conf = probs.max(axis=1)
    best = probs.argmax(axis=1)
    b = np.clip(np.ceil(conf * bins).astype(int), 1, bins) - 1
    total = 0.0
    for k in range(bins):
        m = b == k
        if m.any():
            total += m.sum() / len(truth) * abs((best[m] == truth[m]).mean() - conf[m].mean())
    return total


# Expected: f32-rounded rows do not sum to one exactly; a constant target makes R² -inf.
warnings.filterwarnings("ignore", message="The y_prob values do not sum to one")
warnings.filterwarnings("ignore", message="divide by zero encountered")

print(f"# scikit-learn {sklearn.__version__}, numpy {np.__version__}")
print()

# ---------------------------------------------------------------------------------------
print("// metrics.rs: matches_scikit_learn")
t = [0, 0, 1, 1, 2, 2, 2, 0]
p = [0, 1, 1, 1, 2, 0, 2, 0]
show("accuracy_score", accuracy_score(t, p))
print(f"  confusion_matrix = {confusion_matrix(t, p, labels=[0, 1, 2]).tolist()}")
show("f1_score(average=None)", f1_score(t, p, average=None))
show("f1_score(average='macro')", f1_score(t, p, average="macro"))
print()

# ---------------------------------------------------------------------------------------
print("// metrics.rs: probability_metrics_match_scikit_learn")
probs_lit = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.3, 0.4, 0.3],
        [0.1, 0.8, 0.1],
        [0.2, 0.5, 0.3],
        [0.1, 0.1, 0.8],
        [0.5, 0.2, 0.3],
        [0.2, 0.2, 0.6],
        [0.6, 0.3, 0.1],
    ],
    dtype=np.float64,
)
pred = [0, 1, 1, 1, 2, 0, 2, 0]
show("balanced_accuracy_score", balanced_accuracy_score(t, pred))
show("f1_score(average='weighted')", f1_score(t, pred, average="weighted"))
for label, probs in [
    ("f64 literals", probs_lit),
    ("f32-rounded literals (as kiln sees them)", probs_lit.astype(np.float32).astype(np.float64)),
]:
    print(f"  -- probabilities: {label}")
    show("log_loss", log_loss(t, probs, labels=[0, 1, 2]))
    # kiln divides each row by its sum before the log (a no-op for rows that sum to 1)
    show("log_loss (rows renormalised)", log_loss(t, probs / probs.sum(axis=1, keepdims=True), labels=[0, 1, 2]))
    show("top_k_accuracy_score(k=2)", top_k_accuracy_score(t, probs, k=2, labels=[0, 1, 2]))
    show(
        "roc_auc_score(multi_class='ovr', average='macro')",
        roc_auc_score(t, probs, multi_class="ovr", average="macro", labels=[0, 1, 2]),
    )
    show("ece (numpy, kiln's definition; not a scikit-learn function)", ece(t, probs))
pos = [False, False, True, True, False, True]
s = [0.1, 0.4, 0.35, 0.8, 0.4, 0.9]
show("binary roc_auc_score", roc_auc_score(pos, s))
show("binary average_precision_score", average_precision_score(pos, s))
print()

# ---------------------------------------------------------------------------------------
print("// metrics.rs: never_predicted_class_scores_zero")
t2 = [0, 1, 2, 2]
p2 = [0, 1, 1, 1]
kw = dict(average=None, labels=[0, 1, 2], zero_division=0)
show("precision_score(average=None, zero_division=0)", precision_score(t2, p2, **kw))
show("recall_score(average=None, zero_division=0)", recall_score(t2, p2, **kw))
show("f1_score(average=None, zero_division=0)", f1_score(t2, p2, **kw))
show("f1_score(average='macro', zero_division=0)", f1_score(t2, p2, average="macro", zero_division=0))
show("accuracy_score(t, t)", accuracy_score(t2, t2))
print()

# ---------------------------------------------------------------------------------------
print("// metrics.rs: regression_matches_scikit_learn")
y = np.array([3.0, -0.5, 2.0, 7.0, 0.0], dtype=np.float32).astype(np.float64)
yp = np.array([2.5, 0.0, 2.0, 8.0, 0.25], dtype=np.float32).astype(np.float64)
show("mean_squared_error", mean_squared_error(y, yp))
show("root_mean_squared_error", root_mean_squared_error(y, yp))
show("mean_absolute_error", mean_absolute_error(y, yp))
show("r2_score", r2_score(y, yp))
show("mean_absolute_percentage_error", mean_absolute_percentage_error(y, yp))
print("  -- perfect fit (y, y)")
show("mean_squared_error", mean_squared_error(y, y))
show("mean_absolute_error", mean_absolute_error(y, y))
show("r2_score", r2_score(y, y))
print("  -- constant target y = [2, 2, 2], p = [2, 2.5, 1]")
show("mean_absolute_error", mean_absolute_error([2.0, 2.0, 2.0], [2.0, 2.5, 1.0]))
show(
    "r2_score(force_finite=False) (undefined; kiln returns Err)",
    r2_score([2.0, 2.0, 2.0], [2.0, 2.5, 1.0], force_finite=False),
)
