//! One run's artifacts, read for the page: each stage's typed files through
//! `kiln_core::artifact`, each one loaded on its own so a missing or half-written file
//! shows as that file's error and the rest of the page still renders.

use crate::onnx::{self, OnnxSummary};
use crate::runs::RunEntry;
use kiln_core::artifact::bundle::BundleManifest;
use kiln_core::artifact::candidates::{Candidates, Timings};
use kiln_core::artifact::history::History;
use kiln_core::artifact::metrics::Metrics;
use kiln_core::artifact::parity::Parity;
use kiln_core::artifact::profile::Profile;
use kiln_core::artifact::run::{StageKind, StageRecord};
use kiln_core::artifact::sweep::SweepResults;
use kiln_core::artifact::verdict::Verdict;
use kiln_core::artifact::{Artifact, load};
use kiln_core::dataset::shards::{Shards, Split};
use kiln_evaluate::VariantMetrics;
use kiln_evaluate::analysis::FeatureImportance;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A file's content, or why it could not be read.
pub type Loaded<T> = Result<T, String>;

/// A histogram of one feature over the first train shard.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Smallest and largest finite value.
    pub min: f32,
    /// See `min`.
    pub max: f32,
    /// Rows per bin, `BINS` equal-width bins from min to max.
    pub counts: Vec<u32>,
}

/// Bins of a feature histogram.
pub const BINS: usize = 20;

/// The largest first train shard histograms are drawn from (it is read on each view of
/// the run page; a default shard holds up to 64 MiB of features).
const HISTOGRAM_SHARD_BYTES: u64 = 24 << 20;

/// What a stage's folder holds, by kind.
#[derive(Debug)]
pub enum StageArtifacts {
    /// The stage has no output in this run (pending, failed, blocked, skipped).
    None,
    /// run.json says it has output, but its folder is missing, or its name or link
    /// leads outside the runs folder.
    Missing,
    /// Data profile and feature histograms.
    Preprocess {
        /// profile.json.
        profile: Loaded<Profile>,
        /// Feature histograms from the first train shard, and its rows.
        histograms: Loaded<(usize, BTreeMap<String, Histogram>)>,
    },
    /// Training history and sweep.
    Train {
        /// history.json.
        history: Loaded<History>,
        /// sweep.json, when the stage swept.
        sweep: Option<Loaded<SweepResults>>,
    },
    /// Compression candidates.
    Optimize {
        /// candidates.json.
        candidates: Loaded<Candidates>,
        /// latency.timings.json, when measured.
        timings: Option<Loaded<Timings>>,
    },
    /// Test metrics.
    Evaluate {
        /// metrics.json.
        metrics: Loaded<Metrics>,
        /// confusion.json.
        details: Loaded<BTreeMap<String, VariantMetrics>>,
        /// importance.json, when configured.
        importance: Option<Loaded<Vec<FeatureImportance>>>,
        /// verdict.json.
        verdict: Loaded<Verdict>,
        /// The figures the stage drew (SVG file names: reliability, ROC / PR curves,
        /// confusion, residuals).
        figures: Vec<String>,
    },
    /// The deployed bundle.
    Deploy {
        /// parity.json.
        parity: Loaded<Parity>,
        /// bundle.json.
        bundle: Loaded<BundleManifest>,
        /// model_card.md.
        card: Option<Loaded<String>>,
        /// Each model file's ONNX summary.
        onnx: Vec<(String, Loaded<OnnxSummary>)>,
    },
}

/// A stage of a run: its record in run.json and its artifacts.
#[derive(Debug)]
pub struct StageView {
    /// run.json's record.
    pub record: StageRecord,
    /// What its folder holds.
    pub artifacts: StageArtifacts,
}

/// The stage's folder, when the stage has output or left one (a failed stage's kept
/// output), and it lies inside the runs folder.
fn stage_dir(run: &RunEntry, record: &StageRecord) -> Option<PathBuf> {
    run.stage_dir(&record.id)
}

fn artifact<T: Artifact>(dir: &Path) -> Loaded<T> {
    load::<T>(dir).map_err(|e| e.to_string())
}

fn optional<T: Artifact>(dir: &Path) -> Option<Loaded<T>> {
    dir.join(T::FILE).exists().then(|| artifact(dir))
}

fn json<T: serde::de::DeserializeOwned>(path: &Path) -> Loaded<T> {
    kiln_core::read_json(path).map_err(|e| e.to_string())
}

/// Every stage of `run` with its artifacts.
pub fn stages(run: &RunEntry) -> Vec<StageView> {
    let Ok(m) = &run.manifest else {
        return Vec::new();
    };
    m.stages
        .iter()
        .map(|record| StageView {
            record: record.clone(),
            artifacts: match stage_dir(run, record) {
                None if record.status.has_output() => StageArtifacts::Missing,
                None => StageArtifacts::None,
                Some(dir) => stage(record.uses, &dir),
            },
        })
        .collect()
}

