"""Golden numbers for the optimizer tests of crates/kiln-train/src/net.rs, from PyTorch.

Run: /tmp/golden-venv/bin/python golden/torch_optimizers.py

The model is the one of `adam_steps` in net.rs: one linear layer, 2 inputs and 2
outputs, logits = x @ W + b with W stored as in x out (the transpose of torch's
`Linear.weight`; the optimizers are elementwise, so the layout changes nothing), W =
[[0.1, -0.2], [0.3, 0.05]], b = [0, 0.1], x = [1, 2], cross-entropy of the logits against
the one-hot target [1, 0] (class 0), the same x and target at every step. Both tensors
are in one torch parameter group, so weight decay applies to the bias too, as in kiln.

The small model of `one_step` (1 input, 2 outputs, W = b = 0, x = [1], target [1, 0]) is
used for the one-step SGD, clipping and Nesterov tests.

Parameters are float32; each value is printed with 9 significant digits (enough to read
back as the same f32), W in x out row-major, as the Rust tests paste them.
"""

import numpy as np
import torch
import torch.nn.functional as F

torch.set_num_threads(1)


def f32(v):
    s = f"{float(v):.9g}"
    if "." not in s and "e" not in s:
        s += ".0"
    return s


def lit(vs):
    return "[" + ", ".join(f32(v) for v in vs) + "]"


def train(make_opt, steps, w0, b0, x, target, clip=None):
    """`steps` steps; returns [(W row-major in x out, b)] after each step."""
    w = torch.tensor(w0, dtype=torch.float32, requires_grad=True)
    b = torch.tensor(b0, dtype=torch.float32, requires_grad=True)
    xt = torch.tensor([x], dtype=torch.float32)
    yt = torch.tensor([target], dtype=torch.float32)
    opt = make_opt([w, b])
    out = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(xt @ w + b, yt)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_([w, b], clip)
        opt.step()
        out.append((w.detach().numpy().reshape(-1).copy(), b.detach().numpy().copy()))
    return out


W0 = [[0.1, -0.2], [0.3, 0.05]]
B0 = [0.0, 0.1]
X = [1.0, 2.0]
TARGET = [1.0, 0.0]


def golden(test, call, make_opt, steps=3):
    print(f"// net.rs: {test}")
    print(f"// {call}, {steps} steps")
    print(f"let golden: [([f64; 4], [f64; 2]); {steps}] = [")
    for w, b in train(make_opt, steps, W0, B0, X, TARGET):
        print(f"    ({lit(w)}, {lit(b)}),")
    print("];")
    print()


print(f"# torch {torch.__version__}, numpy {np.__version__}")
print()

# ---------------------------------------------------------------------------------------
# Tests that exist.
golden(
    "adamw_steps_match_pytorch",
    "torch.optim.AdamW(lr=0.01, weight_decay=0.1)",
    lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
)
golden(
    "adam_l2_steps_match_pytorch",
    "torch.optim.Adam(lr=0.01, weight_decay=0.1)",
    lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1),
)


def one_step(make_opt, clip=None):
    return train(make_opt, 1, [[0.0, 0.0]], [0.0, 0.0], [1.0], TARGET, clip=clip)[0]


print("// net.rs: sgd_moves_against_the_gradient (one_step model, torch.optim.SGD(lr=0.1))")
w, b = one_step(lambda p: torch.optim.SGD(p, lr=0.1))
print(f"w = {lit(w)}, b = {lit(b)}")
print()
print("// net.rs: clipping_scales_the_global_gradient_norm (one_step model, SGD(lr=1.0))")
print("// torch's clip_grad_norm_ scales by max_norm / (norm + 1e-6); kiln has no epsilon")
for clip in [0.1, 2.0, None]:
    w, b = one_step(lambda p: torch.optim.SGD(p, lr=1.0), clip=clip)
    print(f"clip_grad_norm_({clip}): w = {lit(w)}, b = {lit(b)}")
print()
print(
    "// net.rs: nesterov_first_step_is_one_plus_momentum_times_the_gradient"
    " (one_step model, SGD(lr=0.1, momentum=0.9, nesterov=True))"
)
w, b = one_step(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True))
print(f"w = {lit(w)}, b = {lit(b)}")
print()

# ---------------------------------------------------------------------------------------
# New goldens (no Rust test yet): SGD on the adam_steps model, lr 0.01, three steps.
print("// ---- new goldens: torch.optim.SGD on the adam_steps model, lr 0.01 ----")
print()
for wd in [0.0, 0.1]:
    golden(
        f"(new) sgd_plain_steps_match_pytorch, weight_decay {wd}",
        f"torch.optim.SGD(lr=0.01, momentum=0, weight_decay={wd})",
        lambda p, wd=wd: torch.optim.SGD(p, lr=0.01, weight_decay=wd),
    )
    golden(
        f"(new) sgd_momentum_steps_match_pytorch, weight_decay {wd}",
        f"torch.optim.SGD(lr=0.01, momentum=0.9, nesterov=False, weight_decay={wd})",
        lambda p, wd=wd: torch.optim.SGD(p, lr=0.01, momentum=0.9, weight_decay=wd),
    )
    golden(
        f"(new) sgd_nesterov_steps_match_pytorch, weight_decay {wd}",
        f"torch.optim.SGD(lr=0.01, momentum=0.9, nesterov=True, weight_decay={wd})",
        lambda p, wd=wd: torch.optim.SGD(p, lr=0.01, momentum=0.9, nesterov=True, weight_decay=wd),
    )
