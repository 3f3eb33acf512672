//! The cache key of a stage: everything its output depends on, as a typed value. A stage
//! runs again exactly when its key's hash differs from every complete cache entry.
//!
//! | part | what it covers |
//! |---|---|
//! | `kind` | the stage kind |
//! | `config` | the resolved configuration (seed filled in, paths absolute) |
//! | `reads` | the content hash of every upstream artifact the stage declares it reads |
//! | `files` | the content hash of every source file it reads, by path relative to the pipeline file |
//! | `build` | the build identity of the code that computes it ([`build_identity`]) |
//!
//! Absolute paths of source files are not in the key (moving a checkout reruns nothing),
//! nor are timings. The hash is BLAKE3 over a CBOR encoding of the key, in which NaN, the
//! infinities and a missing value are all different bytes (JSON would write the first
//! three as `null`). The key is saved beside the output as `.kiln-key.json`, and a miss
//! says which part changed since the last run of the stage (`rerun_because`).

use crate::StageKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A stage's cache key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageKey {
    /// The stage kind.
    pub kind: StageKind,
    /// The resolved configuration, as JSON (for reading and for `rerun_because`).
    pub config: serde_json::Value,
    /// The hash of the resolved configuration itself (floats exact).
    pub config_hash: String,
    /// Upstream stage id -> content hash of its output.
    pub reads: BTreeMap<String, String>,
    /// Source file (relative to the pipeline file's folder) -> content hash.
    pub files: BTreeMap<String, String>,
    /// The build identity of the code that runs this kind of stage.
    pub build: String,
}

/// BLAKE3 (hex) of the CBOR encoding of `value`.
fn cbor_hash<T: Serialize>(value: &T) -> String {
    let mut bytes = Vec::new();
    // CBOR of a serde value only fails on a writer error (a Vec never fails) or a map
    // with non-string keys, which no config has; either would be kiln's bug
    if let Err(e) = ciborium::into_writer(value, &mut bytes) {
        bytes = format!("unencodable: {e}").into_bytes();
    }
    blake3::hash(&bytes).to_hex().to_string()
}

impl StageKey {
    /// The key of a `kind` stage with `config`, reading `reads` and `files`, built by
    /// `build`.
    pub fn new<C: Serialize>(
        kind: StageKind,
        config: &C,
        reads: BTreeMap<String, String>,
        files: BTreeMap<String, String>,
        build: String,
    ) -> StageKey {
        StageKey {
            kind,
            config: serde_json::to_value(config).unwrap_or(serde_json::Value::Null),
            config_hash: cbor_hash(config),
            reads,
            files,
            build,
        }
    }

    /// The key's hash (32 hex digits): the cache entry's name.
    pub fn hash(&self) -> String {
        let canonical = (
            "kiln stage key 1",
            self.kind,
            &self.config_hash,
            &self.reads,
            &self.files,
            &self.build,
        );
        cbor_hash(&canonical)[..32].to_string()
    }

    /// What differs from `old`, the key of the last run of the same stage, in words.
    pub fn changes_since(&self, old: &StageKey) -> Vec<String> {
        let mut why = Vec::new();
        if self.kind != old.kind {
            why.push(format!(
                "the stage kind changed ({} -> {})",
                old.kind, self.kind
            ));
        }
        let mut paths = Vec::new();
        diff_json("", &old.config, &self.config, &mut paths);
        if paths.is_empty() && self.config_hash != old.config_hash {
            paths.push("(a value JSON cannot show, such as NaN)".into());
        }
        for p in paths.into_iter().take(5) {
            why.push(format!("config `{p}` changed"));
        }
        for (id, h) in &self.reads {
            match old.reads.get(id) {
                Some(o) if o == h => {}
                Some(_) => why.push(format!("the output of `{id}` changed")),
                None => why.push(format!("it now reads `{id}`")),
            }
        }
        for (f, h) in &self.files {
            match old.files.get(f) {
                Some(o) if o == h => {}
                Some(_) => why.push(format!("file `{f}` changed")),
                None => why.push(format!("it now reads file `{f}`")),
            }
        }
        for f in old.files.keys().filter(|f| !self.files.contains_key(*f)) {
            why.push(format!("it no longer reads file `{f}`"));
        }
        if self.build != old.build {
            why.push("kiln's code for this stage changed (a new build)".into());
        }
        why
    }
}

