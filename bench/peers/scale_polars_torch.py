"""Python peer of `cargo xtask bench scale`: the whole pipeline on a table larger than
memory, with Python polars' streaming engine reading the CSV itself and PyTorch training
through an IterableDataset over what polars wrote.

Same work as kiln's scale pipeline: a split into train / valid / test (80 / 10 / 10),
then fitted on the train split only: mean imputation of the numeric columns,
most-frequent imputation of the categorical ones, standardization (population std) of
the numeric columns, one-hot encoding of `cat_a` and `cat_b` (one column per train
category), ordinal codes of `cat_c` (its train categories sorted, -1 for an unseen one);
each split sunk to Parquet by the streaming engine. Then an MLP with a learned 16-wide
embedding of `cat_c` and one hidden layer of 64 (ReLU), Adam at 1e-3, one epoch in
batches of 256 over an IterableDataset that reads the train Parquet in record batches
and shuffles within a buffer of 65,536 rows; test accuracy; export to ONNX and the
largest probability difference of ONNX Runtime against PyTorch on the test rows; then
ONNX Runtime over every row of the CSV (transformed by polars' streaming engine in
batches, the same fitted transforms), each row's class name and probabilities appended
to a Parquet file and scored against the table's own labels, as `kiln predict` does.
Different: the split is a seeded hash of the row index (polars has no stratified
splitter that streams), so class proportions hold only on average; kiln also writes a
profile, hashes every artifact for its cache, checks each shard's hash before reading
it, writes run.json, a report with plots and baselines, and its parity gate covers
every test row with a one-rounding-step rule.
Usage: scale_polars_torch.py pipeline <table.csv> <out dir>
       scale_polars_torch.py predict <table.csv> <out dir>   (after `pipeline`)
Prints one JSON line: rows per split, test accuracy, parity and seconds per phase, or the
rows predicted and the seconds.
"""
import json
import warnings
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

BATCH = 256
BUFFER = 65_536
EMBED = 16


def split_expr() -> pl.Expr:
    """0 train, 1 valid, 2 test: a seeded hash of the row index."""
    h = pl.col("__row").hash(seed=42) % 10
    return pl.when(h == 0).then(2).when(h == 1).then(1).otherwise(0).alias("__split")


def fit(lf: pl.LazyFrame, num: list[str], cat: list[str]) -> dict:
    """The train split's statistics, by one streaming aggregation and per-column counts."""
    train = lf.filter(pl.col("__split") == 0)
    means = train.select([pl.col(c).mean() for c in num]).collect(engine="streaming").row(0)
    filled = [pl.col(c).fill_null(m) for c, m in zip(num, means)]
    stds = (
        train.select([f.std(ddof=0).alias(c) for f, c in zip(filled, num)])
        .collect(engine="streaming")
        .row(0)
    )
    counts = {
        c: train.group_by(c)
        .len()
        .drop_nulls()
        .sort(["len", c], descending=[True, False])
        .collect(engine="streaming")
        for c in cat
    }
    modes = {c: counts[c][c][0] for c in cat}
    cats = {c: sorted(set(counts[c][c].to_list()) | {modes[c]}) for c in cat}
    # the classes, sorted, from every row (as kiln takes them)
    labels = sorted(lf.select(pl.col("label").unique()).collect(engine="streaming")["label"].to_list())
    return {
        "num": num,
        "cat": cat,
        "means": means,
        "stds": stds,
        "modes": modes,
        "cats": cats,
        "labels": labels,
    }


def label_code(f: dict) -> pl.Expr:
    """The class index of the label."""
    names = pl.Series("v", f["labels"])
    return pl.col("label").replace_strict(names, pl.int_range(len(names), eager=True)).alias("label")


def transforms(f: dict) -> list[pl.Expr]:
    """The fitted features: standardized numbers, one-hot cat_a / cat_b, cat_c's code."""
    exprs = [
        ((pl.col(c).fill_null(m) - m) / (s if s > 0 else 1.0)).cast(pl.Float32).alias(c)
        for c, m, s in zip(f["num"], f["means"], f["stds"])
    ]
    for c in ["cat_a", "cat_b"]:
        filled = pl.col(c).fill_null(f["modes"][c])
        exprs += [(filled == v).cast(pl.Float32).alias(f"{c}={v}") for v in f["cats"][c]]
    codes = pl.Series("v", f["cats"]["cat_c"])
    exprs.append(
        pl.col("cat_c")
        .fill_null(f["modes"]["cat_c"])
        .replace_strict(codes, pl.int_range(len(codes), eager=True), default=-1)
        .cast(pl.Float32)
        .alias("cat_c")
    )
    return exprs


class Shuffled(torch.utils.data.IterableDataset):
    """Rows of a Parquet file in record batches, shuffled within a buffer, as tensors."""

    def __init__(self, path: Path, seed: int):
        self.path, self.seed = path, seed

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        f = pq.ParquetFile(self.path)
        for batch in f.iter_batches(batch_size=BUFFER):
            x = np.column_stack(
                [batch.column(i).to_numpy() for i in range(batch.num_columns - 1)]
            ).astype(np.float32)
            y = batch.column(batch.num_columns - 1).to_numpy().astype(np.int64)
            order = rng.permutation(len(y))
            yield from zip(torch.from_numpy(x[order]), torch.from_numpy(y[order]))


