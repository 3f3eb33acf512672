//! Request bodies to model features: `{"rows": [...]}` or `{"instances": [...]}` checked
//! against the schema (every error names its row and column), the fitted preprocessing
//! applied, and the predictions back as JSON. Pure functions of the bytes: the handlers run
//! them on the blocking pool for large bodies, never on the runtime's I/O workers.
//!
//! Over 600 lines with its tests (about half): the property test of request bodies sits
//! beside the parser it drives.

use super::routes::ApiError;
use axum::http::StatusCode;
use kiln_core::{FeatureError, Predictions, Rows, Schema, Task, TextColumn};
use serde_json::{Map, Value, json};

/// What a request body asks to predict, ready for the model.
#[derive(Debug)]
pub(super) struct Batch {
    /// Row-major features (`Schema::features` of the raw rows).
    pub(super) features: Vec<f32>,
    /// Rows in the batch.
    pub(super) rows: usize,
}

/// The schema facts a body is checked against, worked out once per server.
pub(super) struct Shape {
    pub(super) schema: Schema,
    /// The schema's text columns (it walks every transform).
    pub(super) text: Vec<String>,
    /// Per input column, whether a missing value is allowed (see [`fills`]).
    pub(super) fills: Vec<bool>,
    /// Most rows in one request (`--max-batch`).
    pub(super) max_batch: usize,
}

impl Shape {
    pub(super) fn new(schema: Schema, max_batch: usize) -> Self {
        Shape {
            text: schema.text_columns(),
            fills: fills(&schema),
            schema,
            max_batch,
        }
    }

    /// A request body (JSON bytes) to features: the JSON parsed, the rows checked, the
    /// fitted preprocessing applied. CPU-bound in the body's size.
    pub(super) fn prepare(&self, body: &[u8]) -> Result<Batch, ApiError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("malformed JSON: {e}"),
            )
        })?;
        if let Some(images) = value.as_object().and_then(|o| o.get("images")) {
            if value.as_object().is_some_and(|o| o.len() > 1) {
                return Err(ApiError::invalid(
                    "give `images` alone, without `rows` or `instances`",
                ));
            }
            let uploads = super::images::from_json(self, images)?;
            drop(value);
            return super::images::prepare(self, &uploads);
        }
        let (raw, n) = parse_rows(
            &self.schema,
            (&self.text, &self.fills),
            &value,
            self.max_batch,
        )?;
        if n == 0 {
            return Ok(Batch {
                features: Vec::new(),
                rows: 0,
            });
        }
        let cells = text_cells(&self.schema, &self.text, &value)?;
        drop(value);
        self.features(Rows {
            n_rows: n,
            values: raw,
            text: cells,
        })
    }

    /// Raw rows through the fitted preprocessing.
    pub(super) fn features(&self, rows: Rows) -> Result<Batch, ApiError> {
        let n = rows.n_rows;
        if n == 0 {
            return Ok(Batch {
                features: Vec::new(),
                rows: 0,
            });
        }
        let features = self.schema.features(&rows).map_err(|e| match e {
            FeatureError::Schema(m) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m)
            }
            FeatureError::NotFinite { row, column } => ApiError::invalid(format!(
                "row {row} column `{column}` is not a finite number after preprocessing"
            )),
        })?;
        Ok(Batch { features, rows: n })
    }

    /// The response body for predictions: `{"predictions": [...]}` as JSON bytes.
    pub(super) fn answer(&self, p: &Predictions) -> Vec<u8> {
        serde_json::to_vec(&json!({ "predictions": output(&self.schema, p) }))
            .unwrap_or_else(|_| br#"{"predictions": []}"#.to_vec())
    }
}

