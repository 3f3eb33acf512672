//! What the exporter writes in front of the first dense layer: the lookups of learned
//! embeddings, or the convolutional steps of an image model (`Reshape` to NCHW, `Conv` +
//! activation, `MaxPool`, `AveragePool`, `GlobalAveragePool`, then `Flatten`), each as
//! kiln-core's reference computes it.

use crate::export::{Graph, activation, check_len};
use crate::onnx::{
    attr_float, attr_int, attr_ints, dtype, node, tensor_f32, tensor_i8, tensor_i32, tensor_i64,
    tensor_u8,
};
use crate::{DeployError, Result};
use kiln_core::{ConvStep, ModelSpec, TensorStore};

/// What the exporter wrote in front of the first dense layer: the name of that layer's
/// input, and, when the values come flattened pixel by pixel (height, width, channel)
/// instead of kiln's channel by channel, the shape they were flattened from: the first
/// layer's weight rows must then be reordered to match (see [`rows_for`]).
pub(crate) struct Front {
    pub input: String,
    pub hwc: Option<kiln_core::ImageShape>,
}

/// The convolutional steps of `spec` on the input `features`, as
/// `kiln_core::conv::conv_features` computes them, then `Flatten`.
///
/// After an int8 convolution (and only pooling after it) the values are flattened from
/// NHWC: ONNX Runtime runs `QLinearConv` and the pooling after it channels-last and
/// would transpose back to NCHW for an NCHW `Flatten`, single-threaded (1.3 ms of a
/// 4.4 ms batch of 256 MNIST images at two threads). A `Transpose` to NHWC written here
/// cancels against that one, and the first dense layer's rows are reordered to read the
/// same values (docs/ARCHITECTURE.md, Decisions).
pub(crate) fn conv(g: &mut Graph, spec: &ModelSpec, weights: &TensorStore) -> Result<Front> {
    let Some(image) = spec.image else {
        return Ok(Front {
            input: "features".into(),
            hwc: None,
        });
    };
    let shapes = spec
        .conv_shapes()
        .map_err(|(i, m)| DeployError::Export(format!("conv[{i}] ({}): {m}", spec.conv[i].op())))?;
    let dims = [
        -1,
        image.channels as i64,
        image.height as i64,
        image.width as i64,
    ];
    g.inits.push(tensor_i64("conv.input_shape", &[4], &dims));
    g.op(
        "Reshape",
        "conv.reshape",
        &["features", "conv.input_shape"],
        &["conv.input"],
    );
    let mut h = "conv.input".to_string();
    // whether `h` is a pooling of ReLU outputs (every value >= 0), and came from a pooling
    let (mut non_negative, mut pooled) = (false, false);
    // whether `h` comes from an int8 convolution through pooling only (channels-last in
    // ONNX Runtime)
    let mut int8_tail = false;
    let mut shape = image;
    for (i, (step, out_shape)) in spec.conv.iter().zip(shapes).enumerate() {
        let p = format!("conv.{i}");
        let win = step.window(shape);
        let out = format!("{p}.out");
        let kernel = attr_ints("kernel_shape", &[win.kh as i64, win.kw as i64]);
        let strides = attr_ints("strides", &[win.stride as i64, win.stride as i64]);
        match *step {
            ConvStep::Conv2d {
                activation: act, ..
            } => {
                let k2 = shape.channels * win.kh * win.kw;
                let o = out_shape.channels;
                let (w_name, b_name) = (format!("{p}.weight"), format!("{p}.bias"));
                let b = weights.f32(&b_name)?;
                check_len(&b_name, b.len(), o)?;
                let pads = attr_ints("pads", &[win.padding as i64; 4]);
                let attrs = vec![kernel, strides, pads];
                let shape4 = [o, shape.channels, win.kh, win.kw];
                let q = kiln_core::conv::conv_int8(weights, i, k2, o)?;
                int8_tail = q.is_some();
                match q {
                    Some(q) => {
                        if pooled && non_negative {
                            // An exact no-op on these values that keeps ONNX Runtime from
                            // moving the QuantizeLinear above the pooling: its uint8
                            // MaxPool in NCHW took 9.6 ms of a 14 ms batch of 256 MNIST
                            // images, the float one 0.7 ms (docs/benchmarks.md).
                            let kept = format!("{p}.input_float");
                            g.op("Relu", &format!("{p}.keep_pool_float"), &[&h], &[&kept]);
                            h = kept;
                        }
                        // conv2d_int8: QuantizeLinear -> QLinearConv (int32 bias) ->
                        // DequantizeLinear -> the activation, skipped for a ReLU whose
                        // output zero point is 0 (the uint8 clamp already is the ReLU)
                        g.inits
                            .push(tensor_i8(&w_name, &shape4, &to_oihw(q.weight, k2, o)));
                        let n = |s: &str| format!("{p}.{s}");
                        g.inits
                            .push(tensor_f32(&n("weight_scale"), &[o], q.weight_scale));
                        g.inits
                            .push(tensor_i8(&n("weight_zero_point"), &[o], &vec![0; o]));
                        for (name, (scale, zp)) in [("input", q.input), ("output", q.output)] {
                            g.inits
                                .push(tensor_f32(&n(&format!("{name}_scale")), &[], &[scale]));
                            g.inits
                                .push(tensor_u8(&n(&format!("{name}_zero_point")), &[], &[zp]));
                        }
                        g.inits.push(tensor_i32(&b_name, &[o], &q.bias_i32(b)));
                        g.op(
                            "QuantizeLinear",
                            &n("quantize"),
                            &[&h, &n("input_scale"), &n("input_zero_point")],
                            &[&n("x_quantized")],
                        );
                        g.nodes.push(node(
                            "QLinearConv",
                            &n("conv"),
                            &[
                                &n("x_quantized"),
                                &n("input_scale"),
                                &n("input_zero_point"),
                                &w_name,
                                &n("weight_scale"),
                                &n("weight_zero_point"),
                                &n("output_scale"),
                                &n("output_zero_point"),
                                &b_name,
                            ],
                            &[&n("y_quantized")],
                            attrs,
                        ));
                        let relu_done = act == kiln_core::Activation::Relu && q.output.1 == 0;
                        let deq = if relu_done || act == kiln_core::Activation::Identity {
                            out.clone()
                        } else {
                            n("pre_activation")
                        };
                        g.op(
                            "DequantizeLinear",
                            &n("dequantize"),
                            &[
                                &n("y_quantized"),
                                &n("output_scale"),
                                &n("output_zero_point"),
                            ],
                            &[&deq],
                        );
                        if deq != out {
                            activation(g, act, &deq, &out, &p);
                        }
                    }
                    None => {
                        let w = weights.f32(&w_name)?;
                        check_len(&w_name, w.len(), k2 * o)?;
                        g.inits
                            .push(tensor_f32(&w_name, &shape4, &to_oihw(w, k2, o)));
                        g.inits.push(tensor_f32(&b_name, &[o], b));
                        let pre = if act == kiln_core::Activation::Identity {
                            out.clone()
                        } else {
                            format!("{p}.pre_activation")
                        };
                        g.nodes.push(node(
                            "Conv",
                            &format!("{p}.conv"),
                            &[&h, &w_name, &b_name],
                            &[&pre],
                            attrs,
                        ));
                        activation(g, act, &pre, &out, &p);
                    }
                }
            }
            ConvStep::MaxPool { .. } => g.nodes.push(node(
                "MaxPool",
                &format!("{p}.max_pool"),
                &[&h],
                &[&out],
                vec![kernel, strides],
            )),
            ConvStep::AvgPool { .. } => g.nodes.push(node(
                "AveragePool",
                &format!("{p}.avg_pool"),
                &[&h],
                &[&out],
                vec![kernel, strides],
            )),
            ConvStep::GlobalAvgPool => g.op(
                "GlobalAveragePool",
                &format!("{p}.global_avg_pool"),
                &[&h],
                &[&out],
            ),
            // inference: no node, the values pass unchanged
            ConvStep::Dropout { .. } => {
                shape = out_shape;
                continue;
            }
            ConvStep::BatchNorm { activation: act } => {
                // ONNX BatchNormalization in inference mode over the running statistics
                let c = shape.channels;
                let names =
                    ["weight", "bias", "running_mean", "running_var"].map(|n| format!("{p}.{n}"));
                for name in &names {
                    let v = weights.f32(name)?;
                    check_len(name, v.len(), c)?;
                    g.inits.push(tensor_f32(name, &[c], v));
                }
                let pre = if act == kiln_core::Activation::Identity {
                    out.clone()
                } else {
                    format!("{p}.pre_activation")
                };
                let inputs: Vec<&str> = std::iter::once(h.as_str())
                    .chain(names.iter().map(String::as_str))
                    .collect();
                int8_tail = false;
                g.nodes.push(node(
                    "BatchNormalization",
                    &format!("{p}.batch_norm"),
                    &inputs,
                    &[&pre],
                    vec![attr_float("epsilon", kiln_core::conv::BATCH_NORM_EPS)],
                ));
                activation(g, act, &pre, &out, &p);
            }
        }
        (non_negative, pooled) = match *step {
            ConvStep::Conv2d { activation, .. } | ConvStep::BatchNorm { activation } => {
                (activation == kiln_core::Activation::Relu, false)
            }
            _ => (non_negative, true),
        };
        h = out;
        shape = out_shape;
    }
    let hwc = int8_tail.then_some(shape);
    if hwc.is_some() {
        let nhwc = "conv.out_nhwc";
        g.nodes.push(node(
            "Transpose",
            "conv.to_nhwc",
            &[&h],
            &[nhwc],
            vec![attr_ints("perm", &[0, 2, 3, 1])],
        ));
        h = nhwc.into();
    }
    g.nodes.push(node(
        "Flatten",
        "conv.flatten",
        &[&h],
        &["conv.flat"],
        vec![attr_int("axis", 1)],
    ));
    Ok(Front {
        input: "conv.flat".into(),
        hwc,
    })
}

