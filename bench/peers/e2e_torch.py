"""PyTorch + onnxruntime peer of `cargo xtask bench e2e`: the work of
pipelines/mnist-mlp.toml, written as a competent PyTorch user would.

Same as kiln: load the MNIST IDX files, scale to [0, 1], a seeded stratified 10 %
validation split, a 784-128-64-10 ReLU MLP with dropout 0.1, Adam 2e-3 with a per-step
cosine schedule to 0, batch 64, 10 epochs, early stopping (patience 3) keeping the best
validation accuracy, test accuracy and macro F1, ONNX export (opset 17, dynamic batch,
outputs logits and probabilities), dynamic int8 quantization per channel
(onnxruntime.quantization), both files run through onnxruntime on the test set with the
parity (max |Δp| against the framework's forward pass) and argmax agreement computed.
Different: kiln also writes Arrow IPC datasets, checkpoints every epoch, plots and a
report, hashes every artifact for its cache; this script keeps tensors in memory and
writes only the two ONNX files. Threads: PyTorch's default (all cores), as kiln's.
Usage: e2e_torch.py <fixtures/mnist> <scratch dir>
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnxruntime.quantization import QuantType, quantize_dynamic

from mnist import load


def macro_f1(y, p, k=10):
    f1 = []
    for c in range(k):
        tp = np.sum((p == c) & (y == c))
        fp = np.sum((p == c) & (y != c))
        fn = np.sum((p != c) & (y == c))
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    return float(np.mean(f1))


class WithSoftmax(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, features):
        logits = self.net(features)
        return logits, torch.softmax(logits, dim=-1)


def main() -> None:
    data, scratch = Path(sys.argv[1]), Path(sys.argv[2])
    scratch.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(42)
    rng = np.random.default_rng(42)
    x, y = load(str(data / "train"))
    xt, yt = load(str(data / "t10k"))
    valid_idx = []
    for c in range(10):
        rows = np.flatnonzero(y == c)
        rng.shuffle(rows)
        valid_idx.extend(rows[: round(len(rows) * 0.1)])
    mask = np.zeros(len(y), bool)
    mask[valid_idx] = True
    xtr, ytr = torch.from_numpy(x[~mask]), torch.from_numpy(y[~mask])
    xva, yva = torch.from_numpy(x[mask]), torch.from_numpy(y[mask])

    net = torch.nn.Sequential(
        torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Dropout(0.1),
        torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Dropout(0.1),
        torch.nn.Linear(64, 10),
    )
    epochs, bs, lr = 10, 64, 2e-3
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(ytr) / bs)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (1 + math.cos(math.pi * s / total)) / 2
    )
    best, best_state, since = -1.0, None, 0
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(ytr))
        for i in range(0, len(ytr), bs):
            idx = order[i : i + bs]
            loss = F.cross_entropy(net(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        with torch.no_grad():
            acc = float((net(xva).argmax(1) == yva).float().mean())
        if acc > best:
            best, since = acc, 0
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        else:
            since += 1
            if since >= 3:
                break
    net.load_state_dict(best_state)
    net.eval()
    xt_t = torch.from_numpy(xt)
    with torch.no_grad():
        ref = torch.softmax(net(xt_t), -1).numpy()
    pred = ref.argmax(1)
    metrics = {"fp32": {"accuracy": float((pred == yt).mean()), "macro_f1": macro_f1(yt, pred)}}

    fp32_path, int8_path = scratch / "model.onnx", scratch / "model.int8.onnx"
    torch.onnx.export(
        WithSoftmax(net), (xt_t[:1],), str(fp32_path), opset_version=17,
        input_names=["features"], output_names=["logits", "probabilities"],
        dynamic_axes={"features": {0: "batch"}, "logits": {0: "batch"}, "probabilities": {0: "batch"}},
        dynamo=False,
    )
    quantize_dynamic(str(fp32_path), str(int8_path), per_channel=True, weight_type=QuantType.QInt8)
    for name, path in [("fp32", fp32_path), ("int8", int8_path)]:
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        probs = s.run(["probabilities"], {"features": xt})[0]
        p = probs.argmax(1)
        m = metrics.setdefault(name, {})
        m.update({
            "onnx_accuracy": float((p == yt).mean()),
            "onnx_macro_f1": macro_f1(yt, p),
            "max_abs_prob_vs_torch": float(np.abs(probs - ref).max()),
            "argmax_agreement_vs_torch": float((p == pred).mean()),
            "bytes": path.stat().st_size,
        })
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
