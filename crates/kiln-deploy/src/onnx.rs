//! The ONNX protobuf messages, generated at build time from the official schema, plus small
//! builders for nodes, attributes, initializers, value infos and metadata entries.
//!
//! `build.rs` compiles the vendored `proto/onnx.proto` (copied unchanged from the `onnx`
//! release the tests check against; see `proto/README.md`) with `protox`, a protobuf
//! compiler in pure Rust, and generates the `prost` messages with `prost-build`: no `protoc`
//! binary is needed, and field numbers, types and packing come from the official schema
//! instead of being transcribed by hand. Every message and enum of the schema is re-exported
//! here under its protobuf name (`ModelProto`, `GraphProto`, `NodeProto`, `TensorProto`,
//! `tensor_proto::DataType`, …); nested messages keep prost's modules
//! (`type_proto::Tensor`, `tensor_shape_proto::Dimension`), with the aliases
//! [`TypeProtoTensor`], [`Dimension`] and [`DimensionValue`].
//!
//! onnx.proto is proto2, so optional scalar fields are `Option<T>` (`None` is not written)
//! and each has a getter returning the field's default when unset (`node.op_type()`,
//! `tensor.data_type()`); enum fields also get a typed getter and setter
//! (`attribute.r#type()`, `attribute.set_type(…)`). Repeated scalars the schema declares
//! unpacked (`TensorProto.dims`, `AttributeProto.ints`) stay unpacked, as the reference
//! implementation writes them.

/// The code `prost-build` generated from `proto/onnx.proto` (see `build.rs`). Its docs are
/// the schema's comments, copied as they are: not every message or field has one, and their
/// formatting is not clippy's or rustdoc's (onnx.proto is vendored unchanged, so lints on
/// it are allowed here instead of fixed).
#[allow(missing_docs, clippy::all, rustdoc::all)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

pub use generated::*;

/// `TypeProto.Tensor`: element type and shape (alias of [`type_proto::Tensor`]).
pub use generated::type_proto::Tensor as TypeProtoTensor;

/// `TensorShapeProto.Dimension`: a fixed size or a named symbolic one (alias of
/// [`tensor_shape_proto::Dimension`]).
pub use generated::tensor_shape_proto::Dimension;

/// The `value` oneof of `TensorShapeProto.Dimension` (alias of
/// [`tensor_shape_proto::dimension::Value`]).
pub use generated::tensor_shape_proto::dimension::Value as DimensionValue;

/// `TensorProto.DataType` values kiln uses, as the `i32` stored in `data_type`,
/// `elem_type` and `Cast`'s `to` attribute.
pub mod dtype {
    use super::tensor_proto::DataType;

    /// `float` (f32).
    pub const FLOAT: i32 = DataType::Float as i32;
    /// `uint8`.
    pub const UINT8: i32 = DataType::Uint8 as i32;
    /// `int8`.
    pub const INT8: i32 = DataType::Int8 as i32;
    /// `int32`.
    pub const INT32: i32 = DataType::Int32 as i32;
    /// `int64`.
    pub const INT64: i32 = DataType::Int64 as i32;
    /// `float16`.
    pub const FLOAT16: i32 = DataType::Float16 as i32;
}

/// `AttributeProto.AttributeType` values kiln uses, as the `i32` stored in `type`.
pub mod attr_type {
    use super::attribute_proto::AttributeType;

    /// A single float (`f`).
    pub const FLOAT: i32 = AttributeType::Float as i32;
    /// A single int64 (`i`).
    pub const INT: i32 = AttributeType::Int as i32;
    /// A list of int64 (`ints`).
    pub const INTS: i32 = AttributeType::Ints as i32;
}

/// A node in the default (ONNX) domain (`domain` unset).
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
        name: Some(name.to_string()),
        op_type: Some(op.to_string()),
        attribute,
        ..Default::default()
    }
}

/// An int64 attribute.
pub fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        i: Some(i),
        r#type: Some(attr_type::INT),
        ..Default::default()
    }
}

/// A float attribute.
pub fn attr_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        f: Some(f),
        r#type: Some(attr_type::FLOAT),
        ..Default::default()
    }
}

/// An int64-list attribute.
pub fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        ints: ints.to_vec(),
        r#type: Some(attr_type::INTS),
        ..Default::default()
    }
}

