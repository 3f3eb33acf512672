"""Python polars peer of `cargo xtask bench preprocess` (the 1M-row table job), with
polars' Python API (the engine kiln uses from Rust) and numpy for the split.

Same work as kiln's pipeline and prep_table_pandas.py: read the CSV (empty cells are
missing), a seeded stratified split into train / valid / test (70 / 10 / 20, per-class
shuffles with numpy: polars has no stratified splitter), then fitted on the train split
only: mean imputation of the numeric columns, most-frequent imputation of the categorical
ones, standardization (population std) of the numeric columns, one-hot encoding of the
categorical ones (one column per train category; unseen categories give zeros); every
split as float32 features plus its label, written as an uncompressed Arrow IPC file, plus
a schema.json.
Different: kiln also writes profile.json, hashes every file for its cache and writes
run.json.
Usage: prep_table_polars.py <table.csv> <out dir>
"""
import json
import sys
from pathlib import Path

import numpy as np
import polars as pl


def main() -> None:
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    df = pl.read_csv(src)
    cat = [c for c, t in df.schema.items() if t == pl.String and c != "label"]
    num = [c for c in df.columns if c not in cat and c != "label"]
    labels = df["label"].to_numpy()
    rng = np.random.default_rng(42)
    part = np.zeros(len(labels), dtype=np.int8)  # 0 train, 1 valid, 2 test
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_te, n_va = round(len(idx) * 0.2), round(len(idx) * 0.1)
        part[idx[:n_te]] = 2
        part[idx[n_te : n_te + n_va]] = 1
    part = pl.Series("part", part)
    train = df.filter(part == 0)
    means = train.select(pl.col(num).mean()).row(0)
    stds = train.select(pl.col(num).fill_null(strategy="mean").std(ddof=0)).row(0)
    modes = {c: train[c].drop_nulls().value_counts(sort=True)[c][0] for c in cat}
    cats = {c: sorted(train[c].fill_null(modes[c]).unique().to_list()) for c in cat}
    exprs = [
        ((pl.col(c).fill_null(m) - m) / (s if s > 0 else 1.0)).cast(pl.Float32).alias(c)
        for c, m, s in zip(num, means, stds)
    ]
    for c in cat:
        filled = pl.col(c).fill_null(modes[c])
        exprs += [(filled == v).cast(pl.Float32).alias(f"{c}={v}") for v in cats[c]]
    exprs.append(pl.col("label"))
    rows = []
    names = None
    for k, name in enumerate(["train", "valid", "test"]):
        feats = df.filter(part == k).select(exprs)
        names = feats.columns[:-1]
        feats.write_ipc(out / f"{name}.arrow", compression="uncompressed")
        rows.append(feats.height)
    (out / "schema.json").write_text(json.dumps({"features": names, "target": "label"}))
    print(json.dumps({"rows": rows, "features": len(names)}))


if __name__ == "__main__":
    main()
