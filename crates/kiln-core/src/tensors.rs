//! TensorStore: named f32 / i8 tensors, saved and loaded as safetensors.

use crate::error::{CoreError, Result};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use std::collections::BTreeMap;
use std::path::Path;

/// The values of one tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// Signed 8-bit integers.
    I8(Vec<i8>),
}

/// A named tensor: shape plus row-major values.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: TensorData,
}

/// Named tensors, sorted by name (so files are byte-identical for identical contents).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TensorStore {
    /// The tensors.
    pub tensors: BTreeMap<String, Tensor>,
}

impl TensorStore {
    /// Adds or replaces an f32 tensor.
    pub fn insert_f32(&mut self, name: &str, shape: Vec<usize>, data: Vec<f32>) {
        self.tensors.insert(
            name.to_string(),
            Tensor {
                shape,
                data: TensorData::F32(data),
            },
        );
    }

    /// Adds or replaces an i8 tensor.
    pub fn insert_i8(&mut self, name: &str, shape: Vec<usize>, data: Vec<i8>) {
        self.tensors.insert(
            name.to_string(),
            Tensor {
                shape,
                data: TensorData::I8(data),
            },
        );
    }

    /// The f32 tensor `name`, or an error naming it.
    pub fn f32(&self, name: &str) -> Result<&[f32]> {
        match self.tensors.get(name).map(|t| &t.data) {
            Some(TensorData::F32(v)) => Ok(v),
            Some(_) => Err(CoreError::Invalid(format!("tensor `{name}` is not f32"))),
            None => Err(CoreError::Invalid(format!(
                "tensor `{name}` is missing from the weights"
            ))),
        }
    }

    /// Mutable access to the f32 tensor `name`.
    pub fn f32_mut(&mut self, name: &str) -> Result<&mut Vec<f32>> {
        match self.tensors.get_mut(name).map(|t| &mut t.data) {
            Some(TensorData::F32(v)) => Ok(v),
            _ => Err(CoreError::Invalid(format!(
                "f32 tensor `{name}` is missing from the weights"
            ))),
        }
    }

    /// The i8 tensor `name`, or an error naming it.
    pub fn i8(&self, name: &str) -> Result<&[i8]> {
        match self.tensors.get(name).map(|t| &t.data) {
            Some(TensorData::I8(v)) => Ok(v),
            Some(_) => Err(CoreError::Invalid(format!("tensor `{name}` is not i8"))),
            None => Err(CoreError::Invalid(format!(
                "tensor `{name}` is missing from the weights"
            ))),
        }
    }

    /// Serialises to safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut raw: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, t) in &self.tensors {
            let (dtype, bytes) = match &t.data {
                TensorData::F32(v) => {
                    (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect())
                }
                TensorData::I8(v) => (Dtype::I8, v.iter().map(|x| *x as u8).collect()),
            };
            raw.push((name.clone(), dtype, t.shape.clone(), bytes));
        }
        let views = raw
            .iter()
            .map(|(n, d, s, b)| {
                TensorView::new(*d, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| CoreError::Invalid(format!("tensor `{n}`: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize(views, None)
            .map_err(|e| CoreError::Invalid(format!("safetensors: {e}")))
    }

    /// Writes the store to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::atomic_write(path, &self.to_bytes()?)
    }

    /// Loads a safetensors file holding f32 and i8 tensors.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| CoreError::io(path, e))?;
        let bad = |m: String| CoreError::Tensors {
            path: path.to_path_buf(),
            message: m,
        };
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let mut store = TensorStore::default();
        for (name, view) in st.tensors() {
            let shape = view.shape().to_vec();
            let data = view.data();
            match view.dtype() {
                Dtype::F32 => {
                    let v = data
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    store.tensors.insert(
                        name,
                        Tensor {
                            shape,
                            data: TensorData::F32(v),
                        },
                    );
                }
                Dtype::I8 => {
                    let v = data.iter().map(|b| *b as i8).collect();
                    store.tensors.insert(
                        name,
                        Tensor {
                            shape,
                            data: TensorData::I8(v),
                        },
                    );
                }
                other => {
                    return Err(bad(format!(
                        "tensor `{name}` has dtype {other:?}; kiln reads F32 and I8"
                    )));
                }
            }
        }
        Ok(store)
    }

    /// Total bytes of tensor data.
    pub fn data_bytes(&self) -> usize {
        self.tensors
            .values()
            .map(|t| match &t.data {
                TensorData::F32(v) => v.len() * 4,
                TensorData::I8(v) => v.len(),
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_round_trip_keeps_values_and_types() {
        let mut s = TensorStore::default();
        s.insert_f32("w", vec![2, 2], vec![1.0, -0.5, 3.0, 4.5]);
        s.insert_i8("q", vec![3], vec![-128, 0, 127]);
        let dir = std::env::temp_dir().join(format!("kiln-core-ts-{}", std::process::id()));
        let p = dir.join("w.safetensors");
        s.save(&p).unwrap();
        let back = TensorStore::load(&p).unwrap();
        assert_eq!(back, s);
        assert_eq!(s.to_bytes().unwrap(), back.to_bytes().unwrap());
        assert_eq!(s.data_bytes(), 19);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
