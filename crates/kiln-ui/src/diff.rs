//! The config difference of runs: each run's resolved stage configs flattened to
//! `stage.path.to.key = value` lines, and the keys whose values are not the same in all.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// `stage.key.sub = value` for every leaf of every stage's resolved config (arrays of
/// scalars are one leaf, written as JSON; arrays of tables are indexed `steps[0].op`).
pub fn flatten(resolved: &BTreeMap<String, Value>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (stage, v) in resolved {
        walk(stage.clone(), v, &mut out);
    }
    out
}

fn walk(path: String, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                walk(format!("{path}.{k}"), v, out);
            }
        }
        Value::Array(items) if items.iter().any(|i| i.is_object()) => {
            for (i, v) in items.iter().enumerate() {
                walk(format!("{path}[{i}]"), v, out);
            }
        }
        Value::String(s) => {
            out.insert(path, s.clone());
        }
        other => {
            out.insert(path, other.to_string());
        }
    }
}

/// The keys whose value differs among `runs` (absent in some counts as differing), each
/// with every run's value (`None` where absent).
pub fn differing(runs: &[BTreeMap<String, String>]) -> Vec<(String, Vec<Option<String>>)> {
    let keys: BTreeSet<&String> = runs.iter().flat_map(|r| r.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let values: Vec<Option<String>> = runs.iter().map(|r| r.get(k).cloned()).collect();
            let same = values.windows(2).all(|w| w[0] == w[1]);
            (!same).then(|| (k.clone(), values))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_differing_leaves_are_kept() {
        let a: BTreeMap<String, Value> = [
            (
                "train".to_string(),
                json!({"epochs": 60, "optimizer": {"lr": 0.01}, "hidden": [16]}),
            ),
            (
                "data".to_string(),
                json!({"steps": [{"op": "standardize"}]}),
            ),
        ]
        .into();
        let b: BTreeMap<String, Value> = [
            (
                "train".to_string(),
                json!({"epochs": 60, "optimizer": {"lr": 0.1}, "hidden": [16, 8]}),
            ),
            (
                "data".to_string(),
                json!({"steps": [{"op": "standardize"}, {"op": "clip"}]}),
            ),
        ]
        .into();
        let d = differing(&[flatten(&a), flatten(&b)]);
        let keys: Vec<&str> = d.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["data.steps[1].op", "train.hidden", "train.optimizer.lr"]
        );
        assert_eq!(d[0].1, [None, Some("clip".to_string())]);
        assert_eq!(d[2].1, [Some("0.01".to_string()), Some("0.1".to_string())]);
    }
}
