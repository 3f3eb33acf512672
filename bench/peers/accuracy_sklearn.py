"""scikit-learn on kiln's own dataset artifact: the same split and the same preprocessed
features (train.arrow / valid.arrow / test.arrow of a kiln preprocess stage), to compare
test accuracy with kiln's model (docs/benchmarks.md, "accuracy against scikit-learn").

Fits LogisticRegression (lbfgs, max_iter 2000) and MLPClassifier with the hidden sizes,
optimizer settings, epochs and batch size of the pipeline's train stage (adam, no early
stopping, seeded) on the train rows (the rows kiln learns from; kiln also uses the valid
rows to keep its best epoch), scored on the test rows.
Usage: accuracy_sklearn.py <data dir> <hidden, e.g. 64,32> <lr> <epochs> <batch size> <seed>
"""
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pyarrow.ipc as ipc
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier


def load(path: Path, target: str):
    t = ipc.open_file(path).read_all()
    y = t.column(target).to_numpy()
    x = np.column_stack([t.column(c).to_numpy() for c in t.column_names if c != target])
    return x.astype(np.float32), y


def main() -> None:
    data = Path(sys.argv[1])
    hidden = tuple(int(h) for h in sys.argv[2].split(",") if h)
    lr, epochs, batch, seed = float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    target = json.loads((data / "schema.json").read_text())["target"]
    x_tr, y_tr = load(data / "train.arrow", target)
    x_te, y_te = load(data / "test.arrow", target)
    x_fit, y_fit = x_tr, y_tr
    warnings.simplefilter("ignore", ConvergenceWarning)
    logreg = LogisticRegression(max_iter=2000).fit(x_fit, y_fit)
    mlp = MLPClassifier(
        hidden_layer_sizes=hidden, learning_rate_init=lr, max_iter=epochs,
        batch_size=min(batch, len(y_fit)), random_state=seed,
    ).fit(x_fit, y_fit)
    print(json.dumps({
        "test_rows": len(y_te),
        "logistic_regression": float(logreg.score(x_te, y_te)),
        "mlp": float(mlp.score(x_te, y_te)),
    }))


if __name__ == "__main__":
    main()