class Net(nn.Module):
    """One hidden layer of 64 over the features, cat_c's code through a 16-wide table."""

    def __init__(self, width: int, codes: int, classes: int):
        super().__init__()
        self.embed = nn.Embedding(codes + 1, EMBED)
        self.body = nn.Sequential(nn.Linear(width - 1 + EMBED, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, x):
        code = (x[:, -1].long() + 1).clamp(0, self.embed.num_embeddings - 1)
        return self.body(torch.cat([x[:, :-1], self.embed(code)], dim=1))


def batches(path: Path):
    for batch in pq.ParquetFile(path).iter_batches(batch_size=BUFFER):
        x = np.column_stack([batch.column(i).to_numpy() for i in range(batch.num_columns - 1)])
        yield x.astype(np.float32), batch.column(batch.num_columns - 1).to_numpy()


def pipeline(src: Path, out: Path) -> None:
    """Preprocess, train one epoch, evaluate, export and check parity."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(42)
    # the TorchScript exporter is the one that takes this small graph without onnxscript
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    seconds = {}
    t = time.perf_counter()
    lf = pl.scan_csv(src).with_row_index("__row").with_columns(split_expr())
    schema = lf.collect_schema()
    cat = [c for c, d in schema.items() if d == pl.String and c != "label"]
    num = [c for c in schema if c not in cat and c not in ("label", "__row", "__split")]
    f = fit(lf, num, cat)
    exprs = transforms(f)
    rows = []
    for k, name in enumerate(["train", "valid", "test"]):
        part = lf.filter(pl.col("__split") == k).select(exprs + [label_code(f)])
        part.sink_parquet(out / f"{name}.parquet", compression="uncompressed")
        rows.append(pq.ParquetFile(out / f"{name}.parquet").metadata.num_rows)
    seconds["preprocess"] = time.perf_counter() - t

    t = time.perf_counter()
    width = len(exprs)
    classes = len(f["labels"])
    net = Net(width, len(f["cats"]["cat_c"]), classes)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(Shuffled(out / "train.parquet", 42), batch_size=BATCH)
    net.train()
    for x, y in loader:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    seconds["train"] = time.perf_counter() - t

    t = time.perf_counter()
    net.eval()
    right = total = 0
    with torch.no_grad():
        for x, y in batches(out / "test.parquet"):
            right += int((net(torch.from_numpy(x)).argmax(1).numpy() == y).sum())
            total += len(y)
    seconds["evaluate"] = time.perf_counter() - t

    t = time.perf_counter()
    onnx_path = out / "model.onnx"
    torch.onnx.export(
        net,
        torch.zeros(1, width),
        onnx_path,
        input_names=["features"],
        output_names=["logits"],
        dynamic_axes={"features": {0: "n"}, "logits": {0: "n"}},
        dynamo=False,
    )
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    with torch.no_grad():
        for x, _ in batches(out / "test.parquet"):
            a = torch.softmax(net(torch.from_numpy(x)), 1).numpy()
            (b,) = session.run(None, {"features": x})
            b = np.exp(b - b.max(1, keepdims=True))
            b /= b.sum(1, keepdims=True)
            worst = max(worst, float(np.abs(a - b).max()))
    seconds["deploy"] = time.perf_counter() - t

    (out / "fitted.json").write_text(json.dumps(f))
    print(
        json.dumps(
            {
                "rows": rows,
                "test_accuracy": right / max(total, 1),
                "max_abs_prob": worst,
                "seconds": seconds,
            }
        )
    )


def predict(src: Path, out: Path) -> None:
    """ONNX Runtime over every row of the CSV, transformed by polars' streaming engine
    in batches."""
    t = time.perf_counter()
    fitted = json.loads((out / "fitted.json").read_text())
    exprs = transforms(fitted)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    names = np.array(fitted["labels"], dtype=object)
    writer = None
    predicted = right = 0
    rows = pl.scan_csv(src).select(exprs + [pl.col("label").alias("__label")])
    for chunk in rows.collect_batches(chunk_size=BUFFER, engine="streaming"):
        x = chunk.drop("__label").to_numpy().astype(np.float32)
        (logits,) = session.run(None, {"features": x})
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        labels = names[logits.argmax(1)]
        # scored against the table's own labels, as kiln predict does
        right += int((labels == chunk["__label"].to_numpy()).sum())
        columns = {"prediction": pa.array(labels.tolist(), pa.string())}
        columns.update({f"p_{n}": p[:, j] for j, n in enumerate(fitted["labels"])})
        table = pa.table(columns)
        if writer is None:
            writer = pq.ParquetWriter(out / "predictions.parquet", table.schema)
        writer.write_table(table)
        predicted += len(x)
    if writer is not None:
        writer.close()
    seconds = time.perf_counter() - t
    print(json.dumps({"predicted": predicted, "accuracy": right / max(predicted, 1), "seconds": seconds}))


if __name__ == "__main__":
    mode, src, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    if mode == "predict":
        predict(src, out)
    else:
        pipeline(src, out)