/// Dotted paths where two JSON values differ.
fn diff_json(at: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    let join = |k: &str| {
        if at.is_empty() {
            k.to_string()
        } else {
            format!("{at}.{k}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => diff_json(&join(k), p, q, out),
                    _ => out.push(join(k)),
                }
            }
        }
        _ if a != b => out.push(if at.is_empty() {
            "(all)".into()
        } else {
            at.into()
        }),
        _ => {}
    }
}

/// Hashes of the sources a build identity is made of (computed by build.rs; see
/// [`BuildSources::built`]). A tool that pins or simulates builds can pass its own in
/// `RunOptions::build`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSources {
    /// `rustc --version`.
    pub rustc: String,
    /// Cargo.lock.
    pub lock: String,
    /// kiln-core.
    pub core: String,
    /// kiln-preprocess.
    pub preprocess: String,
    /// kiln-train.
    pub train: String,
    /// kiln-optimize.
    pub optimize: String,
    /// kiln-evaluate.
    pub evaluate: String,
    /// kiln-deploy.
    pub deploy: String,
    /// kiln-pipeline's glue shared by every stage (`src/stage/mod.rs`).
    pub glue: String,
    /// kiln-pipeline's module of each stage kind (`src/stage/<kind>.rs`), in
    /// [`StageKind::ALL`] order.
    pub modules: [String; 5],
}

impl BuildSources {
    /// The sources this kiln was built from.
    pub fn built() -> BuildSources {
        BuildSources {
            rustc: env!("KILN_RUSTC_VERSION").into(),
            lock: env!("KILN_SRC_LOCK").into(),
            core: env!("KILN_SRC_CORE").into(),
            preprocess: env!("KILN_SRC_PREPROCESS").into(),
            train: env!("KILN_SRC_TRAIN").into(),
            optimize: env!("KILN_SRC_OPTIMIZE").into(),
            evaluate: env!("KILN_SRC_EVALUATE").into(),
            deploy: env!("KILN_SRC_DEPLOY").into(),
            glue: env!("KILN_SRC_PIPELINE_STAGE_MOD").into(),
            modules: [
                env!("KILN_SRC_STAGE_PREPROCESS").into(),
                env!("KILN_SRC_STAGE_TRAIN").into(),
                env!("KILN_SRC_STAGE_OPTIMIZE").into(),
                env!("KILN_SRC_STAGE_EVALUATE").into(),
                env!("KILN_SRC_STAGE_DEPLOY").into(),
            ],
        }
    }

    /// The build identity of the code that runs stages of `kind`: a hash of the
    /// compiler, Cargo.lock, kiln-core, the crates the kind uses, and its module in
    /// kiln-pipeline (with their shared glue). A change to kiln-train reruns train and
    /// optimize stages (optimize fine-tunes with it) and nothing else.
    pub fn identity(&self, kind: StageKind) -> String {
        let crates: Vec<&String> = match kind {
            StageKind::Preprocess => vec![&self.preprocess],
            StageKind::Train => vec![&self.train],
            StageKind::Optimize => vec![&self.optimize, &self.train, &self.deploy],
            StageKind::Evaluate => vec![&self.evaluate, &self.deploy],
            StageKind::Deploy => vec![&self.deploy],
        };
        let module = StageKind::ALL
            .iter()
            .position(|k| *k == kind)
            .map_or("", |i| self.modules[i].as_str());
        let mut h = blake3::Hasher::new();
        for p in [&self.rustc, &self.lock, &self.core, &self.glue]
            .into_iter()
            .chain(crates)
            .map(String::as_str)
            .chain([module])
        {
            h.update(p.as_bytes());
            h.update(&[0]);
        }
        h.finalize().to_hex()[..16].to_string()
    }

    /// The identity of the whole build (`kiln --version`, run.json): every part.
    pub fn id(&self) -> String {
        let mut h = blake3::Hasher::new();
        for p in [
            &self.rustc,
            &self.lock,
            &self.core,
            &self.preprocess,
            &self.train,
            &self.optimize,
            &self.evaluate,
            &self.deploy,
            &self.glue,
        ]
        .into_iter()
        .chain(&self.modules)
        {
            h.update(p.as_bytes());
            h.update(&[0]);
        }
        h.finalize().to_hex()[..16].to_string()
    }
}