/// Raw values (row-major, `input_columns` order) and the row count from a request body:
/// `{"rows": [{column: value, ...}, ...]}` or `{"instances": [[value, ...], ...]}`.
fn parse_rows(
    schema: &Schema,
    (text, fills): (&[String], &[bool]),
    v: &Value,
    max_batch: usize,
) -> Result<(Vec<f32>, usize), ApiError> {
    let cols = &schema.input_columns;
    let usage = || {
        format!(
            "the body must be a JSON object with `rows` (objects by column name) or `instances` (arrays of {} values in the order {})",
            cols.len(),
            cols.join(", ")
        )
    };
    let Some(obj) = v.as_object() else {
        return Err(ApiError::invalid(usage()));
    };
    if let Some(k) = obj.keys().find(|k| *k != "rows" && *k != "instances") {
        return Err(ApiError::invalid(format!(
            "unknown field `{k}`; {}",
            usage()
        )));
    }
    let (key, items) = match (obj.get("rows"), obj.get("instances")) {
        (Some(r), None) => ("rows", r),
        (None, Some(i)) => ("instances", i),
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(format!(
                "give `rows` or `instances`, not both; {}",
                usage()
            )));
        }
        (None, None) => return Err(ApiError::invalid(usage())),
    };
    let Some(items) = items.as_array() else {
        return Err(ApiError::invalid(format!(
            "`{key}` must be an array; {}",
            usage()
        )));
    };
    if items.len() > max_batch {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "{} rows exceed the batch limit of {max_batch} (--max-batch); split the request",
                items.len()
            ),
        ));
    }
    let mut raw = Vec::with_capacity(items.len() * cols.len());
    for (i, item) in items.iter().enumerate() {
        if key == "rows" {
            let Some(row) = item.as_object() else {
                return Err(ApiError::invalid(format!(
                    "rows[{i}] is not an object of column values"
                )));
            };
            if let Some(k) = row.keys().find(|k| !cols.contains(k)) {
                let hint = kiln_core::nearest(k, cols)
                    .map(|n| format!(" (did you mean `{n}`?)"))
                    .unwrap_or_default();
                return Err(ApiError::invalid(format!(
                    "rows[{i}]: unknown column `{k}`{hint}; the model takes {}",
                    cols.join(", ")
                )));
            }
            for (j, c) in cols.iter().enumerate() {
                let Some(x) = row.get(c) else {
                    return Err(ApiError::invalid(format!(
                        "rows[{i}]: missing column `{c}`"
                    )));
                };
                let at = || format!("rows[{i}] column `{c}`");
                if text.contains(c) {
                    cell_text(x, at)?;
                    raw.push(f32::NAN);
                } else {
                    raw.push(number(x, fills[j], at)?);
                }
            }
        } else {
            let Some(vals) = item.as_array() else {
                return Err(ApiError::invalid(format!(
                    "instances[{i}] is not an array of {} values",
                    cols.len()
                )));
            };
            if vals.len() != cols.len() {
                return Err(ApiError::invalid(format!(
                    "instances[{i}] has {} values but the model takes {} ({})",
                    vals.len(),
                    cols.len(),
                    cols.join(", ")
                )));
            }
            for (j, (x, c)) in vals.iter().zip(cols).enumerate() {
                let at = || format!("instances[{i}][{j}] (column `{c}`)");
                if text.contains(c) {
                    cell_text(x, at)?;
                    raw.push(f32::NAN);
                } else {
                    raw.push(number(x, fills[j], at)?);
                }
            }
        }
    }
    Ok((raw, items.len()))
}

/// Per input column, whether the schema fills a missing value (`Schema::fills_missing`,
/// which walks every transform: worked out once per server, not per cell).
fn fills(schema: &Schema) -> Vec<bool> {
    schema
        .input_columns
        .iter()
        .map(|c| schema.fills_missing(c))
        .collect()
}

/// The cells of the schema's text columns from a body that [`parse_rows`] accepted.
fn text_cells(
    schema: &Schema,
    text: &[String],
    v: &Value,
) -> Result<Vec<(String, TextColumn)>, ApiError> {
    let cols = &schema.input_columns;
    let mut out = Vec::new();
    for c in text {
        let j = cols.iter().position(|n| n == c).unwrap_or(0);
        let items: &[Value] = v
            .get("rows")
            .or_else(|| v.get("instances"))
            .and_then(Value::as_array)
            .map_or(&[], |a| a.as_slice());
        let mut cells = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let x = item
                .get(c.as_str())
                .or_else(|| item.get(j))
                .unwrap_or(&Value::Null);
            cells.push(cell_text(x, || format!("row {i} column `{c}`"))?);
        }
        out.push((
            c.clone(),
            TextColumn::from_cells(cells.iter().map(|s| s.as_deref())),
        ));
    }
    Ok(out)
}

