//! Baking the fitted preprocessing (schema.json's transforms) into an exported ONNX graph,
//! in front of the first layer, so that the model's input `features` takes the raw input
//! columns. Each transform becomes the same float operations `Schema::apply` performs, in
//! the same order: `scale` is one `Div` by a per-column divisor, `standardize` a `Sub` of
//! the per-column mean followed by a `Div` by the per-column std. Columns a transform does
//! not name get the neutral constant (divide by 1, subtract 0), which leaves every float,
//! NaN and infinities included, unchanged — so the graph computes exactly what `apply` does.

use crate::onnx::{ModelProto, node, string_entry, tensor_f32};
use crate::{DeployError, Result};
use kiln_core::{Schema, Transform};

/// The metadata_props key that marks a model whose input is raw columns.
pub const PREPROCESSING_KEY: &str = "preprocessing";
/// Its value for a model with the preprocessing in the graph.
pub const BAKED: &str = "baked";

fn bad(m: String) -> DeployError {
    DeployError::Config(format!(
        "include_preprocessing: {m}; set include_preprocessing = false to ship the model without it"
    ))
}

/// Per transform, the column indices it names (checked: known, none twice).
fn indices(schema: &Schema, columns: &[String], what: &str) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(columns.len());
    for c in columns {
        let i = schema
            .input_columns
            .iter()
            .position(|n| n == c)
            .ok_or_else(|| {
                bad(format!(
                    "{what} names column `{c}` that schema.json does not list; the schema is corrupt"
                ))
            })?;
        if out.contains(&i) {
            return Err(bad(format!(
                "{what} names column `{c}` twice; the schema is corrupt"
            )));
        }
        out.push(i);
    }
    Ok(out)
}

/// The transforms as per-column constant vectors: `(op, constant)` pairs in the order the
/// graph applies them.
fn plan(schema: &Schema) -> Result<Vec<(&'static str, Vec<f32>)>> {
    let n = schema.input_columns.len();
    if let Some((k, t)) = schema
        .transforms
        .iter()
        .enumerate()
        .find(|(_, t)| !matches!(t, Transform::Scale { .. } | Transform::Standardize { .. }))
    {
        return Err(bad(format!(
            "transform {} of schema.json is `{}`, which cannot be baked into the graph (only scale and standardize can)",
            k + 1,
            t.op()
        )));
    }
    if schema.input_columns != schema.feature_names {
        return Err(bad(
            "the schema's input columns differ from its features, and only column-preserving transforms can be baked".into(),
        ));
    }
    let mut steps = Vec::new();
    for (k, t) in schema.transforms.iter().enumerate() {
        let what = format!("transform {} of schema.json", k + 1);
        match t {
            Transform::Scale { columns, by } => {
                if !(by.is_finite() && *by != 0.0) {
                    return Err(bad(format!("{what} divides by {by}")));
                }
                let mut d = vec![1.0f32; n];
                for i in indices(schema, columns, &what)? {
                    d[i] = *by;
                }
                steps.push(("Div", d));
            }
            Transform::Standardize { columns, mean, std } => {
                if mean.len() != columns.len() || std.len() != columns.len() {
                    return Err(bad(format!(
                        "{what} lists {} columns but {} means and {} stds; the schema is corrupt",
                        columns.len(),
                        mean.len(),
                        std.len()
                    )));
                }
                if mean.iter().chain(std).any(|v| !v.is_finite()) || std.contains(&0.0) {
                    return Err(bad(format!(
                        "{what} has a non-finite mean or std, or a std of 0"
                    )));
                }
                let (mut m, mut s) = (vec![0.0f32; n], vec![1.0f32; n]);
                for (j, i) in indices(schema, columns, &what)?.into_iter().enumerate() {
                    m[i] = mean[j];
                    s[i] = std[j];
                }
                steps.push(("Sub", m));
                steps.push(("Div", s));
            }
            other => {
                return Err(bad(format!("{what} is `{}`", other.op())));
            }
        }
    }
    Ok(steps)
}

/// Checks that the schema's transforms can be baked (known columns, none twice, finite
/// nonzero divisors); the deploy stage calls it before any work.
pub fn check(schema: &Schema) -> Result<()> {
    plan(schema).map(|_| ())
}

/// Puts the schema's transforms in front of `model`'s first layer: the graph input
/// `features` then takes raw rows in `input_columns` order, and metadata_props gains
/// `preprocessing = baked`.
pub fn bake(model: &mut ModelProto, schema: &Schema) -> Result<()> {
    if is_baked(model) {
        return Err(bad("the model is baked already".into()));
    }
    let steps = plan(schema)?;
    let g = model
        .graph
        .as_mut()
        .ok_or_else(|| DeployError::Export("the model has no graph; export it again".into()))?;
    let mut nodes = Vec::new();
    let mut h = "features".to_string();
    let n = schema.input_columns.len();
    for (k, (op, c)) in steps.into_iter().enumerate() {
        let (cname, out) = (
            format!("preprocess.{k}.{}", op.to_lowercase()),
            format!("preprocess.{k}.out"),
        );
        g.initializer.push(tensor_f32(&cname, &[n], &c));
        nodes.push(node(
            op,
            &format!("preprocess.{k}"),
            &[&h, &cname],
            &[&out],
            vec![],
        ));
        h = out;
    }
    if h != "features" {
        for nd in &mut g.node {
            for i in &mut nd.input {
                if i == "features" {
                    *i = h.clone();
                }
            }
        }
        nodes.append(&mut g.node);
        g.node = nodes;
    }
    model
        .metadata_props
        .push(string_entry(PREPROCESSING_KEY, BAKED));
    Ok(())
}