/// A dense layer's `[in, out]` weight `w` as the exporter writes it: unchanged, or with
/// `hwc` (a first layer reading values flattened pixel by pixel from that shape; see
/// [`Front`]) its rows, in kiln's channel-by-channel order, reordered to height, width,
/// channel.
pub(crate) fn rows_for<T: Copy>(w: &[T], hwc: Option<kiln_core::ImageShape>, out: usize) -> Vec<T> {
    let Some(shape) = hwc else {
        return w.to_vec();
    };
    let (c, h, wd) = (shape.channels, shape.height, shape.width);
    if w.len() != shape.len() * out {
        // the caller's length check has already refused this weight
        return w.to_vec();
    }
    let mut rows = Vec::with_capacity(w.len());
    for y in 0..h {
        for x in 0..wd {
            for ch in 0..c {
                let r = (ch * h + y) * wd + x;
                rows.extend_from_slice(&w[r * out..(r + 1) * out]);
            }
        }
    }
    rows
}

/// kiln's `[k2, out]` convolution weight as ONNX's `[out, in, kh, kw]`.
fn to_oihw<T: Copy + Default>(w: &[T], k2: usize, o: usize) -> Vec<T> {
    let mut onnx_w = vec![T::default(); w.len()];
    for r in 0..k2 {
        for c in 0..o {
            onnx_w[c * k2 + r] = w[r * o + c];
        }
    }
    onnx_w
}