fn stage(kind: StageKind, dir: &Path) -> StageArtifacts {
    match kind {
        StageKind::Preprocess => StageArtifacts::Preprocess {
            profile: artifact(dir),
            histograms: histograms(dir),
        },
        StageKind::Train => StageArtifacts::Train {
            history: artifact(dir),
            sweep: optional(dir),
        },
        StageKind::Optimize => StageArtifacts::Optimize {
            candidates: artifact(dir),
            timings: optional(dir),
        },
        StageKind::Evaluate => StageArtifacts::Evaluate {
            metrics: artifact(dir),
            details: json(&dir.join("confusion.json")),
            importance: dir
                .join("importance.json")
                .exists()
                .then(|| json(&dir.join("importance.json"))),
            verdict: artifact(dir),
            figures: svg_files(dir),
        },
        StageKind::Deploy => {
            let bundle: Loaded<BundleManifest> = artifact(dir);
            let onnx = match &bundle {
                Ok(b) => b
                    .models
                    .iter()
                    .map(|m| {
                        let summary = if crate::runs::plain(&m.file) {
                            onnx::summarize(&dir.join(&m.file))
                        } else {
                            Err(format!(
                                "`{}` is not a file name in the stage folder",
                                m.file
                            ))
                        };
                        (m.file.clone(), summary)
                    })
                    .collect(),
                Err(_) => Vec::new(),
            };
            StageArtifacts::Deploy {
                parity: artifact(dir),
                bundle,
                card: dir.join("model_card.md").exists().then(|| {
                    std::fs::read_to_string(dir.join("model_card.md"))
                        .map_err(|e| format!("model_card.md: {e}"))
                }),
                onnx,
            }
        }
    }
}

/// The SVG figures in `dir`, sorted.
fn svg_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.ends_with(".svg") && !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Histograms of each feature over the first train shard (the features as the model
/// sees them, after the preprocess steps).
fn histograms(dir: &Path) -> Loaded<(usize, BTreeMap<String, Histogram>)> {
    let shards = Shards::open(dir).map_err(|e| e.to_string())?;
    let Some(first) = shards.manifest.split(Split::Train).shards.first() else {
        return Ok((0, BTreeMap::new()));
    };
    if first.bytes > HISTOGRAM_SHARD_BYTES {
        return Err(format!(
            "not drawn: the first train shard is {} MiB, and kiln ui reads shards of up to {} MiB on a page view",
            first.bytes >> 20,
            HISTOGRAM_SHARD_BYTES >> 20
        ));
    }
    let data = shards.shard(first).map_err(|e| e.to_string())?;
    let width = data.n_features();
    let rows = data.n_rows();
    let mut out = BTreeMap::new();
    for (j, name) in data.feature_names.iter().enumerate() {
        let column = data.features.iter().skip(j).step_by(width.max(1)).copied();
        out.insert(name.clone(), histogram(column));
    }
    Ok((rows, out))
}

/// An equal-width histogram of the finite values.
pub fn histogram(values: impl Iterator<Item = f32> + Clone) -> Histogram {
    let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
    for v in values.clone().filter(|v| v.is_finite()) {
        min = min.min(v);
        max = max.max(v);
    }
    let mut counts = vec![0u32; BINS];
    if min > max {
        return Histogram {
            min: 0.0,
            max: 0.0,
            counts,
        };
    }
    // in f64: `max - min` of f32 values near ±f32::MAX overflows f32
    let width = max as f64 - min as f64;
    for v in values.filter(|v| v.is_finite()) {
        let bin = if width > 0.0 {
            ((v as f64 - min as f64) / width * BINS as f64) as usize
        } else {
            0
        };
        counts[bin.min(BINS - 1)] += 1;
    }
    Histogram { min, max, counts }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_bins_cover_min_to_max() {
        let h = histogram([0.0f32, 1.0, 1.0, 2.0, f32::NAN].into_iter());
        assert_eq!((h.min, h.max), (0.0, 2.0));
        assert_eq!(h.counts.iter().sum::<u32>(), 4);
        assert_eq!((h.counts[0], h.counts[10], h.counts[19]), (1, 2, 1));
        let flat = histogram([3.0f32; 5].into_iter());
        assert_eq!(flat.counts[0], 5);
        let wide = histogram([f32::MIN, 0.0, f32::MAX].into_iter());
        assert_eq!(
            (wide.counts[0], wide.counts[10], wide.counts[19]),
            (1, 1, 1)
        );
    }
}
