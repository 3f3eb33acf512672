//! The ONNX graph summary of a deployed model: its inputs and outputs with their element
//! types and shapes, the count of each operator, the opset and the file's size, decoded
//! with kiln-deploy's generated ONNX messages.

use kiln_deploy::onnx::{DimensionValue, ModelProto, ValueInfoProto, tensor_proto, type_proto};
use std::collections::BTreeMap;
use std::path::Path;

/// What the page shows of one .onnx file.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxSummary {
    /// Bytes on disk.
    pub bytes: u64,
    /// The default domain's opset.
    pub opset: i64,
    /// `name: type[dims]` of each graph input.
    pub inputs: Vec<String>,
    /// `name: type[dims]` of each graph output.
    pub outputs: Vec<String>,
    /// Node count per operator.
    pub ops: BTreeMap<String, usize>,
    /// Number of initializers (weights, biases, constants).
    pub initializers: usize,
}

/// Largest model file summarized (decoding holds it in memory, on every page view).
const MAX_BYTES: u64 = 256 << 20;

/// Reads and summarizes `path`, a regular file of at most 256 MiB.
pub fn summarize(path: &Path) -> Result<OnnxSummary, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if meta.len() > MAX_BYTES {
        return Err(format!(
            "{} is {} MiB; kiln ui summarizes models up to 256 MiB",
            path.display(),
            meta.len() >> 20
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let model = kiln_deploy::decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(summary(&model, bytes.len() as u64))
}

fn summary(model: &ModelProto, bytes: u64) -> OnnxSummary {
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain().is_empty())
        .map_or(0, |o| o.version());
    let graph = model.graph.clone().unwrap_or_default();
    let mut ops = BTreeMap::new();
    for n in &graph.node {
        *ops.entry(n.op_type().to_string()).or_insert(0) += 1;
    }
    OnnxSummary {
        bytes,
        opset,
        inputs: graph.input.iter().map(describe).collect(),
        outputs: graph.output.iter().map(describe).collect(),
        ops,
        initializers: graph.initializer.len(),
    }
}

/// `name: float[batch, 4]`.
fn describe(v: &ValueInfoProto) -> String {
    let Some(type_proto::Value::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return v.name().to_string();
    };
    let elem = tensor_proto::DataType::try_from(t.elem_type()).map_or_else(
        |_| format!("type {}", t.elem_type()),
        |d| d.as_str_name().to_lowercase(),
    );
    let dims: Vec<String> = t
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(DimensionValue::DimValue(n)) => n.to_string(),
                    Some(DimensionValue::DimParam(p)) => p.clone(),
                    None => "?".into(),
                })
                .collect()
        })
        .unwrap_or_default();
    format!("{}: {elem}[{}]", v.name(), dims.join(", "))
}