/// A `metadata_props` entry.
pub fn string_entry(key: &str, value: impl Into<String>) -> StringStringEntryProto {
    StringStringEntryProto {
        key: Some(key.to_string()),
        value: Some(value.into()),
    }
}

/// An import of the default (ONNX) operator set at `version` (`domain` unset, which the
/// schema reads as the empty string).
pub fn opset(version: i64) -> OperatorSetIdProto {
    OperatorSetIdProto {
        domain: None,
        version: Some(version),
    }
}

/// A tensor of `data_type` with its values already little-endian in `raw_data`.
fn tensor_raw(name: &str, shape: &[usize], data_type: i32, raw_data: Vec<u8>) -> TensorProto {
    TensorProto {
        dims: shape.iter().map(|&v| v as i64).collect(),
        data_type: Some(data_type),
        name: Some(name.to_string()),
        raw_data: Some(raw_data),
        ..Default::default()
    }
}

/// An f32 initializer (values in `raw_data`, little-endian).
pub fn tensor_f32(name: &str, shape: &[usize], data: &[f32]) -> TensorProto {
    let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    tensor_raw(name, shape, dtype::FLOAT, raw)
}

/// An i8 initializer (values in `raw_data`, two's complement).
pub fn tensor_i8(name: &str, shape: &[usize], data: &[i8]) -> TensorProto {
    let raw = data.iter().map(|&v| v as u8).collect();
    tensor_raw(name, shape, dtype::INT8, raw)
}

/// A float16 initializer from f32 values (rounded to nearest even; values already
/// representable in f16 are kept exactly).
pub fn tensor_f16(name: &str, shape: &[usize], data: &[f32]) -> TensorProto {
    let raw = data
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
        .collect();
    tensor_raw(name, shape, dtype::FLOAT16, raw)
}

/// An i64 initializer (values in `raw_data`, little-endian).
pub fn tensor_i64(name: &str, shape: &[usize], data: &[i64]) -> TensorProto {
    let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    tensor_raw(name, shape, dtype::INT64, raw)
}

/// An i32 initializer (values in `raw_data`, little-endian).
pub fn tensor_i32(name: &str, shape: &[usize], data: &[i32]) -> TensorProto {
    let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    tensor_raw(name, shape, dtype::INT32, raw)
}

/// A u8 initializer (values in `raw_data`).
pub fn tensor_u8(name: &str, shape: &[usize], data: &[u8]) -> TensorProto {
    tensor_raw(name, shape, dtype::UINT8, data.to_vec())
}

impl TensorProto {
    /// The values of an f32 tensor (from `raw_data`, or `float_data` when that is unset or
    /// empty).
    pub fn f32_values(&self) -> Option<Vec<f32>> {
        if self.data_type() != dtype::FLOAT {
            return None;
        }
        let raw = self.raw_data();
        if raw.is_empty() {
            return Some(self.float_data.clone());
        }
        let chunks = raw.chunks_exact(4);
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
        self.data_type = Some(dtype::FLOAT);
        self.float_data.clear();
        self.raw_data = Some(values.iter().flat_map(|v| v.to_le_bytes()).collect());
    }
}

