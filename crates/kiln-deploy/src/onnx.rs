//! The ONNX protobuf messages kiln writes, as hand-written `prost` structs (field numbers
//! from onnx.proto), plus small builders for nodes, attributes, initializers and value infos.
//!
//! Hand-written because generated bindings need `protoc` at build time; these few messages
//! build in seconds and encode exactly what the official schema expects. Only the fields
//! kiln writes or reads are declared: a decoder skips the others. Repeated scalar fields
//! that onnx.proto (proto2) declares unpacked are marked `packed = "false"` so the bytes
//! match what the reference implementation writes.

/// `TensorProto.DataType` values kiln uses.
pub mod dtype {
    /// `float` (f32).
    pub const FLOAT: i32 = 1;
    /// `uint8`.
    pub const UINT8: i32 = 2;
    /// `int8`.
    pub const INT8: i32 = 3;
    /// `int32`.
    pub const INT32: i32 = 6;
    /// `int64`.
    pub const INT64: i32 = 7;
    /// `float16`.
    pub const FLOAT16: i32 = 10;
}

/// `AttributeProto.AttributeType` values kiln uses.
pub mod attr_type {
    /// A single float (`f`).
    pub const FLOAT: i32 = 1;
    /// A single int64 (`i`).
    pub const INT: i32 = 2;
    /// A list of int64 (`ints`).
    pub const INTS: i32 = 7;
}

/// `ModelProto`: the top-level ONNX file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    /// IR version of the file format (8 for opset 17).
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    /// Tool that wrote the model (`kiln`).
    #[prost(string, tag = "2")]
    pub producer_name: String,
    /// Version of that tool.
    #[prost(string, tag = "3")]
    pub producer_version: String,
    /// Reverse-DNS model namespace (unused by kiln).
    #[prost(string, tag = "4")]
    pub domain: String,
    /// Model version (unused by kiln).
    #[prost(int64, tag = "5")]
    pub model_version: i64,
    /// Human-readable description.
    #[prost(string, tag = "6")]
    pub doc_string: String,
    /// The computation graph.
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    /// Operator sets the graph uses.
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    /// Free-form key/value metadata (class labels, feature names, versions, hashes).
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// `OperatorSetIdProto`: one imported operator set.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OperatorSetIdProto {
    /// Domain; empty for the default ONNX domain.
    #[prost(string, tag = "1")]
    pub domain: String,
    /// Opset version.
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// `StringStringEntryProto`: one metadata entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StringStringEntryProto {
    /// Key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `GraphProto`: nodes, initializers, inputs and outputs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphProto {
    /// Nodes in topological order.
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    /// Graph name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Constant tensors (weights).
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    /// Human-readable description.
    #[prost(string, tag = "10")]
    pub doc_string: String,
    /// Graph inputs.
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    /// Graph outputs.
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

/// `NodeProto`: one operator application.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    /// Names of the input values.
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    /// Names of the output values.
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    /// Node name (unique in the graph).
    #[prost(string, tag = "3")]
    pub name: String,
    /// Operator, e.g. `MatMul`.
    #[prost(string, tag = "4")]
    pub op_type: String,
    /// Operator attributes.
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    /// Human-readable description.
    #[prost(string, tag = "6")]
    pub doc_string: String,
    /// Operator domain; empty for the default ONNX domain.
    #[prost(string, tag = "7")]
    pub domain: String,
}

/// `AttributeProto`: a named operator attribute (kiln uses float, int and ints).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeProto {
    /// Attribute name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Value when `type` is FLOAT.
    #[prost(float, tag = "2")]
    pub f: f32,
    /// Value when `type` is INT.
    #[prost(int64, tag = "3")]
    pub i: i64,
    /// Value when `type` is INTS.
    #[prost(int64, repeated, packed = "false", tag = "8")]
    pub ints: Vec<i64>,
    /// Which of the value fields is set (`attr_type`).
    #[prost(int32, tag = "20")]
    pub r#type: i32,
}

