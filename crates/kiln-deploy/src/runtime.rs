//! ONNX Runtime through `ort` (load-dynamic): finds the library, keeps one Environment
//! per process, and runs sessions behind kiln-core's `Predictor` trait.

use crate::{DeployError, Result};
use kiln_core::{CoreError, Predictions, Predictor};
use ort::session::Session;
use ort::value::TensorRef;
use std::path::PathBuf;
use std::sync::OnceLock;

/// Where `cargo xtask setup` puts the library.
pub fn default_library_path() -> Option<PathBuf> {
    let base = match std::env::var_os("KILN_CACHE_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/kiln"),
    };
    Some(base.join("onnxruntime-1.31.1/libonnxruntime.so"))
}

/// The ONNX Runtime library: `ORT_DYLIB_PATH` first, then the setup location.
pub fn library_path() -> Result<PathBuf> {
    let env = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    if let Some(p) = env.as_ref().filter(|p| p.is_file()) {
        return Ok(p.clone());
    }
    let default = default_library_path();
    if let Some(p) = default.as_ref().filter(|p| p.is_file()) {
        return Ok(p.clone());
    }
    Err(DeployError::Runtime(format!(
        "ONNX Runtime library not found: ORT_DYLIB_PATH is {} and {} does not exist; run `cargo xtask setup` (or point ORT_DYLIB_PATH at libonnxruntime.so 1.31.1)",
        env.map(|p| format!("`{}` (no such file)", p.display()))
            .unwrap_or_else(|| "unset".into()),
        default
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "~/.cache/kiln/onnxruntime-1.31.1/libonnxruntime.so".into())
    )))
}

static ENV: OnceLock<std::result::Result<ort::environment::Environment, String>> = OnceLock::new();

fn environment() -> Result<&'static ort::environment::Environment> {
    ENV.get_or_init(|| {
        let path = library_path().map_err(|e| e.to_string())?;
        let builder =
            ort::init_from(&path).map_err(|e| format!("loading {}: {e}", path.display()))?;
        builder
            .with_name("kiln")
            .build()
            .map_err(|e| format!("creating the ONNX Runtime environment: {e}"))
    })
    .as_ref()
    .map_err(|e| DeployError::Runtime(e.clone()))
}

/// An ONNX model loaded into an ONNX Runtime session.
pub struct OrtModel {
    session: Session,
    n_features: usize,
}

impl OrtModel {
    /// Loads a model from its bytes with `threads` intra-op threads.
    pub fn from_bytes(bytes: &[u8], threads: usize) -> Result<Self> {
        let env = environment()?;
        let err = |e: String| DeployError::Runtime(format!("building the session: {e}"));
        let session = Session::builder(env)
            .map_err(|e| err(e.to_string()))?
            .with_intra_threads(threads.max(1))
            .map_err(|e| err(e.to_string()))?
            .with_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
            .map_err(|e| err(e.to_string()))?
            .commit_from_memory(bytes)
            .map_err(|e| err(e.to_string()))?;
        let n_features = session
            .inputs()
            .first()
            .and_then(|i| i.dtype().tensor_shape().and_then(|s| s.last().copied()))
            .filter(|d| *d > 0)
            .map(|d| d as usize)
            .ok_or_else(|| {
                DeployError::Runtime("the model has no input with a fixed feature width".into())
            })?;
        Ok(OrtModel {
            session,
            n_features,
        })
    }

    /// Loads a model from a file.
    pub fn from_file(path: &std::path::Path, threads: usize) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| DeployError::Core(CoreError::io(path, e)))?;
        Self::from_bytes(&bytes, threads)
    }
}

impl Predictor for OrtModel {
    fn name(&self) -> &str {
        "onnxruntime"
    }

    fn predict(&mut self, features: &[f32], n_rows: usize) -> kiln_core::Result<Predictions> {
        let bad = |m: String| CoreError::Invalid(format!("onnxruntime: {m}"));
        if features.len() != n_rows * self.n_features {
            return Err(bad(format!(
                "got {} values for {n_rows} rows of {} features",
                features.len(),
                self.n_features
            )));
        }
        let input = TensorRef::from_array_view(([n_rows, self.n_features], features))
            .map_err(|e| bad(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs!["features" => input])
            .map_err(|e| bad(e.to_string()))?;
        let get = |name: &str| -> kiln_core::Result<(usize, Vec<f32>)> {
            let v = outputs
                .get(name)
                .ok_or_else(|| bad(format!("no output `{name}`")))?;
            let (shape, data) = v
                .try_extract_tensor::<f32>()
                .map_err(|e| bad(e.to_string()))?;
            Ok((shape.last().copied().unwrap_or(1) as usize, data.to_vec()))
        };
        let (k, logits) = get("logits")?;
        let (_, probabilities) = get("probabilities")?;
        Ok(Predictions {
            n_rows,
            n_outputs: k,
            logits,
            probabilities,
        })
    }
}
