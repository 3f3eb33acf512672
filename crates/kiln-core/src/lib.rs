//! kiln-core: the vocabulary every kiln stage shares — datasets, schemas, model specs,
//! tensor stores, artifacts on disk, the reference forward pass and the `Predictor` trait.
//!
//! It depends on arrow-rs and small pure-Rust crates only, so any stage (or a user's own
//! program) can read kiln artifacts without pulling in polars, dfdx or ONNX Runtime.
//!
//! ```
//! use kiln_core::{Activation, LayerSpec, ModelSpec, NativeModel, Predictor, Task, TensorStore};
//! let spec = ModelSpec::mlp(2, &[], Activation::Relu, Task::Classification, 2);
//! let mut weights = TensorStore::default();
//! weights.insert_f32("layers.0.weight", vec![2, 2], vec![1.0, 0.0, 0.0, 1.0]);
//! weights.insert_f32("layers.0.bias", vec![2], vec![0.0, 0.0]);
//! let mut model = NativeModel::new(spec, weights).unwrap();
//! let out = model.predict(&[3.0, 1.0], 1).unwrap();
//! assert_eq!(out.argmax(), vec![0]);
//! ```

pub mod artifact;
pub mod dataset;
pub mod error;
pub mod forward;
pub mod model;
pub mod predictor;
pub mod progress;
pub mod schema;
pub mod tensors;

pub use forward::forward;

pub use artifact::{atomic_write, hash_bytes, hash_dir, hash_file, read_json, write_json};
pub use dataset::Dataset;
pub use error::{CoreError, Result};
pub use model::{Activation, LayerSpec, ModelSpec, Quantization};
pub use predictor::{NativeModel, Predictions, Predictor};
pub use progress::{NoProgress, Progress};
pub use schema::{Schema, Task, Transform};
pub use tensors::{TensorData, TensorStore};

/// Rows per batch whenever two predictors are compared or a model is scored: dynamic int8
/// quantization takes its range from the whole batch, so every stage uses this one size.
pub const EVAL_BATCH: usize = 1000;

/// The kiln version recorded in artifacts and stage hashes.
pub const KILN_VERSION: &str = env!("CARGO_PKG_VERSION");
