"""Python onnxruntime peer of `kiln predict` in `cargo xtask bench serve`: the same deploy
folder and the same CSV rows, the same work as a competent numpy user would write it.

Same as kiln predict: read the CSV (numpy), take the schema's input columns in order,
apply schema.json's fitted transforms (scale: x / by; standardize: (x - mean) / std) unless
the model says `preprocessing = baked`, run model.onnx through onnxruntime in batches of
<batch> rows, write the predicted label and the class probabilities as CSV.
Different: kiln predict also checks every value is finite, warns about inputs outside the
training range (profile.json), scores against the target column when present and writes
the file atomically; it reads CSV with polars. Threads: onnxruntime's default (all cores),
as kiln predict's.
Usage: predict_ort.py <deploy folder> <input.csv> <batch> <output.csv>
Prints one JSON line: rows, batch, seconds (inside the script, after imports).
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def main():
    ship, src, batch, dst = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    started = time.perf_counter()
    schema = json.loads((ship / "schema.json").read_text())
    with open(src) as f:
        header = f.readline().strip().split(",")
    idx = [header.index(c) for c in schema["input_columns"]]
    x = np.loadtxt(src, delimiter=",", skiprows=1, usecols=idx, dtype=np.float32, ndmin=2)
    sess = ort.InferenceSession(str(ship / "model.onnx"), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    if meta.get("preprocessing") != "baked":
        cols = schema["input_columns"]
        for t in schema["transforms"]:
            j = [cols.index(c) for c in t["columns"]]
            if t["op"] == "scale":
                x[:, j] = x[:, j] / np.float32(t["by"])
            else:
                mean = np.array(t["mean"], dtype=np.float32)
                std = np.array(t["std"], dtype=np.float32)
                x[:, j] = (x[:, j] - mean) / std
    labels = schema["class_labels"]
    out = []
    for s in range(0, len(x), batch):
        _, probs = sess.run(["logits", "probabilities"], {"features": x[s : s + batch]})
        out.append(probs)
    probs = np.concatenate(out)
    with open(dst, "w") as f:
        f.write(",".join(["prediction"] + ["p_" + l for l in labels]) + "\n")
        for p in probs:
            f.write(labels[int(p.argmax())] + "," + ",".join("%.6g" % v for v in p) + "\n")
    took = time.perf_counter() - started
    print(json.dumps({"rows": len(x), "batch": batch, "seconds": took}))


if __name__ == "__main__":
    main()
