"""Golden numbers for kiln's reference forward pass (crates/kiln-core/src/forward.rs and
Activation::apply in crates/kiln-core/src/model.rs), computed by ONNX Runtime.

Run: /tmp/golden-venv/bin/python golden/onnx_operators.py

Each case is a model of one operator (or the few nodes kiln's exporter writes for one
layer) built with onnx.helper, checked with onnx.checker, and run by onnxruntime's CPU
provider at float32. Each float is printed with 9 significant digits (it reads back as
the same f32); integers as they are.
"""

import math

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

# The oldest IR version that allows opset 21 (kiln writes opsets 13 to 21).
IR_VERSION = 10

NP_TO_ONNX = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.uint8): TensorProto.UINT8,
    np.dtype(np.int8): TensorProto.INT8,
    np.dtype(np.int32): TensorProto.INT32,
}


def f32(v):
    s = f"{float(v):.9g}"
    if "." not in s and "e" not in s and "inf" not in s and "nan" not in s:
        s += ".0"
    return s


def lit(a):
    a = np.asarray(a)
    if a.dtype.kind == "f":
        return "[" + ", ".join(f32(v) for v in a.reshape(-1)) + "]"
    return "[" + ", ".join(str(int(v)) for v in a.reshape(-1)) + "]"


def run(nodes, inputs, outputs, opset, initializers=()):
    """Runs a graph of `nodes` on `inputs` ({name: array}); `outputs` is [(name, onnx
    dtype)]. Returns the output arrays."""
    graph = helper.make_graph(
        nodes,
        "golden",
        [helper.make_tensor_value_info(k, NP_TO_ONNX[v.dtype], list(v.shape)) for k, v in inputs.items()],
        [helper.make_tensor_value_info(k, t, None) for k, t in outputs],
        initializer=[numpy_helper.from_array(v, k) for k, v in initializers],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = IR_VERSION
    # the outputs are declared without a shape: shape inference fills them in, then the
    # full check (which wants every output's shape) runs on the result
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, inputs)


def unary(op, x, opset=17, **attrs):
    x = np.asarray(x, dtype=np.float32)
    return run([helper.make_node(op, ["x"], ["y"], **attrs)], {"x": x}, [("y", TensorProto.FLOAT)], opset)[0]


def gelu_erf(x, opset=17):
    """GELU as kiln writes it below opset 20: 0.5 * x * (1 + Erf(x / sqrt 2))."""
    x = np.asarray(x, dtype=np.float32)
    c = lambda name, v: (name, np.array(v, dtype=np.float32))
    nodes = [
        helper.make_node("Div", ["x", "sqrt2"], ["a"]),
        helper.make_node("Erf", ["a"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["s"]),
        helper.make_node("Mul", ["x", "s"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["y"]),
    ]
    inits = [c("sqrt2", math.sqrt(2.0)), c("one", 1.0), c("half", 0.5)]
    return run(nodes, {"x": x}, [("y", TensorProto.FLOAT)], opset, inits)[0]


print(f"# onnx {onnx.__version__}, onnxruntime {ort.__version__}, numpy {np.__version__}")
print()

# ---------------------------------------------------------------------------------------
print("// forward.rs: dense_matches_hand_computation (MatMul + Add + Relu, opset 17)")
x = np.array([[1.0, 2.0]], dtype=np.float32)
w = np.array([[1.0, -1.0], [0.5, 2.0]], dtype=np.float32)
b = np.array([0.1, -5.0], dtype=np.float32)
nodes = [
    helper.make_node("MatMul", ["x", "w"], ["h"]),
    helper.make_node("Add", ["h", "b"], ["z"]),
    helper.make_node("Relu", ["z"], ["y"]),
]
(y,) = run(nodes, {"x": x}, [("y", TensorProto.FLOAT)], 17, [("w", w), ("b", b)])
print(f"y = {lit(y)}")
print()

# ---------------------------------------------------------------------------------------
print("// forward.rs: layer_norm_matches_hand_computation (LayerNormalization axis -1, epsilon 1e-5, opset 17)")
h = np.array([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]], dtype=np.float32)
gamma = np.array([1.0, 2.0, 1.0, 0.5], dtype=np.float32)
beta = np.array([0.0, 0.0, 0.1, -1.0], dtype=np.float32)
node = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, epsilon=1e-5)
(y,) = run([node], {"x": h}, [("y", TensorProto.FLOAT)], 17, [("g", gamma), ("b", beta)])
print(f"row [1, 2, 3, 6] = {lit(y[0])}")
print(f"row [5, 5, 5, 5] = {lit(y[1])}")
# the whole-network case: x -> [x, 2x, 3x, 6x] -> LayerNorm (gamma 1, beta 0) -> Relu -> sum
nodes = [
    helper.make_node("MatMul", ["x", "w0"], ["h0"]),
    helper.make_node("Add", ["h0", "b0"], ["z0"]),
    helper.make_node("LayerNormalization", ["z0", "g", "nb"], ["n0"], axis=-1, epsilon=1e-5),
    helper.make_node("Relu", ["n0"], ["a0"]),
    helper.make_node("MatMul", ["a0", "w1"], ["h1"]),
    helper.make_node("Add", ["h1", "b1"], ["y"]),
]
inits = [
    ("w0", np.array([[1.0, 2.0, 3.0, 6.0]], dtype=np.float32)),
    ("b0", np.zeros(4, dtype=np.float32)),
    ("g", np.ones(4, dtype=np.float32)),
    ("nb", np.zeros(4, dtype=np.float32)),
    ("w1", np.ones((4, 1), dtype=np.float32)),
    ("b1", np.zeros(1, dtype=np.float32)),
]
(y,) = run(nodes, {"x": np.array([[1.0], [2.0]], dtype=np.float32)}, [("y", TensorProto.FLOAT)], 17, inits)
print(f"1 -> [4] layer norm + relu -> [1], x = [1, 2]: y = {lit(y)}")
print(f"  (3 / sqrt(3.5 + 1e-5) in f32 = {f32(np.float32(3.0) / np.sqrt(np.float32(3.5) + np.float32(1e-5)))})")
print()

