//! The ONNX exporter: turns a ModelSpec + TensorStore into an ONNX model whose arithmetic
//! follows kiln-core's reference forward pass step for step — embedding lookups (`Gather`,
//! `Concat`) in front of the first layer, then fp32
//! `MatMul -> Add -> [LayerNormalization] -> activation`, or for int8 `DynamicQuantizeLinear` (static:
//! `QuantizeLinear` with calibrated constants) `-> MatMulInteger ->
//! Cast -> Mul(x_scale * w_scale) -> Add -> activation` — ending in `logits` and, for
//! classification, `probabilities` (Softmax over the last axis).

use crate::onnx::{
    GraphProto, ModelProto, NodeProto, TensorProto, attr_float, attr_int, batch_value_info, dtype,
    node, opset, string_entry, tensor_f16, tensor_f32, tensor_i8, tensor_u8,
};
use crate::{DeployError, Result};
use kiln_core::{Activation, ModelSpec, Task, TensorStore};
use prost::Message;

/// Oldest opset kiln writes (Softmax's `axis` semantics changed in 13).
pub const MIN_OPSET: i64 = 13;
/// Newest opset kiln writes (ONNX Runtime 1.31 runs newer ones, but kiln is tested on these).
pub const MAX_OPSET: i64 = 21;

/// What goes into the model besides the graph: metadata_props and the opset.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportMeta {
    /// Class labels in index order (metadata `class_labels`, a JSON array).
    pub class_labels: Vec<String>,
    /// Feature names in input order (metadata `feature_names`, a JSON array).
    pub feature_names: Vec<String>,
    /// The kiln version (metadata `kiln_version` and the producer version).
    pub kiln_version: String,
    /// The pipeline (stage) hash that produced the model (metadata `pipeline_hash`).
    pub pipeline_hash: String,
    /// Opset of the default ONNX domain, 13 to 21 (17 by default).
    pub opset: i64,
}

impl Default for ExportMeta {
    fn default() -> Self {
        ExportMeta {
            class_labels: Vec::new(),
            feature_names: Vec::new(),
            kiln_version: kiln_core::KILN_VERSION.to_string(),
            pipeline_hash: String::new(),
            opset: 17,
        }
    }
}

/// The IR version that goes with an opset (the oldest IR that allows it).
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

/// Nodes and initializers collected while walking the layers.
#[derive(Default)]
pub(crate) struct Graph {
    pub nodes: Vec<NodeProto>,
    pub inits: Vec<TensorProto>,
}

impl Graph {
    pub(crate) fn op(&mut self, op: &str, name: &str, inputs: &[&str], outputs: &[&str]) {
        self.nodes.push(node(op, name, inputs, outputs, vec![]));
    }
}

pub(crate) fn check_len(name: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(DeployError::Export(format!(
            "tensor `{name}` holds {got} values but the spec needs {want}; re-save the model with matching weights"
        )))
    }
}

