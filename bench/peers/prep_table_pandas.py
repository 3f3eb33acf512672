"""pandas + scikit-learn peer of `cargo xtask bench preprocess` (the 1M-row table job),
written as a competent pandas user would: vectorised, scikit-learn's transformers.

Same work as kiln's pipeline (target/bench/prep-table/pipeline.toml): read the CSV
(empty cells are missing), a seeded stratified split into train / valid / test
(70 / 10 / 20), then fitted on the train split only: mean imputation of the 20 numeric
columns, most-frequent imputation of the 2 categorical ones, standardization (population
std) of the numeric columns, one-hot encoding of the categorical ones (unseen categories
give zeros); every split transformed to float32 features and written, with its label, as
an uncompressed Arrow IPC file, plus a schema.json.
Different: kiln also writes profile.json, hashes every file for its cache and writes
run.json.
Usage: prep_table_pandas.py <table.csv> <out dir>
"""
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler


def main() -> None:
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    df = pd.read_csv(src)
    y = df.pop("label")
    cat = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    num = [c for c in df.columns if c not in cat]
    x_rest, x_te, y_rest, y_te = train_test_split(df, y, test_size=0.2, stratify=y, random_state=42)
    x_tr, x_va, y_tr, y_va = train_test_split(
        x_rest, y_rest, test_size=0.125, stratify=y_rest, random_state=42
    )
    ct = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(strategy="mean"), StandardScaler()), num),
            (
                "cat",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"),
                    OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float32),
                ),
                cat,
            ),
        ]
    )
    ct.fit(x_tr)
    names = list(ct.get_feature_names_out())
    rows = []
    for name, x, yy in [("train", x_tr, y_tr), ("valid", x_va, y_va), ("test", x_te, y_te)]:
        feats = pd.DataFrame(ct.transform(x).astype(np.float32), columns=names)
        feats["label"] = yy.to_numpy()
        feats.to_feather(out / f"{name}.arrow", compression="uncompressed")
        rows.append(len(feats))
    (out / "schema.json").write_text(json.dumps({"features": names, "target": "label"}))
    print(json.dumps({"rows": rows, "features": len(names)}))


if __name__ == "__main__":
    main()