# ---------------------------------------------------------------------------------------
print("// forward.rs: leaky_relu_and_gelu_match_their_definitions")
print(f"LeakyRelu(alpha 0.01, opset 17) [2, -2] = {lit(unary('LeakyRelu', [2.0, -2.0], alpha=0.01))}")
print(f"Gelu(approximate none, opset 20) [1, -1, 0] = {lit(unary('Gelu', [1.0, -1.0, 0.0], opset=20))}")
print(f"0.5 x (1 + Erf(x / sqrt 2)) (opset 17) [1, -1, 0] = {lit(gelu_erf([1.0, -1.0, 0.0]))}")
print()

# ---------------------------------------------------------------------------------------
print("// forward.rs: softmax_rows_sum_to_one (Softmax axis -1, opset 13)")
print(f"y = {lit(unary('Softmax', [[0.0, 0.0], [1000.0, 0.0]], opset=13, axis=-1))}")
print()

# ---------------------------------------------------------------------------------------
print("// forward.rs: dynamic_quantize_matches_onnx_definition (DynamicQuantizeLinear, opset 17)")
x = np.array([0.0, 2.0, -3.0, -2.5, 1.34, 0.5], dtype=np.float32)
node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "scale", "zp"])
y, scale, zp = run(
    [node],
    {"x": x},
    [("y", TensorProto.UINT8), ("scale", TensorProto.FLOAT), ("zp", TensorProto.UINT8)],
    17,
)
print(f"y_scale = {f32(scale)} (as f64: {float(scale):.17g})")
print(f"y_zero_point = {int(zp)}")
print(f"y = {lit(y)}")
print()

# ---------------------------------------------------------------------------------------
print("// forward.rs: asymmetric_weights_dequantize_within_half_scale (MatMulInteger, opset 17)")
print("// weights quantized as quantize_weights_asymmetric(per_channel = true) does, in numpy f32")
w = np.array([((i * 37 % 23) * np.float32(0.05)) - np.float32(0.1) for i in range(60)], dtype=np.float32)
w = w.reshape(12, 5)
lo = np.minimum(w.min(axis=0), np.float32(0.0))
hi = np.maximum(w.max(axis=0), np.float32(0.0))
s = np.where(hi == lo, np.float32(1.0), (hi - lo) / np.float32(255.0)).astype(np.float32)
z = np.clip(np.rint(np.float32(-128.0) - lo / s), -128, 127).astype(np.float32)
q = np.clip(np.rint(w / s) + z, -128, 127).astype(np.int8)
xq = np.array([(i * 11 % 256) for i in range(24)], dtype=np.uint8).reshape(2, 12)
node = helper.make_node("MatMulInteger", ["a", "b", "a_zp", "b_zp"], ["y"])
(acc,) = run(
    [node],
    {"a": xq, "b": q},
    [("y", TensorProto.INT32)],
    17,
    [("a_zp", np.array(7, dtype=np.uint8)), ("b_zp", z.astype(np.int8))],
)
direct = (xq.astype(np.int32) - 7) @ (q.astype(np.int32) - z.astype(np.int32))
print(f"weight_scale = {lit(s)}")
print(f"weight_zero_point = {lit(z.astype(np.int32))}")
print(f"MatMulInteger(x, q, 7, zero points) = {lit(acc)}")
print(f"direct i32 sum equals it: {bool((acc == direct).all())}")
print(f"times 0.5 * weight_scale = {lit(acc.astype(np.float32) * (np.float32(0.5) * s))}")
print()

# ---------------------------------------------------------------------------------------
print("// ---- new goldens: activations on x = [-3, -1, -0.5, 0, 0.5, 1, 3] at f32 ----")
xs = [-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0]
print(f"Gelu (approximate none, opset 20) = {lit(unary('Gelu', xs, opset=20))}")
print(f"0.5 x (1 + Erf(x / sqrt 2)) (opset 17, kiln's export below 20) = {lit(gelu_erf(xs))}")
print(f"Tanh (opset 17) = {lit(unary('Tanh', xs))}")
print(f"Sigmoid (opset 17) = {lit(unary('Sigmoid', xs))}")
print(f"LeakyRelu (alpha 0.01, opset 17) = {lit(unary('LeakyRelu', xs, alpha=0.01))}")