/// The activation `act` of `pre` written to `out` (nodes named after `p`), as kiln-core
/// applies it; nothing for the identity (the caller then writes `out` itself).
pub(crate) fn activation(g: &mut Graph, act: Activation, pre: &str, out: &str, p: &str) {
    match act {
        Activation::Gelu => {
            // 0.5 * x * (1 + Erf(x / sqrt 2)) in kiln-core's order (the Gelu op needs
            // opset 20)
            let c = |n: &str| format!("{p}.gelu_{n}");
            g.inits
                .push(tensor_f32(&c("sqrt2"), &[], &[std::f32::consts::SQRT_2]));
            g.inits.push(tensor_f32(&c("one"), &[], &[1.0]));
            g.inits.push(tensor_f32(&c("half"), &[], &[0.5]));
            g.op("Div", &c("div"), &[pre, &c("sqrt2")], &[&c("scaled")]);
            g.op("Erf", &c("erf"), &[&c("scaled")], &[&c("erf_out")]);
            g.op(
                "Add",
                &c("add"),
                &[&c("erf_out"), &c("one")],
                &[&c("one_plus")],
            );
            g.op("Mul", &c("mul_half"), &[&c("half"), pre], &[&c("half_x")]);
            g.op("Mul", &c("mul"), &[&c("half_x"), &c("one_plus")], &[out]);
        }
        Activation::LeakyRelu => {
            g.nodes.push(node(
                "LeakyRelu",
                &format!("{p}.activation"),
                &[pre],
                &[out],
                vec![attr_float("alpha", kiln_core::LEAKY_RELU_ALPHA)],
            ));
        }
        Activation::Relu => g.op("Relu", &format!("{p}.activation"), &[pre], &[out]),
        Activation::Tanh => g.op("Tanh", &format!("{p}.activation"), &[pre], &[out]),
        Activation::Sigmoid => g.op("Sigmoid", &format!("{p}.activation"), &[pre], &[out]),
        Activation::Identity => {}
    }
}

/// Builds the ONNX model for `spec` with `weights` and returns its encoded bytes.
///
/// Input `features`: float `[batch, input_dim]`. Outputs `logits`: float `[batch, k]` and,
/// for classification, `probabilities`: float `[batch, k]`. The same inputs give the same
/// bytes.
pub fn export(spec: &ModelSpec, weights: &TensorStore, meta: &ExportMeta) -> Result<Vec<u8>> {
    Ok(build(spec, weights, meta)?.encode_to_vec())
}

