//! ONNX Runtime through `ort` (load-dynamic): finds the shared library, keeps one
//! Environment per process, and runs sessions behind kiln-core's `Predictor` trait.

use crate::{DeployError, Result};
use kiln_core::{CoreError, Predictions, Predictor};
use ort::session::Session;
use ort::session::builder::SessionBuilder;
use ort::value::TensorRef;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The ONNX Runtime version kiln is built and tested against.
pub const ORT_VERSION: &str = "1.31.1";

/// Where `cargo xtask setup` puts the library:
/// `$KILN_CACHE_DIR/onnxruntime-1.31.1/libonnxruntime.so`, `KILN_CACHE_DIR` defaulting to
/// `$HOME/.cache/kiln`. `None` when neither variable is set.
pub fn default_library_path() -> Option<PathBuf> {
    default_path_from(std::env::var_os("KILN_CACHE_DIR"), std::env::var_os("HOME"))
}

fn default_path_from(cache_dir: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let base = match cache_dir.filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(home.filter(|h| !h.is_empty())?)
            .join(".cache")
            .join("kiln"),
    };
    Some(
        base.join(format!("onnxruntime-{ORT_VERSION}"))
            .join("libonnxruntime.so"),
    )
}

/// The ONNX Runtime library to load: `ORT_DYLIB_PATH` when it names a file, else
/// [`default_library_path`]; otherwise an error that names both and says how to install it.
pub fn library_path() -> Result<PathBuf> {
    resolve_library(std::env::var_os("ORT_DYLIB_PATH"), default_library_path())
}

fn resolve_library(from_env: Option<OsString>, default: Option<PathBuf>) -> Result<PathBuf> {
    let from_env = from_env.filter(|p| !p.is_empty()).map(PathBuf::from);
    if let Some(p) = from_env.as_ref().filter(|p| p.is_file()) {
        return Ok(p.clone());
    }
    if let Some(p) = default.as_ref().filter(|p| p.is_file()) {
        return Ok(p.clone());
    }
    Err(DeployError::Runtime(format!(
        "ONNX Runtime {ORT_VERSION} library not found: ORT_DYLIB_PATH is {} and {} does not exist; run `cargo xtask setup` (or point ORT_DYLIB_PATH at libonnxruntime.so {ORT_VERSION})",
        from_env
            .map(|p| format!("`{}` (no such file)", p.display()))
            .unwrap_or_else(|| "unset".into()),
        default
            .map(|p| format!("`{}`", p.display()))
            .unwrap_or_else(|| {
                format!("`$HOME/.cache/kiln/onnxruntime-{ORT_VERSION}/libonnxruntime.so` ($HOME is unset)")
            })
    )))
}

/// The process-wide ONNX Runtime environment (the library is loaded once; a failure is
/// remembered for the rest of the process).
static ENV: OnceLock<std::result::Result<ort::environment::Environment, String>> = OnceLock::new();

/// Loads the library and creates the environment on first use.
pub fn environment() -> Result<&'static ort::environment::Environment> {
    ENV.get_or_init(|| {
        let path = library_path().map_err(|e| match e {
            DeployError::Runtime(m) => m,
            other => other.to_string(),
        })?;
        let builder = ort::init_from(&path).map_err(|e| {
            format!(
                "loading ONNX Runtime from {}: {e}; run `cargo xtask setup` to install {ORT_VERSION}",
                path.display()
            )
        })?;
        builder
            .with_name("kiln")
            .build()
            .map_err(|e| format!("creating the ONNX Runtime environment: {e}"))
    })
    .as_ref()
    .map_err(|e| DeployError::Runtime(e.clone()))
}

/// The ONNX Runtime library this process loaded, with its build information, once a
/// session was created (None before, or when loading failed).
pub fn loaded() -> Option<String> {
    ENV.get()?.as_ref().ok()?;
    let path = library_path().ok()?;
    Some(format!("{} ({})", path.display(), ort::info()))
}

fn session_builder(threads: usize) -> Result<SessionBuilder> {
    let env = environment()?;
    // The builder's error type holds the builder (not Send/Sync): keep only the message.
    let err =
        |e: String| DeployError::Runtime(format!("configuring the ONNX Runtime session: {e}"));
    Session::builder(env)
        .map_err(|e| err(e.to_string()))?
        .with_intra_threads(threads.max(1))
        .map_err(|e| err(e.to_string()))?
        .with_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
        .map_err(|e| err(e.to_string()))
}

/// An ONNX model in an ONNX Runtime session, used through [`Predictor`] (name
/// `onnxruntime`). It expects kiln's layout: one float input `[batch, features]` and
/// either outputs `logits` and `probabilities` (classification) or `prediction`
/// (regression).
pub struct OrtModel {
    session: Session,
    /// `logits` or `prediction`.
    output: &'static str,
    input_name: String,
    n_features: usize,
    n_outputs: usize,
}

impl std::fmt::Debug for OrtModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtModel")
            .field("input_name", &self.input_name)
            .field("n_features", &self.n_features)
            .field("n_outputs", &self.n_outputs)
            .finish()
    }
}

impl OrtModel {
    /// Loads a model from its bytes, running with `threads` intra-op threads (1 gives
    /// reproducible timings and results; 0 counts as 1).
    pub fn from_bytes(bytes: &[u8], threads: usize) -> Result<Self> {
        let session = session_builder(threads)?
            .commit_from_memory(bytes)
            .map_err(|e| DeployError::Runtime(format!("loading the ONNX model: {e}")))?;
        Self::new(session)
    }

