"""pandas + scikit-learn peer of `cargo xtask bench preprocess`: the preprocess stage of
pipelines/mnist-mlp.toml, written as a competent pandas user would (vectorised, no loops
over rows).

Same as kiln: read the four MNIST IDX .gz files, a DataFrame with 784 pixel columns and
the label, pixels scaled by 1/255 (float32), a seeded stratified 10 % validation split of
the 60k training rows (scikit-learn's train_test_split), the 10k test rows kept, and the
three splits written as Arrow IPC files (pyarrow's feather v2, uncompressed) plus a
schema.json with the column names and classes.
Different: kiln also writes profile.json (per-column min / max / missing counts), hashes
every file for its cache and writes run.json; this script does not.
Usage: prep_pandas.py <fixtures/mnist> <out dir>
"""
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from mnist import read_idx


def frame(prefix: Path) -> pd.DataFrame:
    images = read_idx(Path(f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(Path(f"{prefix}-labels-idx1-ubyte.gz"))
    cols = [f"pixel_{j}" for j in range(images.shape[1] * images.shape[2])]
    df = (pd.DataFrame(images.reshape(images.shape[0], -1), columns=cols) / 255.0).astype(np.float32)
    return df.assign(label=labels.astype(np.int64))


def main() -> None:
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    train = frame(data / "train")
    test = frame(data / "t10k")
    tr, va = train_test_split(train, test_size=0.1, stratify=train["label"], random_state=42)
    for name, df in [("train", tr), ("valid", va), ("test", test)]:
        df.reset_index(drop=True).to_feather(out / f"{name}.arrow", compression="uncompressed")
    schema = {"features": list(train.columns[:-1]), "target": "label",
              "classes": sorted(int(c) for c in train["label"].unique())}
    (out / "schema.json").write_text(json.dumps(schema))
    print(json.dumps({"rows": [len(tr), len(va), len(test)]}))


if __name__ == "__main__":
    main()