/// Builds the ONNX model for `spec` with `weights` as a message (see [`export`]).
pub fn build(spec: &ModelSpec, weights: &TensorStore, meta: &ExportMeta) -> Result<ModelProto> {
    spec.validate()?;
    if !(MIN_OPSET..=MAX_OPSET).contains(&meta.opset) {
        return Err(DeployError::Export(format!(
            "opset {} is not supported; set opset between {MIN_OPSET} and {MAX_OPSET} (17 is the default)",
            meta.opset
        )));
    }
    let k = spec.output_dim();
    if spec.task == Task::Classification
        && !meta.class_labels.is_empty()
        && meta.class_labels.len() != k
    {
        return Err(DeployError::Export(format!(
            "the model has {k} outputs but {} class labels were given; pass the schema the model was trained on",
            meta.class_labels.len()
        )));
    }
    if !meta.feature_names.is_empty() && meta.feature_names.len() != spec.input_dim {
        return Err(DeployError::Export(format!(
            "the model takes {} features but {} feature names were given; pass the schema the model was trained on",
            spec.input_dim,
            meta.feature_names.len()
        )));
    }
    if spec.has_norm() && meta.opset < 17 {
        return Err(DeployError::Export(format!(
            "the model has layer norm, which ONNX has as LayerNormalization from opset 17; opset {} is too old, set opset = 17 or newer",
            meta.opset
        )));
    }
    use kiln_core::{Scheme, WeightType};
    let fp16 = spec
        .quantization
        .as_ref()
        .is_some_and(|q| q.dtype == WeightType::Fp16);
    if let Some(q) = &spec.quantization
        && !matches!(
            (q.dtype, q.scheme),
            (WeightType::Int8, Scheme::Dynamic | Scheme::Static)
                | (WeightType::Fp16, Scheme::Weights)
        )
    {
        return Err(DeployError::Export(format!(
            "quantization {}/{} cannot be exported; kiln exports int8/dynamic, int8/static and fp16/weights",
            q.dtype, q.scheme
        )));
    }

    let mut g = Graph::default();
    let mut h = "features".to_string();
    // the first layer's input flattened pixel by pixel: its rows are reordered to match
    let mut hwc = None;
    if spec.image.is_some() {
        let front = crate::front::conv(&mut g, spec, weights)?;
        (h, hwc) = (front.input, front.hwc);
    } else if !spec.embeddings.is_empty() {
        h = crate::front::embeddings(&mut g, spec, weights)?;
    }
    let last = spec.layers.len() - 1;
    for (i, l) in spec.layers.iter().enumerate() {
        let p = format!("layers.{i}");
        let (w_name, b_name, s_name) = (
            format!("{p}.weight"),
            format!("{p}.bias"),
            format!("{p}.weight_scale"),
        );
        let b = weights.f32(&b_name)?;
        check_len(&b_name, b.len(), l.out_dim)?;
        g.inits.push(tensor_f32(&b_name, &[l.out_dim], b));
        let mm = format!("{p}.matmul_out");
        let first_hwc = if i == 0 { hwc } else { None };
        match &spec.quantization {
            None => {
                // dense_f32: sum_k x[k] * w[k, j], then + b[j], then the activation.
                let w = weights.f32(&w_name)?;
                check_len(&w_name, w.len(), l.in_dim * l.out_dim)?;
                let w = crate::front::rows_for(w, first_hwc, l.out_dim);
                g.inits
                    .push(tensor_f32(&w_name, &[l.in_dim, l.out_dim], &w));
                g.op("MatMul", &format!("{p}.matmul"), &[&h, &w_name], &[&mm]);
            }
            Some(_) if fp16 => {
                // float16 initializer, cast to float (exact: the values are f16's), MatMul
                let w = weights.f32(&w_name)?;
                check_len(&w_name, w.len(), l.in_dim * l.out_dim)?;
                let (w16, wf) = (format!("{w_name}_fp16"), format!("{p}.weight_f32"));
                g.inits.push(tensor_f16(
                    &w16,
                    &[l.in_dim, l.out_dim],
                    &crate::front::rows_for(w, first_hwc, l.out_dim),
                ));
                g.nodes.push(node(
                    "Cast",
                    &format!("{p}.cast_weight"),
                    &[&w16],
                    &[&wf],
                    vec![attr_int("to", i64::from(dtype::FLOAT))],
                ));
                g.op("MatMul", &format!("{p}.matmul"), &[&h, &wf], &[&mm]);
            }
            Some(q) => {
                // dense_int8_dynamic / _static: (u8 x - zp) . i8 w as i32, as f32, times
                // (x_scale * w_scale[j]), then + b[j], then the activation.
                let w = weights.i8(&w_name)?;
                check_len(&w_name, w.len(), l.in_dim * l.out_dim)?;
                let s = weights.f32(&s_name)?;
                if s.len() != 1 && s.len() != l.out_dim {
                    return Err(DeployError::Export(format!(
                        "tensor `{s_name}` holds {} scales; it needs 1 (per tensor) or {} (per channel)",
                        s.len(),
                        l.out_dim
                    )));
                }
                g.inits.push(tensor_i8(
                    &w_name,
                    &[l.in_dim, l.out_dim],
                    &crate::front::rows_for(w, first_hwc, l.out_dim),
                ));
                g.inits.push(tensor_f32(&s_name, &[s.len()], s));
                let (xq, xs, xz) = (
                    format!("{p}.x_quantized"),
                    format!("{p}.x_scale"),
                    format!("{p}.x_zero_point"),
                );
                let (acc, acc_f, scale) = (
                    format!("{p}.acc_i32"),
                    format!("{p}.acc_f32"),
                    format!("{p}.combined_scale"),
                );
                if q.scheme == kiln_core::Scheme::Static {
                    // QuantizeLinear with the calibrated scale and zero point (scalars).
                    let (x_scale, zp) = kiln_core::forward::static_params(weights, i)?;
                    g.inits.push(tensor_f32(&xs, &[], &[x_scale]));
                    g.inits.push(tensor_u8(&xz, &[], &[zp]));
                    g.op(
                        "QuantizeLinear",
                        &format!("{p}.quantize"),
                        &[&h, &xs, &xz],
                        &[&xq],
                    );
                } else {
                    g.op(
                        "DynamicQuantizeLinear",
                        &format!("{p}.quantize"),
                        &[&h],
                        &[&xq, &xs, &xz],
                    );
                }
                // asymmetric weights: MatMulInteger's b_zero_point (a scalar, or one per
                // output column)
                let z_name = format!("{p}.weight_zero_point");
                let mut mm_inputs = vec![xq.as_str(), w_name.as_str(), xz.as_str()];
                if let Ok(z) = weights.f32(&z_name) {
                    if z.len() != s.len() || z.iter().any(|v| v.fract() != 0.0 || v.abs() > 128.0) {
                        return Err(DeployError::Export(format!(
                            "tensor `{z_name}` must hold one int8 zero point per scale ({})",
                            s.len()
                        )));
                    }
                    let zi: Vec<i8> = z.iter().map(|&v| v as i8).collect();
                    let shape: &[usize] = if zi.len() == 1 { &[] } else { &[zi.len()] };
                    g.inits.push(tensor_i8(&z_name, shape, &zi));
                    mm_inputs.push(&z_name);
                }
                g.op("MatMulInteger", &format!("{p}.matmul"), &mm_inputs, &[&acc]);
                g.nodes.push(node(
                    "Cast",
                    &format!("{p}.cast"),
                    &[&acc],
                    &[&acc_f],
                    vec![attr_int("to", i64::from(dtype::FLOAT))],
                ));
                g.op("Mul", &format!("{p}.scale"), &[&xs, &s_name], &[&scale]);
                g.op("Mul", &format!("{p}.dequantize"), &[&acc_f, &scale], &[&mm]);
            }
        }
        let out = if i == last {
            output_name(spec.task).to_string()
        } else {
            format!("{p}.out")
        };
        let act = (l.activation != Activation::Identity).then_some(l.activation);
        // Add(b), then the norm and the activation, each writing `out` when it is last
        let norm = l.norm.is_some();
        let add_out = if act.is_none() && !norm {
            out.clone()
        } else {
            format!("{p}.pre_activation")
        };
        g.op("Add", &format!("{p}.add"), &[&mm, &b_name], &[&add_out]);
        let pre = if norm {
            // LayerNormalization over the last axis (opset 17+), as layer_norm_rows
            let (gamma, beta) = kiln_core::forward::norm_params(weights, i, l.out_dim)?;
            let (gn, bn) = (format!("{p}.norm_weight"), format!("{p}.norm_bias"));
            g.inits.push(tensor_f32(&gn, &[l.out_dim], gamma));
            g.inits.push(tensor_f32(&bn, &[l.out_dim], beta));
            let normed = if act.is_none() {
                out.clone()
            } else {
                format!("{p}.normalized")
            };
            g.nodes.push(node(
                "LayerNormalization",
                &format!("{p}.norm"),
                &[&add_out, &gn, &bn],
                &[&normed],
                vec![
                    attr_int("axis", -1),
                    attr_float("epsilon", kiln_core::LAYER_NORM_EPS),
                ],
            ));
            normed
        } else {
            add_out
        };
        activation(&mut g, l.activation, &pre, &out, &p);
        h = out;
    }
    let mut outputs = vec![batch_value_info(output_name(spec.task), k)];
    if spec.task == Task::Classification {
        g.nodes.push(node(
            "Softmax",
            "softmax",
            &["logits"],
            &["probabilities"],
            vec![attr_int("axis", -1)],
        ));
        outputs.push(batch_value_info("probabilities", k));
    }
    let json = |v: &[String]| {
        serde_json::to_string(v).map_err(|e| DeployError::Export(format!("metadata: {e}")))
    };
    let metadata_props = [
        ("class_labels", json(&meta.class_labels)?),
        ("feature_names", json(&meta.feature_names)?),
        ("kiln_version", meta.kiln_version.clone()),
        ("pipeline_hash", meta.pipeline_hash.clone()),
    ]
    .into_iter()
    .map(|(key, value)| string_entry(key, value))
    .collect();
    Ok(ModelProto {
        ir_version: Some(ir_version(meta.opset)),
        producer_name: Some("kiln".into()),
        producer_version: Some(meta.kiln_version.clone()),
        doc_string: Some(format!(
            "{} model exported by kiln{}",
            match &spec.quantization {
                None => "fp32".to_string(),
                Some(q) if fp16 => format!("{} weights", q.dtype),
                Some(q) => format!("{} ({})", q.dtype, q.scheme),
            },
            if meta.pipeline_hash.is_empty() {
                String::new()
            } else {
                format!(" from pipeline stage {}", meta.pipeline_hash)
            }
        )),
        graph: Some(GraphProto {
            node: g.nodes,
            name: Some("kiln".into()),
            initializer: g.inits,
            input: vec![batch_value_info("features", spec.input_dim)],
            output: outputs,
            ..Default::default()
        }),
        opset_import: vec![opset(meta.opset)],
        metadata_props,
        ..Default::default()
    })
}

