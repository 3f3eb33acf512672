//! The run folder `runs/<pipeline>/<run-id>/`: its id claimed atomically (concurrent runs
//! never share one), one link per stage into the cache (or the kept output of a failed
//! stage), run.json, and `runs/<pipeline>/latest` replaced atomically at the end.

use crate::{PipelineError, io};
use kiln_core::artifact::run::RunManifest;
use std::path::{Path, PathBuf};

/// A run's folder.
#[derive(Debug)]
pub(crate) struct RunFolder {
    /// `runs/<pipeline>/<run-id>`.
    pub dir: PathBuf,
    /// The run id.
    pub id: String,
    /// `runs/<pipeline>`.
    parent: PathBuf,
    /// The folder `latest` pointed at when this run began.
    previous: Option<PathBuf>,
}

impl RunFolder {
    /// Creates the folder of a new run of `pipeline` under `runs_dir`, with an id sortable
    /// by time (`YYYYMMDD-HHMMSS` in UTC, `-N` added on a clash). The id is claimed by
    /// creating its folder, which fails for every process but one.
    pub fn create(runs_dir: &Path, pipeline: &str) -> Result<RunFolder, PipelineError> {
        let parent = runs_dir.join(pipeline);
        std::fs::create_dir_all(&parent).map_err(io(&parent))?;
        let previous = std::fs::read_link(parent.join("latest"))
            .ok()
            .map(|t| parent.join(t));
        let base = timestamp();
        let mut n = 1;
        loop {
            let id = if n == 1 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            let dir = parent.join(&id);
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    return Ok(RunFolder {
                        dir,
                        id,
                        parent,
                        previous,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
                Err(e) => return Err(io(&dir)(e)),
            }
        }
    }

    /// The folder of stage `id` in the run `latest` pointed at when this one began.
    pub fn previous_stage(&self, id: &str) -> Option<PathBuf> {
        Some(self.previous.as_ref()?.join(id)).filter(|d| d.is_dir())
    }

    /// Writes run.json.
    pub fn save(&self, m: &RunManifest) -> Result<(), PipelineError> {
        Ok(kiln_core::artifact::save(&self.dir, m)?)
    }

    /// Links `<run>/<stage>` to the cache entry `hash`.
    pub fn link_stage(&self, stage: &str, hash: &str) -> Result<(), PipelineError> {
        link(&self.dir.join(stage), &Path::new("../../.cache").join(hash))
    }

    /// Points `runs/<pipeline>/latest` at this run, atomically (a new link renamed over
    /// the old one, so a reader never finds none).
    pub fn set_latest(&self) -> Result<(), PipelineError> {
        let tmp = self
            .parent
            .join(format!(".latest.tmp-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        link(&tmp, Path::new(&self.id))?;
        let latest = self.parent.join("latest");
        std::fs::rename(&tmp, &latest).map_err(io(&latest))
    }
}

#[cfg(unix)]
fn link(at: &Path, target: &Path) -> Result<(), PipelineError> {
    let _ = std::fs::remove_file(at);
    std::os::unix::fs::symlink(target, at).map_err(io(at))
}

#[cfg(not(unix))]
fn link(at: &Path, target: &Path) -> Result<(), PipelineError> {
    kiln_core::atomic_write(at, target.display().to_string().as_bytes()).map_err(Into::into)
}

/// Now as `YYYYMMDD-HHMMSS` in UTC.
fn timestamp() -> String {
    let t = kiln_core::time::Utc::from_unix(crate::cache::now());
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}
