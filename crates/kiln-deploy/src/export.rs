//! The ONNX exporter: turns a ModelSpec + TensorStore into an ONNX model (opset 17) whose
//! arithmetic follows kiln-core's reference forward pass step for step — fp32
//! `MatMul -> Add -> activation`, or for int8 `DynamicQuantizeLinear -> MatMulInteger ->
//! Cast -> Mul(x_scale * w_scale) -> Add -> activation` — ending in `logits` and
//! `probabilities` (Softmax).

use crate::onnx::*;
use crate::{DeployError, Result};
use kiln_core::{Activation, ModelSpec, Task, TensorStore};
use prost::Message;

/// What is written into the model's metadata_props.
#[derive(Debug, Clone, Default)]
pub struct ExportMeta {
    /// Class labels in index order.
    pub class_labels: Vec<String>,
    /// Feature names in input order.
    pub feature_names: Vec<String>,
    /// The pipeline stage hash that produced the model.
    pub pipeline_hash: String,
    /// ONNX opset (17).
    pub opset: i64,
}

/// Builds the ONNX graph for `spec` and returns the encoded model.
pub fn export(spec: &ModelSpec, weights: &TensorStore, meta: &ExportMeta) -> Result<Vec<u8>> {
    spec.validate()?;
    if spec.task != Task::Classification {
        return Err(DeployError::Export(
            "only classification models can be exported so far".into(),
        ));
    }
    if meta.opset < 13 {
        return Err(DeployError::Export(format!(
            "opset {} is too old; kiln writes opset 13 or newer (17 by default)",
            meta.opset
        )));
    }
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut h = "features".to_string();
    let last = spec.layers.len() - 1;
    for (i, l) in spec.layers.iter().enumerate() {
        let p = format!("layers.{i}");
        let b = weights.f32(&format!("{p}.bias"))?;
        inits.push(tensor_f32(&format!("{p}.bias"), &[l.out_dim], b));
        let pre = format!("{p}.pre");
        match &spec.quantization {
            None => {
                let w = weights.f32(&format!("{p}.weight"))?;
                inits.push(tensor_f32(
                    &format!("{p}.weight"),
                    &[l.in_dim, l.out_dim],
                    w,
                ));
                nodes.push(node(
                    "MatMul",
                    &format!("{p}.matmul"),
                    &[&h, &format!("{p}.weight")],
                    &[&format!("{p}.mm")],
                    vec![],
                ));
                nodes.push(node(
                    "Add",
                    &format!("{p}.add"),
                    &[&format!("{p}.mm"), &format!("{p}.bias")],
                    &[&pre],
                    vec![],
                ));
            }
            Some(q) => {
                if q.dtype != "int8" || q.scheme != "dynamic" {
                    return Err(DeployError::Export(format!(
                        "quantization {}/{} cannot be exported yet",
                        q.dtype, q.scheme
                    )));
                }
                let w = weights.i8(&format!("{p}.weight"))?;
                let s = weights.f32(&format!("{p}.weight_scale"))?;
                inits.push(tensor_i8(&format!("{p}.weight"), &[l.in_dim, l.out_dim], w));
                inits.push(tensor_f32(&format!("{p}.weight_scale"), &[s.len()], s));
                let (xq, xs, xz) = (
                    format!("{p}.x_q"),
                    format!("{p}.x_scale"),
                    format!("{p}.x_zero_point"),
                );
                nodes.push(node(
                    "DynamicQuantizeLinear",
                    &format!("{p}.quantize"),
                    &[&h],
                    &[&xq, &xs, &xz],
                    vec![],
                ));
                nodes.push(node(
                    "MatMulInteger",
                    &format!("{p}.matmul"),
                    &[&xq, &format!("{p}.weight"), &xz],
                    &[&format!("{p}.acc")],
                    vec![],
                ));
                nodes.push(node(
                    "Cast",
                    &format!("{p}.cast"),
                    &[&format!("{p}.acc")],
                    &[&format!("{p}.acc_f")],
                    vec![attr_int("to", dtype::FLOAT as i64)],
                ));
                nodes.push(node(
                    "Mul",
                    &format!("{p}.scale"),
                    &[&xs, &format!("{p}.weight_scale")],
                    &[&format!("{p}.combined_scale")],
                    vec![],
                ));
                nodes.push(node(
                    "Mul",
                    &format!("{p}.dequantize"),
                    &[&format!("{p}.acc_f"), &format!("{p}.combined_scale")],
                    &[&format!("{p}.mm")],
                    vec![],
                ));
                nodes.push(node(
                    "Add",
                    &format!("{p}.add"),
                    &[&format!("{p}.mm"), &format!("{p}.bias")],
                    &[&pre],
                    vec![],
                ));
            }
        }
        let out = if i == last {
            "logits".to_string()
        } else {
            format!("{p}.out")
        };
        let act = match l.activation {
            Activation::Relu => "Relu",
            Activation::Tanh => "Tanh",
            Activation::Sigmoid => "Sigmoid",
            Activation::Identity => "Identity",
        };
        nodes.push(node(act, &format!("{p}.act"), &[&pre], &[&out], vec![]));
        h = out;
    }
    nodes.push(node(
        "Softmax",
        "softmax",
        &["logits"],
        &["probabilities"],
        vec![attr_int("axis", -1)],
    ));
    let k = spec.output_dim();
    let json = |v: &[String]| serde_json::to_string(v).unwrap_or_default();
    let model = ModelProto {
        ir_version: 8,
        producer_name: "kiln".into(),
        producer_version: kiln_core::KILN_VERSION.into(),
        doc_string: "exported by kiln".into(),
        graph: Some(GraphProto {
            node: nodes,
            name: "kiln".into(),
            initializer: inits,
            input: vec![batch_input("features", spec.input_dim)],
            output: vec![batch_input("logits", k), batch_input("probabilities", k)],
        }),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: meta.opset,
        }],
        metadata_props: [
            ("class_labels", json(&meta.class_labels)),
            ("feature_names", json(&meta.feature_names)),
            ("kiln_version", kiln_core::KILN_VERSION.to_string()),
            ("pipeline_hash", meta.pipeline_hash.clone()),
        ]
        .into_iter()
        .map(|(k, v)| StringStringEntryProto {
            key: k.into(),
            value: v,
        })
        .collect(),
    };
    Ok(model.encode_to_vec())
}

/// Decodes an ONNX file written by kiln (for tests and inspection).
pub fn decode(bytes: &[u8]) -> Result<ModelProto> {
    ModelProto::decode(bytes)
        .map_err(|e| DeployError::Export(format!("not a valid ONNX model: {e}")))
}