/// A raw value of a text (categorical) column: a string, a number or boolean (as its
/// JSON text), or null (missing); arrays and objects are rejected naming `at`.
fn cell_text(x: &Value, at: impl Fn() -> String) -> Result<Option<String>, ApiError> {
    match x {
        Value::String(s) => Ok(Some(s.clone())),
        Value::Null => Ok(None),
        Value::Number(_) | Value::Bool(_) => Ok(Some(x.to_string())),
        Value::Array(_) | Value::Object(_) => Err(ApiError::invalid(format!(
            "{} is not text; this column takes a string (or null)",
            at()
        ))),
    }
}

/// A raw value as f32: a finite JSON number, or null (missing, NaN) where the schema
/// imputes or drops the column (`nullable`); null elsewhere, text, NaN / infinity (as
/// text) and numbers beyond f32 are rejected naming `at`.
fn number(x: &Value, nullable: bool, at: impl Fn() -> String) -> Result<f32, ApiError> {
    let bad =
        |what: String| ApiError::invalid(format!("{} {what}; expected a finite number", at()));
    match x {
        Value::Number(n) => {
            let v = n.as_f64().unwrap_or(f64::NAN) as f32;
            if v.is_finite() {
                Ok(v)
            } else {
                Err(bad(format!("is {n}, not finite as a 32-bit float")))
            }
        }
        Value::Null if nullable => Ok(f32::NAN),
        Value::Null => Err(bad("is null".into())),
        Value::String(s) => Err(bad(format!(
            "is the string {x}{}",
            if s.parse::<f64>().is_ok_and(|v| !v.is_finite()) {
                " (non-finite)"
            } else {
                ""
            }
        ))),
        Value::Bool(_) => Err(bad(format!("is the boolean {x}"))),
        Value::Array(_) | Value::Object(_) => Err(bad("is not a number".into())),
    }
}

/// One JSON object per row: label and class probabilities, or the regression value.
fn output(schema: &Schema, p: &Predictions) -> Vec<Value> {
    match schema.task {
        Task::Classification => {
            let k = p.n_outputs.max(1);
            p.argmax()
                .into_iter()
                .map(|c| {
                    schema
                        .class_labels
                        .get(c as usize)
                        .cloned()
                        .unwrap_or_default()
                })
                .enumerate()
                .map(|(i, label)| {
                    let probs: Map<String, Value> = schema
                        .class_labels
                        .iter()
                        .enumerate()
                        .map(|(j, c)| {
                            let v = p.probabilities.get(i * k + j).copied();
                            (c.clone(), v.map_or(Value::Null, f32_json))
                        })
                        .collect();
                    json!({ "label": label, "probabilities": probs })
                })
                .collect()
        }
        Task::Regression => p
            .logits
            .iter()
            .map(|&v| json!({ "value": f32_json(v) }))
            .collect(),
    }
}

