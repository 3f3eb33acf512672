"""scikit-learn's default models on kiln's own split and features, for `cargo xtask bench
tabular`: the train, valid and test splits of a kiln run's preprocess stage (`data/`:
train.arrow, valid.arrow, test.arrow — after kiln's imputation, scaling and encoding),
the models fitted on train + valid (they need no separate validation rows; HistGradient-
Boosting and the MLP hold out their own where they early-stop), scored on test.

Models, all with scikit-learn's defaults and `random_state = seed`: LogisticRegression /
Ridge, MLPClassifier / MLPRegressor, RandomForest (n_jobs 2), HistGradientBoosting.
Prints one JSON line: the test accuracy (classification) or R² (regression) of each, and
kiln's own from the run's eval/metrics.json.

Usage: sklearn_models.py RUN_DIR SEED
"""
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow.ipc as ipc
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, r2_score
from sklearn.neural_network import MLPClassifier, MLPRegressor


def load(path: Path, target: str):
    t = ipc.open_file(path).read_all()
    y = t.column(target).to_numpy()
    x = np.column_stack([t.column(c).to_numpy() for c in t.column_names if c != target])
    return x.astype(np.float32), y


def main() -> None:
    run, seed = Path(sys.argv[1]), int(sys.argv[2])
    data = run / "data"
    schema = json.loads((data / "schema.json").read_text())
    target = schema["target"]
    regression = schema["task"] == "regression"
    x_tr, y_tr = load(data / "train.arrow", target)
    x_va, y_va = load(data / "valid.arrow", target)
    x_te, y_te = load(data / "test.arrow", target)
    x_fit, y_fit = np.vstack([x_tr, x_va]), np.concatenate([y_tr, y_va])
    warnings.simplefilter("ignore", ConvergenceWarning)
    if regression:
        models = {
            "linear": Ridge(),
            "mlp": MLPRegressor(random_state=seed),
            "rf": RandomForestRegressor(random_state=seed, n_jobs=2),
            "hgb": HistGradientBoostingRegressor(random_state=seed),
        }
        score = r2_score
    else:
        models = {
            "linear": LogisticRegression(),
            "mlp": MLPClassifier(random_state=seed),
            "rf": RandomForestClassifier(random_state=seed, n_jobs=2),
            "hgb": HistGradientBoostingClassifier(random_state=seed),
        }
        score = accuracy_score
    out = {}
    for name, m in models.items():
        t = time.perf_counter()
        m.fit(x_fit, y_fit)
        out[name] = float(score(y_te, m.predict(x_te)))
        out[f"{name}_seconds"] = time.perf_counter() - t
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    key = "r2" if regression else "accuracy"
    out["kiln"] = metrics["variants"]["train"][key]
    out["metric"] = key
    out["rows"] = len(y_tr) + len(y_va) + len(y_te)
    out["features"] = x_tr.shape[1]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
