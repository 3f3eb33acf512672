"""PyTorch peer of `cargo xtask bench cnn`: one epoch over the first `rows` MNIST images
of one of two CNNs, Adam 1e-3, batch 64, cross-entropy, no dropout, written the way a
competent PyTorch user would (oneDNN convolutions, NCHW float32).

Nets, as kiln's bench_cnn builds them:
  pipeline: conv16 (3x3, pad 1) - ReLU - maxpool 2 - conv32 (3x3, pad 1) - ReLU - maxpool 2
            - fc128 - ReLU - fc10 (pipelines/mnist-cnn.toml)
  examples: conv32 (3x3) - ReLU - conv64 (3x3) - ReLU - maxpool 2 - fc128 - ReLU - fc10
            (PyTorch's examples/mnist, without its dropout)
Same as kiln: data, shapes, PyTorch's default init (which kiln copies), optimizer, batch,
a shuffled order, train accuracy counted per batch, thread count. The data is preloaded
as one tensor and indexed per batch (no DataLoader). Prints one JSON line.
Usage: train_cnn_torch.py <mnist train prefix> <threads> <pipeline|examples> <rows>
"""
import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from mnist import load


def net(kind: str) -> nn.Module:
    if kind == "pipeline":
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
        )
    if kind == "examples":
        return nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 12 * 12, 128), nn.ReLU(), nn.Linear(128, 10),
        )
    raise SystemExit(f"unknown net {kind}")


def main() -> None:
    prefix, threads, kind, rows = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    torch.set_num_threads(threads)
    torch.manual_seed(42)
    x_np, y_np = load(prefix)
    x = torch.from_numpy(x_np[:rows]).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(y_np[:rows])
    model = net(kind)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    n = x.shape[0]
    start = time.perf_counter()
    order = torch.randperm(n)
    correct = 0
    for i in range(0, n, 64):
        idx = order[i : i + 64]
        xb, yb = x[idx], y[idx]
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        correct += int((logits.argmax(1) == yb).sum())
    seconds = time.perf_counter() - start
    print(json.dumps({"net": kind, "samples_per_sec": n / seconds, "rows": n, "train_accuracy": correct / n}))


if __name__ == "__main__":
    main()