/// An f32 as the shortest decimal that reads back as the same f32 (`0.99624443`, not the
/// f64 widening `0.9962444305419922`); null if not finite.
fn f32_json(v: f32) -> Value {
    v.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        Schema {
            version: 1,
            input_columns: vec!["a".into(), "b".into()],
            feature_names: vec!["a".into(), "b".into()],
            target: "y".into(),
            task: Task::Classification,
            image: None,
            class_labels: vec!["x".into(), "z".into()],
            transforms: vec![],
        }
    }

    fn err(body: &str) -> (StatusCode, String) {
        let v: Value = serde_json::from_str(body).unwrap();
        let e = parse_rows(&schema(), (&[], &fills(&schema())), &v, 2).unwrap_err();
        (e.status, e.message)
    }

    #[test]
    fn rows_and_instances_give_the_same_values_in_column_order() {
        let s = schema();
        let r: Value = serde_json::from_str(r#"{"rows": [{"b": 2, "a": 1.5}]}"#).unwrap();
        let i: Value = serde_json::from_str(r#"{"instances": [[1.5, 2]]}"#).unwrap();
        assert_eq!(
            parse_rows(&s, (&s.text_columns(), &fills(&s)), &r, 2).unwrap(),
            (vec![1.5, 2.0], 1)
        );
        assert_eq!(
            parse_rows(&s, (&s.text_columns(), &fills(&s)), &i, 2).unwrap(),
            (vec![1.5, 2.0], 1)
        );
    }

    #[test]
    fn null_is_missing_where_the_schema_imputes_the_column() {
        let mut s = schema();
        s.transforms.insert(
            0,
            kiln_core::Transform::Impute {
                columns: vec!["a".into()],
                strategy: "median".into(),
                values: vec![3.0],
            },
        );
        let v: Value = serde_json::from_str(r#"{"rows": [{"a": null, "b": 2}]}"#).unwrap();
        let (raw, n) = parse_rows(&s, (&s.text_columns(), &fills(&s)), &v, 2).unwrap();
        assert!(raw[0].is_nan() && raw[1] == 2.0 && n == 1, "{raw:?}");
        // the model's features: the null filled with the fitted value 3
        let x = s
            .features(&Rows {
                n_rows: 1,
                values: raw,
                text: Vec::new(),
            })
            .unwrap();
        assert_eq!(x, [3.0, 2.0]);
        let v: Value = serde_json::from_str(r#"{"instances": [[1, null]]}"#).unwrap();
        let m = parse_rows(&s, (&s.text_columns(), &fills(&s)), &v, 2)
            .unwrap_err()
            .message;
        assert!(m.contains("(column `b`) is null"), "{m}");
    }

    #[test]
    fn text_columns_take_strings_and_give_the_features_of_the_schema() {
        let mut s = schema();
        s.feature_names = vec!["a".into(), "b=u".into(), "b=v".into()];
        s.transforms = vec![kiln_core::Transform::OneHot {
            columns: vec!["b".into()],
            categories: vec![vec!["u".into(), "v".into()]],
        }];
        let v: Value = serde_json::from_str(
            r#"{"rows": [{"a": 1, "b": "v"}, {"a": 2, "b": null}, {"a": 3, "b": "new"}]}"#,
        )
        .unwrap();
        let (raw, n) = parse_rows(&s, (&s.text_columns(), &fills(&s)), &v, 3).unwrap();
        assert_eq!(n, 3);
        let cells = text_cells(&s, &s.text_columns(), &v).unwrap();
        let x = s
            .features(&Rows {
                n_rows: 3,
                values: raw,
                text: cells,
            })
            .unwrap();
        assert_eq!(x, [1.0, 0.0, 1.0, 2.0, 0.0, 0.0, 3.0, 0.0, 0.0]);
        let i: Value = serde_json::from_str(r#"{"instances": [[1, "u"]]}"#).unwrap();
        let (raw, _) = parse_rows(&s, (&s.text_columns(), &fills(&s)), &i, 3).unwrap();
        let x = s
            .features(&Rows {
                n_rows: 1,
                values: raw,
                text: text_cells(&s, &s.text_columns(), &i).unwrap(),
            })
            .unwrap();
        assert_eq!(x, [1.0, 1.0, 0.0]);
        let bad: Value = serde_json::from_str(r#"{"instances": [[1, [2]]]}"#).unwrap();
        let m = parse_rows(&s, (&s.text_columns(), &fills(&s)), &bad, 3)
            .unwrap_err()
            .message;
        assert!(m.contains("(column `b`) is not text"), "{m}");
    }

    #[test]
    fn bad_values_name_the_row_and_column() {
        let (s, m) = err(r#"{"rows": [{"a": 1, "b": 2}, {"a": null, "b": 2}]}"#);
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(m.contains("rows[1] column `a` is null"), "{m}");
        let (_, m) = err(r#"{"rows": [{"a": 1, "bb": 2}]}"#);
        assert!(m.contains("unknown column `bb` (did you mean `b`?)"), "{m}");
        let (_, m) = err(r#"{"rows": [{"a": 1}]}"#);
        assert!(m.contains("rows[0]: missing column `b`"), "{m}");
        let (_, m) = err(r#"{"instances": [[1, "NaN"]]}"#);
        assert!(
            m.contains("instances[0][1] (column `b`) is the string \"NaN\" (non-finite)"),
            "{m}"
        );
        let (_, m) = err(r#"{"instances": [[1, 1e300]]}"#);
        assert!(m.contains("not finite as a 32-bit float"), "{m}");
        let (_, m) = err(r#"{"instances": [[1, 2, 3]]}"#);
        assert!(
            m.contains("instances[0] has 3 values but the model takes 2 (a, b)"),
            "{m}"
        );
        let (s, m) = err(r#"{"instances": [[1, 2], [1, 2], [1, 2]]}"#);
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(m.contains("3 rows exceed the batch limit of 2"), "{m}");
        let (_, m) = err(r#"{"inputs": []}"#);
        assert!(m.contains("unknown field `inputs`"), "{m}");
        let (_, m) = err(r#"[1, 2]"#);
        assert!(m.contains("must be a JSON object"), "{m}");
    }

    #[test]
    fn outputs_are_labels_with_probabilities_or_values() {
        let p = Predictions {
            n_rows: 2,
            n_outputs: 2,
            logits: vec![0.0, 1.0, 3.0, -1.0],
            probabilities: vec![0.25, 0.75, 0.5, 0.5],
        };
        assert_eq!(
            Value::Array(output(&schema(), &p)),
            json!([
                {"label": "z", "probabilities": {"x": 0.25, "z": 0.75}},
                {"label": "x", "probabilities": {"x": 0.5, "z": 0.5}},
            ])
        );
        let mut s = schema();
        s.task = Task::Regression;
        s.class_labels.clear();
        let p = Predictions {
            n_rows: 2,
            n_outputs: 1,
            logits: vec![1.5, -2.0],
            probabilities: vec![],
        };
        assert_eq!(
            Value::Array(output(&s, &p)),
            json!([{"value": 1.5}, {"value": -2.0}])
        );
    }

    #[test]
    fn prepare_parses_checks_and_preprocesses_a_body() {
        let mut s = schema();
        s.transforms = vec![kiln_core::Transform::Impute {
            columns: vec!["a".into()],
            strategy: "median".into(),
            values: vec![3.0],
        }];
        let shape = Shape::new(s, 2);
        let b = shape
            .prepare(br#"{"rows": [{"a": null, "b": 2}, {"a": 1, "b": 4}]}"#)
            .unwrap();
        assert_eq!((b.features, b.rows), (vec![3.0, 2.0, 1.0, 4.0], 2));
        let b = shape.prepare(br#"{"instances": []}"#).unwrap();
        assert_eq!((b.features.len(), b.rows), (0, 0));
        let e = shape.prepare(br#"{"rows": [{"a": 1,"#).unwrap_err();
        assert_eq!(
            (e.status, e.kind),
            (StatusCode::BAD_REQUEST, "malformed_json")
        );
        let e = shape
            .prepare(br#"{"instances": [[1, 2], [1, 2], [1, 2]]}"#)
            .unwrap_err();
        assert_eq!(
            (e.status, e.kind),
            (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
        );
        let p = Predictions {
            n_rows: 1,
            n_outputs: 2,
            logits: vec![0.0, 1.0],
            probabilities: vec![0.25, 0.75],
        };
        let v: Value = serde_json::from_slice(&shape.answer(&p)).unwrap();
        assert_eq!(
            v,
            json!({"predictions": [{"label": "z", "probabilities": {"x": 0.25, "z": 0.75}}]})
        );
    }
}

/// Property test: request bodies mutated from valid ones never panic [`Shape::prepare`],
/// and its heap stays within 64 MiB + 64 bytes per body byte (the global allocator of
/// kiln's unit-test build counts it; see main.rs).
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::Index;

    /// Valid bodies: rows and instances, numbers, nulls, text.
    const BODIES: [&str; 4] = [
        r#"{"rows": [{"a": 1.5, "b": "u"}, {"a": null, "b": "v"}, {"a": -2, "b": null}]}"#,
        r#"{"instances": [[1, "v"], [2.5e3, "u"], [null, "w"]]}"#,
        r#"{"rows": [{"b": "u", "a": 0}]}"#,
        r#"{"instances": []}"#,
    ];

    /// Tokens that break JSON or stand for values nobody bounded.
    const TOKENS: [&str; 20] = [
        "1e400",
        "-1e400",
        "NaN",
        "Infinity",
        "null",
        "true",
        "\"\"",
        "[]",
        "{}",
        "[[",
        "{\"rows\":",
        "9223372036854775807",
        "-0",
        "\"\\u0000\"",
        "\"\\ud800\"",
        ",",
        ":",
        "]",
        "}",
        "\"💥\"",
    ];

    fn shape() -> Shape {
        let mut s = Schema {
            version: 1,
            input_columns: vec!["a".into(), "b".into()],
            feature_names: vec!["a".into(), "b=u".into(), "b=v".into()],
            target: "y".into(),
            task: Task::Classification,
            image: None,
            class_labels: vec!["x".into(), "z".into()],
            transforms: vec![],
        };
        s.transforms = vec![
            kiln_core::Transform::Impute {
                columns: vec!["a".into()],
                strategy: "median".into(),
                values: vec![3.0],
            },
            kiln_core::Transform::OneHot {
                columns: vec!["b".into()],
                categories: vec![vec!["u".into(), "v".into()]],
            },
        ];
        Shape::new(s, 1000)
    }

    /// `body` with the edits applied: a token replaced, bytes cut, a stretch repeated.
    fn mutate(body: &str, edits: &[(Index, u8, Index)]) -> Vec<u8> {
        let mut b = body.as_bytes().to_vec();
        for (at, kind, pick) in edits {
            if b.is_empty() {
                break;
            }
            let k = at.index(b.len());
            match kind % 4 {
                0 => {
                    let t = TOKENS[pick.index(TOKENS.len())];
                    let end = (k + 1 + pick.index(4)).min(b.len());
                    b.splice(k..end, t.bytes());
                }
                1 => b.truncate(k),
                2 => {
                    let end = (k + 1 + pick.index(40)).min(b.len());
                    let chunk = b[k..end].to_vec();
                    for _ in 0..pick.index(64) {
                        b.splice(end..end, chunk.iter().copied());
                    }
                }
                _ => b[k] ^= 1 << pick.index(8),
            }
        }
        b
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 512,
            failure_persistence: None,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x6b69_6c6e),
            ..ProptestConfig::default()
        })]

        #[test]
        fn mutated_bodies_are_answered_never_panic(
            which in 0usize..4,
            edits in prop::collection::vec((any::<Index>(), any::<u8>(), any::<Index>()), 1..5),
        ) {
            let body = mutate(BODIES[which], &edits);
            let s = shape();
            let _serial = crate::HEAP_SERIAL.lock().unwrap_or_else(|e| e.into_inner());
            let before = crate::HEAP.current_usage();
            crate::HEAP.reset_peak_usage();
            let r = s.prepare(&body);
            let grew = crate::HEAP.peak_usage().saturating_sub(before);
            prop_assert!(grew <= (64 << 20) + 64 * body.len(), "{grew} bytes for {} bytes", body.len());
            match r {
                Ok(b) => prop_assert_eq!(b.features.len(), b.rows * 3),
                Err(e) => {
                    prop_assert!(e.status.is_client_error(), "{:?} {}", e.status, e.message);
                    prop_assert!(!e.message.is_empty());
                }
            }
        }
    }
}