/// Whether `model` carries `preprocessing = baked` (its input is raw columns).
pub fn is_baked(model: &ModelProto) -> bool {
    model
        .metadata_props
        .iter()
        .any(|p| p.key() == PREPROCESSING_KEY && p.value() == BAKED)
}

/// Raw rows that the schema's transforms turn (up to rounding) into `features`: each
/// transform undone in reverse order (`x * std + mean`, `x * by`). The deploy stage feeds
/// them to a baked model and `Schema::apply` of them to the reference pass, because the
/// dataset artifact keeps only preprocessed rows.
pub fn unapply(schema: &Schema, features: &[f32]) -> Result<Vec<f32>> {
    let n = schema.input_columns.len().max(1);
    let steps = plan(schema)?;
    let mut x = features.to_vec();
    for (op, c) in steps.iter().rev() {
        for row in x.chunks_exact_mut(n) {
            for (v, k) in row.iter_mut().zip(c) {
                *v = match *op {
                    "Div" => *v * k,
                    _ => *v + k,
                };
            }
        }
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ExportMeta;
    use kiln_core::{Activation, ModelSpec, Task, TensorStore};

    fn schema() -> Schema {
        Schema {
            version: 1,
            input_columns: vec!["a".into(), "b".into(), "c".into()],
            feature_names: vec!["a".into(), "b".into(), "c".into()],
            target: "y".into(),
            task: Task::Classification,
            image: None,
            class_labels: vec!["0".into(), "1".into()],
            transforms: vec![
                Transform::Scale {
                    columns: vec!["a".into(), "b".into()],
                    by: 4.0,
                },
                Transform::Standardize {
                    columns: vec!["b".into(), "c".into()],
                    mean: vec![1.0, -2.0],
                    std: vec![3.0, 0.5],
                },
            ],
        }
    }

    #[test]
    fn baking_prepends_sub_and_div_and_rewires_the_first_layer() {
        let spec = ModelSpec::mlp(3, &[], Activation::Identity, Task::Classification, 2);
        let mut w = TensorStore::default();
        w.insert_f32("layers.0.weight", vec![3, 2], vec![1.0; 6]);
        w.insert_f32("layers.0.bias", vec![2], vec![0.0; 2]);
        let mut m = crate::build(&spec, &w, &ExportMeta::default()).unwrap();
        assert!(!is_baked(&m));
        bake(&mut m, &schema()).unwrap();
        assert!(is_baked(&m));
        let g = m.graph.as_ref().unwrap();
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type()).collect();
        assert_eq!(ops, ["Div", "Sub", "Div", "MatMul", "Add", "Softmax"]);
        assert_eq!(g.node[0].input, ["features", "preprocess.0.div"]);
        assert_eq!(g.node[3].input[0], "preprocess.2.out");
        let c = |name: &str| {
            g.initializer
                .iter()
                .find(|t| t.name() == name)
                .unwrap()
                .f32_values()
                .unwrap()
        };
        assert_eq!(c("preprocess.0.div"), [4.0, 4.0, 1.0]);
        assert_eq!(c("preprocess.1.sub"), [0.0, 1.0, -2.0]);
        assert_eq!(c("preprocess.2.div"), [1.0, 3.0, 0.5]);
        assert_eq!(g.input[0].name(), "features");
        let e = bake(&mut m, &schema()).unwrap_err().to_string();
        assert!(e.contains("the model is baked already"), "{e}");
    }

    #[test]
    fn unapply_inverts_apply_and_bad_schemas_are_refused() {
        let s = schema();
        let x = vec![0.25, -1.0, 3.0, 2.0, 0.5, -0.125];
        let raw = unapply(&s, &x).unwrap();
        assert_eq!(raw, vec![1.0, -8.0, -0.5, 8.0, 10.0, -2.0625]);
        assert_eq!(s.apply(&raw).unwrap(), x);
        let mut zero = s.clone();
        zero.transforms[0] = Transform::Scale {
            columns: vec!["a".into()],
            by: 0.0,
        };
        assert!(
            check(&zero)
                .unwrap_err()
                .to_string()
                .contains("divides by 0")
        );
        let mut twice = s.clone();
        twice.transforms[0] = Transform::Scale {
            columns: vec!["a".into(), "a".into()],
            by: 2.0,
        };
        assert!(check(&twice).unwrap_err().to_string().contains("twice"));
        let mut unknown = s;
        unknown.transforms[0] = Transform::Scale {
            columns: vec!["z".into()],
            by: 2.0,
        };
        let e = check(&unknown).unwrap_err().to_string();
        assert!(
            e.contains("`z`") && e.contains("include_preprocessing = false"),
            "{e}"
        );
    }

    #[test]
    fn a_step_that_cannot_be_baked_is_a_config_error_naming_it() {
        let mut s = schema();
        s.transforms.push(Transform::Log1p {
            columns: vec!["a".into()],
        });
        let e = check(&s).unwrap_err();
        assert!(matches!(e, DeployError::Config(_)), "{e}");
        let e = e.to_string();
        assert!(
            e.contains("transform 3")
                && e.contains("`log1p`")
                && e.contains("include_preprocessing = false"),
            "{e}"
        );
        // the text encoders are refused the same way
        let mut s = schema();
        s.transforms.insert(
            0,
            Transform::OneHot {
                columns: vec!["a".into()],
                categories: vec![vec!["u".into()]],
            },
        );
        let e = check(&s).unwrap_err().to_string();
        assert!(e.contains("transform 1") && e.contains("`one_hot`"), "{e}");
    }
}
