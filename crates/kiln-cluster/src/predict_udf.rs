//! `kiln_predict(onnx, x1, …, xk)`: a deployed model's ONNX Runtime forward pass as a
//! DataFusion scalar function, so batch scoring runs where the rows are. `onnx` is the
//! path of the bundle's model file (a literal: every executor opens the same path, so the
//! deploy folder must be on a shared or copied folder), the `x`s are the model's Float32 features (the fitted
//! transforms already lowered into the query); the result is a struct of `logits` and
//! `probabilities` (empty for regression) per row. Each worker thread keeps one
//! single-threaded session per model file, opened at its first batch.

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float32Array, ListArray, StructArray};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Float32Type};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::lit;
use kiln_core::Predictor;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// The function's name in plans.
pub const NAME: &str = "kiln_predict";

/// Words every failure on a row's features carries, so kiln sorts it as a data error
/// and locates the row with the local reader.
pub const NOT_FINITE: &str = "not a finite number after preprocessing";

/// The model function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct KilnPredict {
    signature: Signature,
}

/// The function, to register in a session or a function registry.
pub fn udf() -> ScalarUDF {
    ScalarUDF::from(KilnPredict {
        signature: Signature::variadic_any(Volatility::Immutable),
    })
}

/// `kiln_predict(onnx, features…)` for the model file `onnx` (an absolute path).
pub fn predict_expr(onnx: &Path, features: Vec<Expr>) -> Expr {
    let mut args = vec![lit(onnx.display().to_string())];
    args.extend(features);
    udf().call(args)
}

fn list_field() -> Arc<Field> {
    Arc::new(Field::new_list_field(DataType::Float32, false))
}

/// The result's fields: `logits` and `probabilities`, each a list of Float32.
pub fn fields() -> Fields {
    Fields::from(vec![
        Field::new("logits", DataType::List(list_field()), false),
        Field::new("probabilities", DataType::List(list_field()), false),
    ])
}

/// A model file as last seen: a session is reopened when the file changes.
type Key = (PathBuf, Option<SystemTime>, u64);

thread_local! {
    /// This worker thread's sessions.
    static SESSIONS: RefCell<HashMap<Key, kiln_deploy::OrtModel>> = RefCell::new(HashMap::new());
}

/// `k` values per row as a list array.
fn lists(values: Vec<f32>, n: usize, k: usize) -> Result<ArrayRef> {
    Ok(Arc::new(ListArray::try_new(
        list_field(),
        OffsetBuffer::from_lengths(std::iter::repeat_n(k, n)),
        Arc::new(Float32Array::from(values)),
        None,
    )?))
}

fn exec(m: String) -> datafusion::error::DataFusionError {
    datafusion::error::DataFusionError::Execution(format!("{NAME}: {m}"))
}

/// Predicts `n` rows of `features` (row-major) with the model file `onnx` (schema.json
/// beside it), through this thread's session of it.
fn predict(onnx: &str, features: &[f32], n: usize) -> Result<kiln_core::Predictions> {
    let path = PathBuf::from(onnx);
    let meta = std::fs::metadata(&path).map_err(|e| {
        exec(format!(
            "{onnx}: {e}; the executors open the model at the path kiln gave, so the deploy folder must be on a folder every executor reaches"
        ))
    })?;
    let key: Key = (path, meta.modified().ok(), meta.len());
    SESSIONS.with(|s| {
        let mut sessions = s.borrow_mut();
        if !sessions.contains_key(&key) {
            let bundle = kiln_deploy::Bundle::open(&key.0).map_err(|e| exec(e.to_string()))?;
            let model = bundle.session(1).map_err(|e| exec(e.to_string()))?;
            tracing::info!(model = onnx, "{NAME}: opened an ONNX Runtime session");
            sessions.retain(|(p, _, _), _| *p != key.0);
            sessions.insert(key.clone(), model);
        }
        let Some(model) = sessions.get_mut(&key) else {
            return exec_err!("{NAME}: no session for {onnx}");
        };
        model
            .predict_batched(features, n, kiln_deploy::bundle::PREDICT_BATCH)
            .map_err(|e| exec(e.to_string()))
    })
}

impl ScalarUDFImpl for KilnPredict {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(fields()))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let Some((onnx, xs)) = args.args.split_first() else {
            return exec_err!("{NAME} takes (model file, features…)");
        };
        let onnx = match onnx {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(d))) => d.clone(),
            _ => return exec_err!("{NAME}: the model file must be a text literal"),
        };
        let n = args.number_rows;
        let w = xs.len();
        let mut features = vec![0f32; n * w];
        for (j, x) in xs.iter().enumerate() {
            let a = x.to_array(n)?;
            let Some(a) = a.as_primitive_opt::<Float32Type>() else {
                return exec_err!("{NAME}: feature {j} is {}, not Float32", a.data_type());
            };
            for i in 0..n {
                let v = if a.is_null(i) { f32::NAN } else { a.value(i) };
                if !v.is_finite() {
                    return exec_err!(
                        "{NAME}: feature {j} of a row is {v}, {NOT_FINITE} (a missing cell the model's steps do not impute)"
                    );
                }
                features[i * w + j] = v;
            }
        }
        let p = predict(&onnx, &features, n)?;
        let k = p.n_outputs;
        let kp = if p.probabilities.is_empty() { 0 } else { k };
        let columns = vec![lists(p.logits, n, k)?, lists(p.probabilities, n, kp)?];
        Ok(ColumnarValue::Array(Arc::new(StructArray::try_new(
            fields(),
            columns,
            None,
        )?)))
    }
}