/// Decodes an ONNX file (for tests and inspection).
pub fn decode(bytes: &[u8]) -> Result<ModelProto> {
    ModelProto::decode(bytes).map_err(|e| {
        DeployError::Export(format!(
            "not a valid ONNX model: {e}; export it again with kiln"
        ))
    })
}

/// The name of the network's output: `logits` for a classifier (followed by
/// `probabilities`), `prediction` for a regressor.
pub fn output_name(task: Task) -> &'static str {
    match task {
        Task::Classification => "logits",
        Task::Regression => "prediction",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::Quantization;

    fn tiny(task: Task) -> (ModelSpec, TensorStore) {
        let spec = ModelSpec::mlp(3, &[2], Activation::Tanh, task, 2);
        let mut w = TensorStore::default();
        w.insert_f32("layers.0.weight", vec![3, 2], vec![0.1; 6]);
        w.insert_f32("layers.0.bias", vec![2], vec![0.0, 1.0]);
        w.insert_f32("layers.1.weight", vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        w.insert_f32("layers.1.bias", vec![2], vec![0.5, -0.5]);
        (spec, w)
    }

    fn ops(m: &ModelProto) -> Vec<String> {
        m.graph
            .as_ref()
            .map(|g| g.node.iter().map(|n| n.op_type().to_string()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn fp32_graph_has_the_reference_op_order_and_metadata() {
        let (spec, w) = tiny(Task::Classification);
        let meta = ExportMeta {
            class_labels: vec!["no".into(), "yes".into()],
            feature_names: vec!["a".into(), "b".into(), "c".into()],
            pipeline_hash: "abc123".into(),
            ..Default::default()
        };
        let m = build(&spec, &w, &meta).unwrap();
        assert_eq!(
            ops(&m),
            ["MatMul", "Add", "Tanh", "MatMul", "Add", "Softmax"]
        );
        assert_eq!((m.ir_version(), m.opset_import[0].version()), (8, 17));
        assert_eq!(m.opset_import[0].domain(), "");
        assert_eq!(m.producer_name(), "kiln");
        let g = m.graph.as_ref().unwrap();
        assert_eq!(g.node[4].output, ["logits"]);
        assert_eq!(g.node[5].attribute[0].i, Some(-1));
        let props: Vec<(&str, &str)> = m
            .metadata_props
            .iter()
            .map(|p| (p.key(), p.value()))
            .collect();
        assert_eq!(
            props,
            [
                ("class_labels", r#"["no","yes"]"#),
                ("feature_names", r#"["a","b","c"]"#),
                ("kiln_version", kiln_core::KILN_VERSION),
                ("pipeline_hash", "abc123"),
            ]
        );
        let w1 = g
            .initializer
            .iter()
            .find(|t| t.name() == "layers.1.weight")
            .unwrap();
        assert_eq!(w1.dims, vec![2, 2]);
        assert_eq!(w1.f32_values().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        // Deterministic: the same inputs give the same bytes.
        assert_eq!(
            export(&spec, &w, &meta).unwrap(),
            export(&spec, &w, &meta).unwrap()
        );
        assert_eq!(decode(&export(&spec, &w, &meta).unwrap()).unwrap(), m);
    }

    #[test]
    fn int8_graph_quantizes_every_layer() {
        let (mut spec, w) = tiny(Task::Classification);
        spec.quantization = Some(Quantization {
            dtype: kiln_core::WeightType::Int8,
            scheme: kiln_core::Scheme::Dynamic,
            per_channel: false,
        });
        let mut q = TensorStore::default();
        for i in 0..2 {
            let l = &spec.layers[i];
            let (wq, s) = kiln_core::forward::quantize_weights_symmetric(
                w.f32(&format!("layers.{i}.weight")).unwrap(),
                l.in_dim,
                l.out_dim,
                false,
            );
            q.insert_i8(&format!("layers.{i}.weight"), vec![l.in_dim, l.out_dim], wq);
            q.insert_f32(&format!("layers.{i}.weight_scale"), vec![1], s);
            let b = w.f32(&format!("layers.{i}.bias")).unwrap().to_vec();
            q.insert_f32(&format!("layers.{i}.bias"), vec![l.out_dim], b);
        }
        let m = build(&spec, &q, &ExportMeta::default()).unwrap();
        let layer = [
            "DynamicQuantizeLinear",
            "MatMulInteger",
            "Cast",
            "Mul",
            "Mul",
            "Add",
        ];
        let mut want: Vec<&str> = layer.to_vec();
        want.push("Tanh");
        want.extend(layer);
        want.push("Softmax");
        assert_eq!(ops(&m), want);
        let g = m.graph.unwrap();
        let w0 = g
            .initializer
            .iter()
            .find(|t| t.name() == "layers.0.weight")
            .unwrap();
        assert_eq!(w0.data_type(), dtype::INT8);
        assert_eq!(w0.raw_data(), [63u8; 6]);
        let cast = g.node.iter().find(|n| n.op_type() == "Cast").unwrap();
        assert_eq!(cast.attribute[0].i, Some(i64::from(dtype::FLOAT)));
    }

    #[test]
    fn regression_has_only_prediction_and_bad_inputs_are_refused() {
        let (spec, w) = tiny(Task::Regression);
        let m = build(&spec, &w, &ExportMeta::default()).unwrap();
        let g = m.graph.unwrap();
        assert_eq!(g.output.len(), 1);
        assert_eq!(g.output[0].name(), "prediction");

        let (spec, w) = tiny(Task::Classification);
        let e = build(
            &spec,
            &w,
            &ExportMeta {
                opset: 11,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("opset 11 is not supported"), "{e}");
        let e = build(
            &spec,
            &w,
            &ExportMeta {
                class_labels: vec!["x".into()],
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("1 class labels"), "{e}");
        let mut short = w.clone();
        short.insert_f32("layers.1.bias", vec![1], vec![0.0]);
        let e = build(&spec, &short, &ExportMeta::default()).unwrap_err();
        assert!(e.to_string().contains("`layers.1.bias` holds 1"), "{e}");
        let mut q = spec.clone();
        q.quantization = Some(Quantization {
            dtype: kiln_core::WeightType::Fp16,
            scheme: kiln_core::Scheme::Static,
            per_channel: true,
        });
        let e = build(&q, &w, &ExportMeta::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("quantization fp16/static cannot be exported; kiln exports int8/dynamic, int8/static and fp16/weights"),
            "{e}"
        );
        let e = decode(b"\xff\xff\xff").unwrap_err().to_string();
        assert!(e.contains("not a valid ONNX model"), "{e}");
    }
}
