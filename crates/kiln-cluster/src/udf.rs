//! `kiln_split(id, seed, valid, test)`: the seeded per-row hash split
//! ([`kiln_core::row_split`]) as a DataFusion scalar function. Every session kiln makes
//! registers it, and so do kiln's scheduler and executors, which resolve it by name when
//! they decode a plan.

use datafusion::arrow::array::{Array, AsArray, UInt8Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::lit;
use std::sync::Arc;

/// The function's name in plans.
pub const NAME: &str = "kiln_split";

/// The split function: 0 train, 1 valid, 2 test (as [`kiln_core::dataset::shards::Split`]).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct KilnSplit {
    signature: Signature,
}

/// The function, to register in a session or a function registry.
pub fn udf() -> ScalarUDF {
    ScalarUDF::from(KilnSplit {
        signature: Signature::exact(
            vec![
                DataType::Utf8,
                DataType::UInt64,
                DataType::Float64,
                DataType::Float64,
            ],
            Volatility::Immutable,
        ),
    })
}

/// `kiln_split(id, seed, valid, test)` over `id` (text).
pub fn split_expr(id: Expr, seed: u64, valid: f64, test: f64) -> Expr {
    udf().call(vec![id, lit(seed), lit(valid), lit(test)])
}

fn scalar<T>(v: &ColumnarValue, what: &str, get: impl Fn(&ScalarValue) -> Option<T>) -> Result<T> {
    match v {
        ColumnarValue::Scalar(s) => match get(s) {
            Some(x) => Ok(x),
            None => exec_err!("{NAME}: {what} must be a non-null literal"),
        },
        ColumnarValue::Array(_) => exec_err!("{NAME}: {what} must be a literal"),
    }
}

impl ScalarUDFImpl for KilnSplit {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::UInt8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [ids, seed, valid, test] = args.args.as_slice() else {
            return exec_err!("{NAME} takes (id, seed, valid, test)");
        };
        let seed = scalar(seed, "seed", |s| match s {
            ScalarValue::UInt64(v) => *v,
            _ => None,
        })?;
        let f64_of = |s: &ScalarValue| match s {
            ScalarValue::Float64(v) => *v,
            _ => None,
        };
        let (valid, test) = (
            scalar(valid, "valid", f64_of)?,
            scalar(test, "test", f64_of)?,
        );
        let ids = ids.to_array(args.number_rows)?;
        let ids = ids.as_string::<i32>();
        let mut out = Vec::with_capacity(ids.len());
        for i in 0..ids.len() {
            if ids.is_null(i) || ids.value(i).is_empty() {
                return exec_err!(
                    "the row id is empty in a row; split.row_id needs a value in every row"
                );
            }
            out.push(
                kiln_core::row_split::row_split(seed, ids.value(i).as_bytes(), valid, test) as u8,
            );
        }
        Ok(ColumnarValue::Array(Arc::new(UInt8Array::from(out))))
    }
}