/// `TensorProto`: a constant tensor; kiln stores values little-endian in `raw_data`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// Dimensions.
    #[prost(int64, repeated, packed = "false", tag = "1")]
    pub dims: Vec<i64>,
    /// Element type (`dtype`).
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    /// Float values when not in `raw_data` (kiln never writes them).
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    /// int32 / int8 / uint8 values when not in `raw_data` (kiln never writes them).
    #[prost(int32, repeated, tag = "5")]
    pub int32_data: Vec<i32>,
    /// Tensor (initializer) name.
    #[prost(string, tag = "8")]
    pub name: String,
    /// Values as little-endian bytes, row-major.
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
}

/// `ValueInfoProto`: name and type of a graph input or output.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueInfoProto {
    /// Value name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its type.
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

/// `TypeProto` (only the `tensor_type` member of its `value` oneof).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProto {
    /// A dense tensor type.
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TypeProtoTensor>,
}

/// `TypeProto.Tensor`: element type and shape.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProtoTensor {
    /// Element type (`dtype`).
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    /// Shape, possibly with symbolic dimensions.
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

/// `TensorShapeProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    /// Dimensions, outermost first.
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

/// `TensorShapeProto.Dimension`: a fixed size or a named symbolic one.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Dimension {
    /// The dimension.
    #[prost(oneof = "DimensionValue", tags = "1, 2")]
    pub value: Option<DimensionValue>,
}

/// The `value` oneof of `TensorShapeProto.Dimension`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum DimensionValue {
    /// A fixed size.
    #[prost(int64, tag = "1")]
    DimValue(i64),
    /// A symbolic size, e.g. `batch`.
    #[prost(string, tag = "2")]
    DimParam(String),
}

/// A node in the default (ONNX) domain.
pub fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attribute: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: name.to_string(),
        op_type: op.to_string(),
        attribute,
        ..Default::default()
    }
}

/// An int64 attribute.
pub fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        i,
        r#type: attr_type::INT,
        ..Default::default()
    }
}

/// A float attribute.
pub fn attr_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        f,
        r#type: attr_type::FLOAT,
        ..Default::default()
    }
}

/// An int64-list attribute.
pub fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        ints: ints.to_vec(),
        r#type: attr_type::INTS,
        ..Default::default()
    }
}

fn dims(d: &[usize]) -> Vec<i64> {
    d.iter().map(|&v| v as i64).collect()
}

/// An f32 initializer (values in `raw_data`, little-endian).
pub fn tensor_f32(name: &str, shape: &[usize], data: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims(shape),
        data_type: dtype::FLOAT,
        name: name.to_string(),
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// An i8 initializer (values in `raw_data`, two's complement).
pub fn tensor_i8(name: &str, shape: &[usize], data: &[i8]) -> TensorProto {
    TensorProto {
        dims: dims(shape),
        data_type: dtype::INT8,
        name: name.to_string(),
        raw_data: data.iter().map(|&v| v as u8).collect(),
        ..Default::default()
    }
}

/// A float16 initializer from f32 values (rounded to nearest even; values already
/// representable in f16 are kept exactly).
pub fn tensor_f16(name: &str, shape: &[usize], data: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims(shape),
        data_type: dtype::FLOAT16,
        name: name.to_string(),
        raw_data: data
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
            .collect(),
        ..Default::default()
    }
}

/// A u8 initializer (values in `raw_data`).
pub fn tensor_u8(name: &str, shape: &[usize], data: &[u8]) -> TensorProto {
    TensorProto {
        dims: dims(shape),
        data_type: dtype::UINT8,
        name: name.to_string(),
        raw_data: data.to_vec(),
        ..Default::default()
    }
}

