"""PyTorch peer of `cargo xtask bench train`: one epoch of MNIST, 784-128-64-10 ReLU MLP,
Adam 1e-3, batch 64, cross-entropy, written the way a competent PyTorch user would.

Same as kiln: data, model shape, init scheme (PyTorch's default, which kiln copies),
optimizer, batch size, a shuffled order per epoch, train accuracy counted per batch,
thread count (torch.set_num_threads). Different: the data is preloaded as tensors and
indexed per batch (no DataLoader, which would only slow PyTorch down); kiln also scores a
64-row validation split after the epoch, which costs well under 1 %.
Prints one JSON line. Usage: train_torch.py <mnist train prefix> <threads>
"""
import json
import sys
import time

import torch
import torch.nn.functional as F

from mnist import load


def main() -> None:
    prefix, threads = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(threads)
    torch.manual_seed(42)
    x_np, y_np = load(prefix)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 64), torch.nn.ReLU(),
        torch.nn.Linear(64, 10),
    )
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
    print(json.dumps({"samples_per_sec": n / seconds, "rows": n, "train_accuracy": correct / n}))


if __name__ == "__main__":
    main()
