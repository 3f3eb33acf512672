//! Engines other than the local one (`engine = "datafusion"` or `"ballista"`): kiln-cluster
//! implements them and the program that links it registers them here, so that a default
//! build of kiln pays nothing for DataFusion and a pipeline names the engine it wants.

use crate::config::{Config, Engine};
use crate::error::{PreprocessError, Result};
use crate::streamed::Streamed;
use std::path::Path;
use std::sync::OnceLock;

/// A preprocess engine that runs the steps elsewhere than in polars.
pub trait RemoteEngine: Send + Sync {
    /// Runs `config` (its `engine` is not `local`) into `out_dir`: the dataset artifact
    /// (shards with their manifest, schema.json, profile.json).
    fn run(
        &self,
        config: &Config,
        out_dir: &Path,
        progress: &dyn kiln_core::Progress,
    ) -> Result<Streamed>;
}

static REMOTE: OnceLock<Box<dyn RemoteEngine>> = OnceLock::new();

/// Registers the engine behind `engine = "datafusion"` / `"ballista"`; false when one is
/// registered already (that one stays).
pub fn register_remote(engine: Box<dyn RemoteEngine>) -> bool {
    REMOTE.set(engine).is_ok()
}

/// Runs `config` on its remote engine, or says how to get a kiln that has one.
pub fn run_remote(
    config: &Config,
    out_dir: &Path,
    progress: &dyn kiln_core::Progress,
) -> Result<Streamed> {
    match (config.engine, REMOTE.get()) {
        (Engine::Local, _) => Err(PreprocessError::Invalid(
            "internal: run_remote called for engine = \"local\"".into(),
        )),
        (_, Some(remote)) => remote.run(config, out_dir, progress),
        (e, None) => Err(PreprocessError::Invalid(format!(
            "engine = \"{}\": this kiln was built without the `cluster` feature; build it with `cargo install --path crates/kiln-cli --features cluster` (docs/scale.md), or remove `engine` to run on the local engine",
            e.name()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(engine: &str) -> Config {
        let mut c: Config = serde_json::from_value(serde_json::json!({
            "source": { "format": "csv", "path": "t.csv" },
            "split": { "row_id": "id" },
        }))
        .unwrap();
        match engine {
            "datafusion" => c.engine = Engine::Datafusion,
            "ballista" => c.engine = Engine::Ballista,
            _ => {}
        }
        c
    }

    #[test]
    fn other_engines_need_the_feature_a_scheduler_and_a_row_id() {
        // no engine registered in this test binary
        let e = run_remote(
            &config("datafusion"),
            Path::new("/nonexistent"),
            &kiln_core::NoProgress,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(
                "engine = \"datafusion\": this kiln was built without the `cluster` feature"
            ) && e.contains("--features cluster"),
            "{e}"
        );
        let p = config("ballista").problems();
        assert_eq!(p[0].0, "scheduler");
        assert!(p[0].1.contains("df://127.0.0.1:50050"), "{p:?}");
        let mut c = config("ballista");
        c.scheduler = Some("http://x:1".into());
        assert!(c.problems()[0].1.contains("write it as df://host:port"));
        let mut c = config("datafusion");
        c.split.row_id = None;
        let p = c.problems();
        assert_eq!(p[0].0, "split.row_id", "{p:?}");
        let mut c = config("local");
        c.scheduler = Some("df://x:1".into());
        assert!(
            c.problems()[0]
                .1
                .contains("only used with engine = \"ballista\"")
        );
        assert!(config("local").problems().is_empty());
    }
}