/// The build identity of the code that runs stages of `kind` in this kiln
/// ([`BuildSources::identity`] of [`BuildSources::built`]).
pub fn build_identity(kind: StageKind) -> String {
    BuildSources::built().identity(kind)
}

/// The identity of this kiln's build (`kiln --version`, run.json).
pub fn build_id() -> String {
    BuildSources::built().id()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Cfg {
        lr: f64,
        decay: Option<f64>,
    }

    fn key(c: &Cfg) -> StageKey {
        StageKey::new(
            StageKind::Train,
            c,
            [("data".to_string(), "aa".to_string())].into(),
            BTreeMap::new(),
            "b1".into(),
        )
    }

    #[test]
    fn nan_infinity_and_missing_values_give_different_hashes() {
        let hashes: Vec<String> = [
            Cfg {
                lr: f64::NAN,
                decay: None,
            },
            Cfg {
                lr: f64::INFINITY,
                decay: None,
            },
            Cfg {
                lr: f64::NEG_INFINITY,
                decay: None,
            },
            Cfg {
                lr: 0.0,
                decay: None,
            },
            Cfg {
                lr: -0.0,
                decay: None,
            },
            Cfg {
                lr: 0.0,
                decay: Some(0.0),
            },
            Cfg {
                lr: 0.0,
                decay: Some(f64::NAN),
            },
        ]
        .iter()
        .map(|c| key(c).hash())
        .collect();
        let distinct: std::collections::BTreeSet<&String> = hashes.iter().collect();
        assert_eq!(distinct.len(), hashes.len(), "{hashes:?}");
        // the same config hashes the same
        assert_eq!(
            hashes[0],
            key(&Cfg {
                lr: f64::NAN,
                decay: None
            })
            .hash()
        );
        assert_eq!(hashes[0].len(), 32);
        // JSON cannot tell NaN from infinity, the key can, and says so
        let (a, b) = (
            key(&Cfg {
                lr: f64::NAN,
                decay: None,
            }),
            key(&Cfg {
                lr: f64::INFINITY,
                decay: None,
            }),
        );
        assert_eq!(a.config, b.config);
        assert_eq!(
            b.changes_since(&a),
            ["config `(a value JSON cannot show, such as NaN)` changed"]
        );
    }

    #[test]
    fn every_part_of_the_key_counts_and_is_named_when_it_changes() {
        let k = key(&Cfg {
            lr: 1.0,
            decay: None,
        });
        let base = k.hash();
        let mut other = k.clone();
        other.reads.insert("data".into(), "bb".into());
        assert_ne!(other.hash(), base);
        assert_eq!(other.changes_since(&k), ["the output of `data` changed"]);
        let mut other = k.clone();
        other.files.insert("train.csv".into(), "f".into());
        assert_ne!(other.hash(), base);
        assert_eq!(other.changes_since(&k), ["it now reads file `train.csv`"]);
        let mut other = k.clone();
        other.build = "b2".into();
        assert_ne!(other.hash(), base);
        assert_eq!(
            other.changes_since(&k),
            ["kiln's code for this stage changed (a new build)"]
        );
        let mut other = k.clone();
        other.kind = StageKind::Optimize;
        assert_ne!(other.hash(), base);
        let other = key(&Cfg {
            lr: 2.0,
            decay: Some(0.5),
        });
        assert_ne!(other.hash(), base);
        assert_eq!(
            other.changes_since(&k),
            ["config `decay` changed", "config `lr` changed"]
        );
        assert!(k.changes_since(&k).is_empty());
    }

    #[test]
    fn a_kinds_build_identity_covers_its_own_crates_only() {
        // every kind has its own identity, stable within a build
        let ids: std::collections::BTreeSet<String> =
            StageKind::ALL.iter().map(|k| build_identity(*k)).collect();
        assert_eq!(ids.len(), 5);
        assert_eq!(
            build_identity(StageKind::Train),
            build_identity(StageKind::Train)
        );
        assert_eq!(build_id().len(), 16);
    }
}
