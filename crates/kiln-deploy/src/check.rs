//! Structural checks of an ONNX model read from disk, before ONNX Runtime sees it: kiln
//! hands ONNX Runtime (C++) only graphs whose tensors hold as many bytes as their shapes
//! say, whose nodes read only names defined before them, and whose sizes are sane — a
//! damaged or hand-edited file is refused with a message, never a crash in the runtime.

use crate::onnx::{ModelProto, TensorProto, dtype};
use crate::{DeployError, Result};
use std::collections::HashSet;

/// The most elements one initializer may hold (2^31: 8 GiB of f32).
pub const MAX_ELEMENTS: u64 = 1 << 31;

fn bad(m: String) -> DeployError {
    DeployError::Bundle(format!(
        "the ONNX model is damaged: {m}; export it again with kiln"
    ))
}

/// Bytes per element of the tensor types kiln writes.
fn element_size(data_type: i32) -> Option<u64> {
    match data_type {
        dtype::FLOAT | dtype::INT32 => Some(4),
        dtype::UINT8 | dtype::INT8 => Some(1),
        dtype::INT64 => Some(8),
        dtype::FLOAT16 => Some(2),
        _ => None,
    }
}

/// Checks one initializer: a known type, non-negative dimensions whose product fits, and
/// data of exactly that many elements.
fn tensor(t: &TensorProto) -> Result<()> {
    let name = t.name();
    let elements = t
        .dims
        .iter()
        .try_fold(1u64, |a, &d| {
            u64::try_from(d).ok().and_then(|d| a.checked_mul(d))
        })
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| bad(format!("initializer `{name}` has dimensions {:?}", t.dims)))?;
    let size = element_size(t.data_type())
        .ok_or_else(|| bad(format!("initializer `{name}` has type {}", t.data_type())))?;
    let held = if !t.raw_data().is_empty() {
        t.raw_data().len() as u64 / size
    } else {
        match t.data_type() {
            dtype::FLOAT => t.float_data.len() as u64,
            dtype::INT64 => t.int64_data.len() as u64,
            _ => t.int32_data.len() as u64,
        }
    };
    let exact = t.raw_data().is_empty() || (t.raw_data().len() as u64).is_multiple_of(size);
    if held != elements || !exact {
        return Err(bad(format!(
            "initializer `{name}` holds {held} values for dimensions {:?} ({elements} values)",
            t.dims
        )));
    }
    Ok(())
}

/// Checks a decoded model before it goes to ONNX Runtime.
pub fn check_model(m: &ModelProto) -> Result<()> {
    let g = m
        .graph
        .as_ref()
        .ok_or_else(|| bad("it has no graph".into()))?;
    if m.opset_import.is_empty() {
        return Err(bad("it names no opset".into()));
    }
    if g.input.len() != 1 || g.output.is_empty() {
        return Err(bad(format!(
            "it has {} inputs and {} outputs (kiln writes one input and one or two outputs)",
            g.input.len(),
            g.output.len()
        )));
    }
    let mut defined: HashSet<&str> = g.input.iter().map(|i| i.name()).collect();
    for t in &g.initializer {
        tensor(t)?;
        defined.insert(t.name());
    }
    for (k, n) in g.node.iter().enumerate() {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            if !defined.contains(i.as_str()) {
                return Err(bad(format!(
                    "node {k} ({}) reads `{i}`, which nothing before it defines",
                    n.op_type()
                )));
            }
        }
        defined.extend(n.output.iter().map(String::as_str));
    }
    for o in &g.output {
        if !defined.contains(o.name()) {
            return Err(bad(format!("output `{}` is never computed", o.name())));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::{ExportMeta, build};
    use kiln_core::{Activation, ModelSpec, Task, TensorStore};

    fn model() -> ModelProto {
        let spec = ModelSpec::mlp(3, &[2], Activation::Relu, Task::Classification, 2);
        let mut w = TensorStore::default();
        w.insert_f32("layers.0.weight", vec![3, 2], vec![0.1; 6]);
        w.insert_f32("layers.0.bias", vec![2], vec![0.0, 1.0]);
        w.insert_f32("layers.1.weight", vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        w.insert_f32("layers.1.bias", vec![2], vec![0.5, -0.5]);
        build(&spec, &w, &ExportMeta::default()).unwrap()
    }

    fn message(m: &ModelProto) -> String {
        check_model(m).unwrap_err().to_string()
    }

    #[test]
    fn an_exported_model_passes() {
        check_model(&model()).unwrap();
    }

    #[test]
    fn a_short_or_oversized_initializer_is_refused_by_name() {
        let mut m = model();
        let g = m.graph.as_mut().unwrap();
        let name = g.initializer[0].name().to_string();
        let mut short = g.initializer[0].clone();
        short.float_data.pop();
        if !short.raw_data().is_empty() {
            short.raw_data = Some(short.raw_data()[..short.raw_data().len() - 4].to_vec());
        }
        g.initializer[0] = short;
        let e = message(&m);
        assert!(e.contains(&format!("initializer `{name}` holds")), "{e}");
        assert!(e.contains("export it again"), "{e}");

        let mut m = model();
        m.graph.as_mut().unwrap().initializer[0].dims = vec![1 << 20, 1 << 20];
        assert!(message(&m).contains("has dimensions [1048576, 1048576]"));
        let mut m = model();
        m.graph.as_mut().unwrap().initializer[0].dims = vec![-1, 2];
        assert!(message(&m).contains("has dimensions [-1, 2]"));
        let mut m = model();
        m.graph.as_mut().unwrap().initializer[0].data_type = Some(8);
        assert!(message(&m).contains("has type 8"));
    }

    #[test]
    fn dangling_reads_missing_outputs_and_extra_inputs_are_refused() {
        let mut m = model();
        m.graph.as_mut().unwrap().node[1].input[0] = "nowhere".into();
        let e = message(&m);
        assert!(e.contains("node 1 (Add) reads `nowhere`"), "{e}");

        let mut m = model();
        m.graph.as_mut().unwrap().output[0].name = Some("ghost".into());
        assert!(message(&m).contains("output `ghost` is never computed"));

        let mut m = model();
        let g = m.graph.as_mut().unwrap();
        g.input.push(g.input[0].clone());
        assert!(message(&m).contains("it has 2 inputs and"));

        let mut m = model();
        m.graph = None;
        assert!(message(&m).contains("no graph"));
        let mut m = model();
        m.opset_import.clear();
        assert!(message(&m).contains("names no opset"));
    }
}