    /// Loads a model from an `.onnx` file (see [`OrtModel::from_bytes`]).
    pub fn from_file(path: &Path, threads: usize) -> Result<Self> {
        if !path.is_file() {
            return Err(DeployError::Runtime(format!(
                "{}: no such ONNX file; run the deploy stage first",
                path.display()
            )));
        }
        let session = session_builder(threads)?
            .commit_from_file(path)
            .map_err(|e| DeployError::Runtime(format!("loading {}: {e}", path.display())))?;
        Self::new(session)
    }

    fn new(session: Session) -> Result<Self> {
        let bad = |m: &str| {
            DeployError::Runtime(format!(
                "the ONNX model {m}; kiln runs models with one float input [batch, features] and an output `logits` (classification) or `prediction` (regression)"
            ))
        };
        let [input] = session.inputs() else {
            return Err(bad(&format!("has {} inputs", session.inputs().len())));
        };
        let n_features = input
            .dtype()
            .tensor_shape()
            .filter(|s| s.len() == 2)
            .and_then(|s| s.last().copied())
            .filter(|d| *d > 0)
            .ok_or_else(|| bad("input has no fixed feature width"))?
            as usize;
        let names: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        let output = if names.contains(&"logits") {
            "logits"
        } else if names.contains(&"prediction") {
            "prediction"
        } else {
            return Err(bad(&format!(
                "has outputs {names:?} without `logits` or `prediction`"
            )));
        };
        Ok(OrtModel {
            output,
            input_name: input.name().to_string(),
            n_features,
            n_outputs: names.len(),
            session,
        })
    }

    /// Number of features per row the model takes.
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// Number of graph outputs (2 for classification: logits and probabilities; 1 for
    /// regression).
    pub fn n_outputs(&self) -> usize {
        self.n_outputs
    }

    /// A `metadata_props` value of the model (e.g. `class_labels`), if present.
    pub fn metadata(&self, key: &str) -> Option<String> {
        self.session.metadata().ok()?.custom(key)
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
                "got {} feature values for {n_rows} rows, the model takes {} per row",
                features.len(),
                self.n_features
            )));
        }
        let input = TensorRef::from_array_view(([n_rows, self.n_features], features))
            .map_err(|e| bad(format!("building the input tensor: {e}")))?;
        let has_probabilities = self.n_outputs > 1;
        let outputs = self
            .session
            .run(ort::inputs![self.input_name.as_str() => input])
            .map_err(|e| bad(format!("running the model: {e}")))?;
        let get = |name: &str| -> kiln_core::Result<(usize, Vec<f32>)> {
            let v = outputs
                .get(name)
                .ok_or_else(|| bad(format!("the model returned no `{name}`")))?;
            let (shape, data) = v
                .try_extract_tensor::<f32>()
                .map_err(|e| bad(format!("reading `{name}`: {e}")))?;
            let k = match shape.len() {
                2 if shape[0] as usize == n_rows => shape[1] as usize,
                _ => {
                    return Err(bad(format!(
                        "`{name}` has shape {shape:?}, expected [{n_rows}, k]"
                    )));
                }
            };
            Ok((k, data.to_vec()))
        };
        let (k, logits) = get(self.output)?;
        let probabilities = if has_probabilities {
            let (kp, p) = get("probabilities")?;
            if kp != k {
                return Err(bad(format!(
                    "`probabilities` has {kp} columns but `logits` has {k}"
                )));
            }
            p
        } else {
            Vec::new()
        };
        Ok(Predictions {
            n_rows,
            n_outputs: k,
            logits,
            probabilities,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_lookup_prefers_ort_dylib_path_then_the_cache_and_names_both() {
        let p = default_path_from(Some("/c".into()), Some("/home/u".into())).unwrap();
        assert_eq!(p, PathBuf::from("/c/onnxruntime-1.31.1/libonnxruntime.so"));
        let p = default_path_from(None, Some("/home/u".into())).unwrap();
        assert_eq!(
            p,
            PathBuf::from("/home/u/.cache/kiln/onnxruntime-1.31.1/libonnxruntime.so")
        );
        assert_eq!(default_path_from(Some("".into()), None), None);

        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.so"), dir.path().join("b.so"));
        std::fs::write(&a, b"x").unwrap();
        std::fs::write(&b, b"x").unwrap();
        assert_eq!(
            resolve_library(Some(a.clone().into()), Some(b.clone())).unwrap(),
            a
        );
        let missing = dir.path().join("missing.so");
        assert_eq!(
            resolve_library(Some(missing.clone().into()), Some(b.clone())).unwrap(),
            b
        );
        assert_eq!(resolve_library(None, Some(b.clone())).unwrap(), b);
        let e = resolve_library(Some(missing.clone().into()), Some(missing.clone()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ORT_DYLIB_PATH is `"), "{e}");
        assert!(
            e.contains(&format!("and `{}` does not exist", missing.display())),
            "{e}"
        );
        assert!(e.contains("run `cargo xtask setup`"), "{e}");
        let e = resolve_library(None, None).unwrap_err().to_string();
        assert!(e.contains("ORT_DYLIB_PATH is unset"), "{e}");
        assert!(e.contains("$HOME is unset"), "{e}");
    }

    #[test]
    fn a_missing_file_and_a_bad_model_are_errors() {
        let e = OrtModel::from_file(Path::new("/nonexistent/model.onnx"), 1).unwrap_err();
        assert!(e.to_string().contains("no such ONNX file"), "{e}");
        // needs the library (`cargo xtask test` installs it): fails loudly without it
        library_path().expect("ONNX Runtime library; run the suite with `cargo xtask test`");
        let e = OrtModel::from_bytes(b"not an onnx model", 1).unwrap_err();
        assert!(e.to_string().contains("loading the ONNX model"), "{e}");
    }
}
