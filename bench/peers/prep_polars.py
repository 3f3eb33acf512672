"""Python polars peer of `cargo xtask bench preprocess`: the preprocess stage of
pipelines/mnist-mlp.toml with polars' Python API (the engine kiln uses from Rust).

Same as kiln and prep_pandas.py: read the four MNIST IDX .gz files, a DataFrame with 784
pixel columns and the label, pixels scaled by 1/255 (float32), a seeded stratified 10 %
validation split (per-class shuffles with numpy, as polars has no stratified splitter),
the 10k test rows kept, the three splits written as Arrow IPC files plus a schema.json.
Different: kiln also writes profile.json, hashes every file and writes run.json.
Usage: prep_polars.py <fixtures/mnist> <out dir>
"""
import json
import sys
from pathlib import Path

import numpy as np
import polars as pl

from mnist import read_idx


def frame(prefix: Path) -> pl.DataFrame:
    images = read_idx(Path(f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(Path(f"{prefix}-labels-idx1-ubyte.gz"))
    flat = images.reshape(images.shape[0], -1)
    cols = [f"pixel_{j}" for j in range(flat.shape[1])]
    df = pl.DataFrame(flat, schema=cols)
    df = df.with_columns((pl.col(cols) / 255.0).cast(pl.Float32))
    return df.with_columns(pl.Series("label", labels.astype(np.int64)))


def main() -> None:
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    train = frame(data / "train")
    test = frame(data / "t10k")
    rng = np.random.default_rng(42)
    labels = train["label"].to_numpy()
    valid_idx = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        valid_idx.append(idx[: round(len(idx) * 0.1)])
    is_valid = np.zeros(len(labels), dtype=bool)
    is_valid[np.concatenate(valid_idx)] = True
    tr, va = train.filter(~pl.Series(is_valid)), train.filter(pl.Series(is_valid))
    for name, df in [("train", tr), ("valid", va), ("test", test)]:
        df.write_ipc(out / f"{name}.arrow")
    schema = {"features": train.columns[:-1], "target": "label",
              "classes": sorted(int(c) for c in np.unique(labels))}
    (out / "schema.json").write_text(json.dumps(schema))
    print(json.dumps({"rows": [tr.height, va.height, test.height]}))


if __name__ == "__main__":
    main()