/// A float tensor value info of shape `[batch, width]`, `batch` symbolic.
pub fn batch_value_info(name: &str, width: usize) -> ValueInfoProto {
    let dim = |value| Dimension {
        value: Some(value),
        ..Default::default()
    };
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(TypeProtoTensor {
                elem_type: Some(dtype::FLOAT),
                shape: Some(TensorShapeProto {
                    dim: vec![
                        dim(DimensionValue::DimParam("batch".into())),
                        dim(DimensionValue::DimValue(width as i64)),
                    ],
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn constants_match_the_schema_numbers() {
        // The numbers onnx.proto assigns (and `onnx.TensorProto.FLOAT` etc. in Python).
        assert_eq!(
            [
                dtype::FLOAT,
                dtype::UINT8,
                dtype::INT8,
                dtype::INT32,
                dtype::INT64
            ],
            [1, 2, 3, 6, 7]
        );
        assert_eq!(dtype::FLOAT16, 10);
        assert_eq!(
            [attr_type::FLOAT, attr_type::INT, attr_type::INTS],
            [1, 2, 7]
        );
    }

    #[test]
    fn field_numbers_match_onnx_proto_on_the_wire() {
        // OperatorSetIdProto { domain unset, version = 17 }: field 2, varint -> 0x10 0x11.
        assert_eq!(opset(17).encode_to_vec(), vec![0x10, 17]);
        // TensorProto dims [2, 3] unpacked (field 1, varint: 0x08 each), data_type 3
        // (field 2: 0x10), name "w" (field 8, length-delimited: 0x42), raw_data (field 9: 0x4a).
        let t = tensor_i8("w", &[2, 3], &[-1]);
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
        // proto2: a set zero is written, ints unpacked; the bytes of
        // `onnx.helper.make_attribute("a", 0)` and `make_attribute("p", [1, 0])`.
        assert_eq!(
            attr_int("a", 0).encode_to_vec(),
            vec![0x0a, 1, b'a', 0x18, 0, 0xa0, 0x01, 2]
        );
        assert_eq!(
            attr_ints("p", &[1, 0]).encode_to_vec(),
            vec![0x0a, 1, b'p', 0x40, 1, 0x40, 0, 0xa0, 0x01, 7]
        );
        // Dimension dim_param "batch": field 2 (0x12); dim_value 5: field 1 (0x08).
        let d = Dimension {
            value: Some(DimensionValue::DimParam("batch".into())),
            ..Default::default()
        };
        assert_eq!(d.encode_to_vec()[..2], [0x12, 5]);
        let d = Dimension {
            value: Some(DimensionValue::DimValue(5)),
            ..Default::default()
        };
        assert_eq!(d.encode_to_vec(), vec![0x08, 5]);
        // A set empty string is written (field 2, length 0), as `onnx.helper.set_model_props`
        // writes `pipeline_hash = ""`.
        assert_eq!(
            string_entry("k", "").encode_to_vec(),
            vec![0x0a, 1, b'k', 0x12, 0]
        );
        // ModelProto: ir_version field 1, metadata_props field 14 (0x72).
        let m = ModelProto {
            ir_version: Some(8),
            metadata_props: vec![string_entry("k", "v")],
            ..Default::default()
        };
        assert_eq!(
            m.encode_to_vec(),
            vec![0x08, 8, 0x72, 6, 0x0a, 1, b'k', 0x12, 1, b'v']
        );
        // ValueInfoProto: name (0x0a), type (0x12) -> TypeProto.tensor_type (0x0a) ->
        // elem_type 1 (0x08 1), shape (0x12) -> two dim (0x0a) entries. The same bytes as
        // `onnx.helper.make_tensor_value_info("x", 1, ["batch", 4]).SerializeToString()`.
        assert_eq!(
            batch_value_info("x", 4).encode_to_vec(),
            vec![
                0x0a, 1, b'x', 0x12, 19, 0x0a, 17, 0x08, 1, 0x12, 13, 0x0a, 7, 0x12, 5, b'b', b'a',
                b't', b'c', b'h', 0x0a, 2, 0x08, 4
            ]
        );
    }

    #[test]
    fn tensors_round_trip_through_raw_data() {
        let t = tensor_f32("b", &[3], &[1.5, -2.0, 0.25]);
        let back = TensorProto::decode(t.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.dims, vec![3]);
        assert_eq!(back.f32_values().unwrap(), vec![1.5, -2.0, 0.25]);
        let mut back = back;
        back.set_f32_values(&[7.0]);
        assert_eq!(back.raw_data(), 7.0f32.to_le_bytes());
        let q = tensor_i8("w", &[1, 3], &[-128, 0, 127]);
        assert_eq!(q.raw_data(), [0x80, 0x00, 0x7f]);
        assert_eq!(q.data_type(), tensor_proto::DataType::Int8 as i32);
        assert_eq!(q.f32_values(), None);
        // float_data is read when raw_data is absent
        let f = TensorProto {
            data_type: Some(dtype::FLOAT),
            float_data: vec![2.0, 3.0],
            ..Default::default()
        };
        assert_eq!(f.f32_values().unwrap(), vec![2.0, 3.0]);
        let ints = attr_ints("perm", &[1, 0]);
        let back = AttributeProto::decode(ints.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back.ints, vec![1, 0]);
        assert_eq!(back.r#type(), attribute_proto::AttributeType::Ints);
        assert_eq!(attr_float("alpha", 0.5).f, Some(0.5));
    }
}
