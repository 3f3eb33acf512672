"""Golden numbers for crates/kiln-evaluate/src/baseline.rs, from scikit-learn's defaults.

Run: /tmp/golden-venv/bin/python golden/sklearn_baselines.py

LogisticRegression() (C = 1, lbfgs, multinomial) and Ridge() (alpha = 1) fitted on the
small tables below (the same numbers are typed into the Rust tests), then predicting the
test rows. Every f64 is printed with 17 significant digits.
"""

import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression, Ridge


def table():
    # 3 classes, 2 features, overlapping: a fit that regularization visibly shrinks
    x = np.array(
        [[0.0, 0.0], [0.5, 0.2], [1.0, 0.1], [0.2, 0.9], [0.1, 1.4], [0.7, 1.1],
         [1.5, 1.6], [1.2, 1.9], [2.0, 1.3], [0.9, 0.8], [1.1, 0.4], [0.3, 1.8]],
        dtype=np.float32,
    ).astype(np.float64)
    y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 1, 0, 2])
    test = np.array([[0.4, 0.4], [0.6, 1.3], [1.6, 1.5], [1.0, 1.0]], dtype=np.float32).astype(np.float64)
    return x, y, test


def show(name, values):
    print(f"{name}: [{', '.join(f'{v:.17g}' for v in np.ravel(values))}]")


def main():
    print(f"# scikit-learn {sklearn.__version__}")
    x, y, test = table()
    lr = LogisticRegression(tol=1e-8, max_iter=10_000).fit(x, y)
    show("logistic_probabilities", lr.predict_proba(test))
    # regression: the target a noisy plane of the same features
    t = np.array([0.3, 0.9, 1.2, 1.0, 1.5, 1.9, 3.2, 3.0, 3.4, 1.8, 1.4, 2.0], dtype=np.float32).astype(np.float64)
    r = Ridge(alpha=1.0).fit(x, t)
    show("ridge_predictions", r.predict(test))


if __name__ == "__main__":
    main()