impl TensorProto {
    /// The values of an f32 tensor (from `raw_data`, or `float_data` when that is empty).
    pub fn f32_values(&self) -> Option<Vec<f32>> {
        if self.data_type != dtype::FLOAT {
            return None;
        }
        if self.raw_data.is_empty() {
            return Some(self.float_data.clone());
        }
        let chunks = self.raw_data.chunks_exact(4);
        if !chunks.remainder().is_empty() {
            return None;
        }
        Some(
            chunks
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }

    /// Replaces the values of an f32 tensor (written to `raw_data`).
    pub fn set_f32_values(&mut self, values: &[f32]) {
        self.data_type = dtype::FLOAT;
        self.float_data.clear();
        self.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    }
}

/// A float tensor value info of shape `[batch, width]`, `batch` symbolic.
pub fn batch_value_info(name: &str, width: usize) -> ValueInfoProto {
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: dtype::FLOAT,
                shape: Some(TensorShapeProto {
                    dim: vec![
                        Dimension {
                            value: Some(DimensionValue::DimParam("batch".into())),
                        },
                        Dimension {
                            value: Some(DimensionValue::DimValue(width as i64)),
                        },
                    ],
                }),
            }),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn field_numbers_match_onnx_proto_on_the_wire() {
        // OperatorSetIdProto { domain = "" (omitted), version = 17 }: field 2, varint -> 0x10 0x11.
        let op = OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        };
        assert_eq!(op.encode_to_vec(), vec![0x10, 17]);
        // TensorProto dims [2, 3] unpacked (field 1, varint: 0x08 each), data_type 1
        // (field 2: 0x10), name "w" (field 8, length-delimited: 0x42), raw_data (field 9: 0x4a).
        let t = TensorProto {
            dims: vec![2, 3],
            data_type: dtype::INT8,
            name: "w".into(),
            raw_data: vec![0xff],
            ..Default::default()
        };
        assert_eq!(
            t.encode_to_vec(),
            vec![0x08, 2, 0x08, 3, 0x10, 3, 0x42, 1, b'w', 0x4a, 1, 0xff]
        );
        // AttributeProto { name "axis", i = -1, type INT }: field 1 (0x0a), field 3 (0x18)
        // as a 10-byte varint, field 20 (0xa0 0x01).
        let a = attr_int("axis", -1);
        let bytes = a.encode_to_vec();
        assert_eq!(&bytes[..6], &[0x0a, 4, b'a', b'x', b'i', b's']);
        assert_eq!(bytes[6], 0x18);
        assert_eq!(&bytes[bytes.len() - 3..], &[0xa0, 0x01, 2]);
        // Dimension dim_param "batch": field 2 (0x12); dim_value 5: field 1 (0x08).
        let d = Dimension {
            value: Some(DimensionValue::DimParam("batch".into())),
        };
        assert_eq!(d.encode_to_vec()[..2], [0x12, 5]);
        let d = Dimension {
            value: Some(DimensionValue::DimValue(5)),
        };
        assert_eq!(d.encode_to_vec(), vec![0x08, 5]);
        // ModelProto: ir_version field 1, metadata_props field 14 (0x72).
        let m = ModelProto {
            ir_version: 8,
            metadata_props: vec![StringStringEntryProto {
                key: "k".into(),
                value: "v".into(),
            }],
            ..Default::default()
        };
        assert_eq!(
            m.encode_to_vec(),
            vec![0x08, 8, 0x72, 6, 0x0a, 1, b'k', 0x12, 1, b'v']
        );
    }

    #[test]
    fn tensors_round_trip_through_raw_data() {
        let t = tensor_f32("b", &[3], &[1.5, -2.0, 0.25]);
        let back = TensorProto::decode(t.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back.dims, vec![3]);
        assert_eq!(back.f32_values().unwrap(), vec![1.5, -2.0, 0.25]);
        let mut back = back;
        back.set_f32_values(&[7.0]);
        assert_eq!(back.raw_data, 7.0f32.to_le_bytes().to_vec());
        let q = tensor_i8("w", &[1, 3], &[-128, 0, 127]);
        assert_eq!(q.raw_data, vec![0x80, 0x00, 0x7f]);
        assert_eq!(q.f32_values(), None);
        let ints = attr_ints("perm", &[1, 0]);
        let back = AttributeProto::decode(ints.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back.ints, vec![1, 0]);
        assert_eq!(back.r#type, attr_type::INTS);
        assert_eq!(attr_float("alpha", 0.5).f, 0.5);
    }
}
