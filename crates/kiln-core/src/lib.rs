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
pub mod conv;
pub mod dataset;
pub mod encode;
pub mod error;
pub mod forward;
pub mod model;
pub mod predictor;
pub mod progress;
pub mod row_split;
pub mod schema;
pub mod tensors;
pub mod time;
pub mod tolerance;

pub use forward::forward;

pub use artifact::{
    Artifact, atomic_write, hash_bytes, hash_dir, hash_file, read_json, write_json,
};
pub use conv::{ConvStep, ImageShape, Window};
pub use dataset::Dataset;
pub use encode::TextColumn;
pub use error::{CoreError, Result};
pub use model::{
    Activation, EmbeddingSpec, LAYER_NORM_EPS, LEAKY_RELU_ALPHA, LayerSpec, ModelSpec, Norm,
    Pruning, PruningKind, Quantization, Scheme, WeightType,
};
pub use predictor::{NativeModel, Predictions, Predictor};
pub use progress::{NoProgress, Progress};
pub use schema::{FeatureError, Rows, Schema, Task, Transform, min_max_range};
pub use tensors::{TensorData, TensorStore};

/// The candidate closest to `name` by edit distance, when it is close enough to be a typo
/// (used for "did you mean" hints everywhere).
pub fn nearest<'a>(name: &str, candidates: &'a [String]) -> Option<&'a str> {
    // a difference of case only counts less than any other edit (`Y` → `y`, not `x`)
    let folded = name.to_lowercase();
    candidates
        .iter()
        .map(|c| {
            (
                levenshtein(name, c),
                levenshtein(&folded, &c.to_lowercase()),
                c,
            )
        })
        .filter(|(d, _, c)| *d > 0 && *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, f, _)| (*f, *d))
        .map(|(_, _, c)| c.as_str())
}

/// The message of a caught panic (`catch_unwind`'s payload).
pub fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// Levenshtein edit distance (hand-written: 10 lines do not justify a dependency).
pub fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Rows per batch whenever two predictors are compared or a model is scored: dynamic int8
/// quantization takes its range from the whole batch, so every stage uses this one size.
pub const EVAL_BATCH: usize = 1000;

/// The kiln version recorded in artifacts and stage hashes.
pub const KILN_VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(test)]
mod tests {
    #[test]
    fn nearest_suggests_typos_only() {
        let keys: Vec<String> = ["epochs", "batch_size", "model"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(super::nearest("epoch", &keys), Some("epochs"));
        assert_eq!(super::nearest("batch_sise", &keys), Some("batch_size"));
        assert_eq!(super::nearest("optimizer", &keys), None);
        let cols = ["x".to_string(), "y".to_string()];
        assert_eq!(super::nearest("Y", &cols), Some("y"));
        assert_eq!(super::levenshtein("kitten", "sitting"), 3);
    }
}
