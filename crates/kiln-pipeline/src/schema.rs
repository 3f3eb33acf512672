//! The JSON Schema of the pipeline file (`kiln schema`), built from the stage configs'
//! own schemas (schemars) plus the keys every stage shares, so editors with a TOML
//! language server complete and check pipeline files through their `#:schema` line.

use serde_json::{Map, Value, json};

fn stage_schema<T: schemars::JsonSchema>(kind: &str, defs: &mut Map<String, Value>) -> Value {
    let mut s = serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null);
    if let Some(Value::Object(d)) = s.as_object_mut().and_then(|o| o.remove("$defs")) {
        defs.extend(d);
    }
    let ids = json!({ "oneOf": [{ "type": "string" }, { "type": "array", "items": { "type": "string" } }] });
    if let Some(o) = s.as_object_mut() {
        o.remove("$schema");
        o.insert(
            "title".into(),
            json!(format!("stage with uses = \"{kind}\"")),
        );
        let props = o.entry("properties").or_insert_with(|| json!({}));
        if let Some(p) = props.as_object_mut() {
            p.insert(
                "uses".into(),
                json!({ "const": kind, "description": "the stage kind" }),
            );
            p.insert("input".into(), json!({ "description": "stage id(s) whose artifacts this stage consumes", "oneOf": ids["oneOf"] }));
            p.insert("inputs".into(), json!({ "description": "stage ids whose artifacts this stage consumes", "oneOf": ids["oneOf"] }));
            p.insert("requires".into(), json!({ "description": "evaluate stages whose verdict must pass first", "type": "array", "items": { "type": "string" } }));
        }
        let req = o.entry("required").or_insert_with(|| json!([]));
        if let Some(r) = req.as_array_mut() {
            r.push(json!("uses"));
        }
    }
    s
}

/// The JSON Schema (draft 2020-12) of a kiln pipeline file.
pub fn json_schema() -> Value {
    let mut defs = Map::new();
    let stages = vec![
        stage_schema::<kiln_preprocess::Config>("preprocess", &mut defs),
        stage_schema::<kiln_train::Config>("train", &mut defs),
        stage_schema::<kiln_optimize::Config>("optimize", &mut defs),
        stage_schema::<kiln_evaluate::Config>("evaluate", &mut defs),
        stage_schema::<kiln_deploy::Config>("deploy", &mut defs),
    ];
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "kiln pipeline",
        "type": "object",
        "additionalProperties": false,
        "required": ["version", "name", "stages"],
        "properties": {
            "version": { "const": 1, "description": "pipeline format version" },
            "name": { "type": "string", "pattern": "^[A-Za-z0-9_-]+$", "description": "runs go to runs/<name>/" },
            "seed": { "type": "integer", "minimum": 0, "description": "seed for every stage without its own" },
            "description": { "type": "string" },
            "stages": {
                "type": "object",
                "minProperties": 1,
                "additionalProperties": { "oneOf": stages }
            }
        },
        "$defs": defs
    })
}