/// The lookups of `spec`'s embeddings in front of the first layer, as
/// `kiln_core::forward::embed_input` computes them: the features that are not embedded
/// (`Gather` along axis 1), then per embedding its code column plus one, set to 0 where it
/// is not a whole number in `[1, rows)` (`Floor`, `Equal`, `GreaterOrEqual`, `Less`,
/// `And`, `Where`; NaN fails every comparison), cast to int64 and looked up in the table
/// (`Gather` along axis 0), all joined by one `Concat`. Returns the name of the first
/// layer's input.
pub(crate) fn embeddings(g: &mut Graph, spec: &ModelSpec, weights: &TensorStore) -> Result<String> {
    let kept: Vec<i64> = (0..spec.input_dim)
        .filter(|&i| !spec.is_embedded(i))
        .map(|i| i as i64)
        .collect();
    let mut parts = Vec::new();
    if !kept.is_empty() {
        g.inits
            .push(tensor_i64("embed.kept_features", &[kept.len()], &kept));
        g.nodes.push(node(
            "Gather",
            "embed.gather_kept",
            &["features", "embed.kept_features"],
            &["embed.kept"],
            vec![attr_int("axis", 1)],
        ));
        parts.push("embed.kept".to_string());
    }
    g.inits.push(tensor_f32("embed.one", &[], &[1.0]));
    g.inits.push(tensor_f32("embed.zero", &[], &[0.0]));
    for (j, e) in spec.embeddings.iter().enumerate() {
        let p = format!("embeddings.{j}");
        let t_name = ModelSpec::embedding_key(j);
        let t = weights.f32(&t_name)?;
        check_len(&t_name, t.len(), e.rows * e.dim)?;
        g.inits.push(tensor_f32(&t_name, &[e.rows, e.dim], t));
        let n = |s: &str| format!("{p}.{s}");
        g.inits
            .push(tensor_i64(&n("feature"), &[], &[e.feature as i64]));
        g.inits.push(tensor_f32(&n("rows"), &[], &[e.rows as f32]));
        g.nodes.push(node(
            "Gather",
            &n("gather_code"),
            &["features", &n("feature")],
            &[&n("code")],
            vec![attr_int("axis", 1)],
        ));
        g.op("Add", &n("add_one"), &[&n("code"), "embed.one"], &[&n("r")]);
        g.op("Floor", &n("floor"), &[&n("r")], &[&n("r_floor")]);
        g.op(
            "Equal",
            &n("whole"),
            &[&n("r_floor"), &n("r")],
            &[&n("is_whole")],
        );
        g.op(
            "GreaterOrEqual",
            &n("above"),
            &[&n("r"), "embed.zero"],
            &[&n("is_above")],
        );
        g.op(
            "Less",
            &n("below"),
            &[&n("r"), &n("rows")],
            &[&n("is_below")],
        );
        g.op(
            "And",
            &n("and_range"),
            &[&n("is_above"), &n("is_below")],
            &[&n("in_range")],
        );
        g.op(
            "And",
            &n("and_whole"),
            &[&n("in_range"), &n("is_whole")],
            &[&n("valid")],
        );
        g.op(
            "Where",
            &n("where"),
            &[&n("valid"), &n("r"), "embed.zero"],
            &[&n("row_f32")],
        );
        g.nodes.push(node(
            "Cast",
            &n("cast"),
            &[&n("row_f32")],
            &[&n("row")],
            vec![attr_int("to", i64::from(dtype::INT64))],
        ));
        g.nodes.push(node(
            "Gather",
            &n("lookup"),
            &[&t_name, &n("row")],
            &[&n("out")],
            vec![attr_int("axis", 0)],
        ));
        parts.push(n("out"));
    }
    let inputs: Vec<&str> = parts.iter().map(String::as_str).collect();
    g.nodes.push(node(
        "Concat",
        "embed.concat",
        &inputs,
        &["embed.first_input"],
        vec![attr_int("axis", 1)],
    ));
    Ok("embed.first_input".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2-channel 2 x 3 image's rows, kiln's (channel, row, column), read pixel by pixel:
    /// row (y, x, c) of the result is row (c, y, x) of the weight, for every column.
    #[test]
    fn rows_for_reorders_channel_major_rows_to_pixel_major() {
        let shape = kiln_core::ImageShape {
            channels: 2,
            height: 2,
            width: 3,
        };
        let out = 2;
        // row r holds [r, 100 + r]
        let w: Vec<i32> = (0..12).flat_map(|r| [r, 100 + r]).collect();
        let got = rows_for(&w, Some(shape), out);
        let mut want = Vec::new();
        for y in 0..2 {
            for x in 0..3 {
                for c in 0..2 {
                    let r = (c * 2 + y) * 3 + x;
                    want.extend([r, 100 + r]);
                }
            }
        }
        assert_eq!(got, want);
        assert_eq!(&got[..6], &[0, 100, 6, 106, 1, 101]);
        assert_eq!(rows_for(&w, None, out), w);
    }
}
