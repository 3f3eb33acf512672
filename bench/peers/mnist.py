"""MNIST IDX loading shared by the peer scripts (numpy only): the same files kiln reads."""
import gzip
import struct
from pathlib import Path

import numpy as np


def read_idx(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Features scaled to [0, 1] as float32 [n, 784] and labels as int64 [n]."""
    images = read_idx(Path(prefix + "-images-idx3-ubyte.gz"))
    labels = read_idx(Path(prefix + "-labels-idx1-ubyte.gz"))
    x = images.reshape(images.shape[0], -1).astype(np.float32) / 255.0
    return x, labels.astype(np.int64)
