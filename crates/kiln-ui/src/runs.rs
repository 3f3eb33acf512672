//! The runs folder as the page sees it: `runs/<pipeline>/<run-id>/run.json`, listed and
//! resolved read-only, every name from a URL checked, and every path kept inside the
//! folder (a link that leads outside it is refused like `..`).

use crate::UiError;
use kiln_core::artifact::run::{RunManifest, RunStatus};
use std::path::{Path, PathBuf};

/// The runs folder, canonical.
#[derive(Debug, Clone)]
pub struct RunsDir {
    root: PathBuf,
}

/// How a run stands as the page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RunState {
    /// run.json says running and its process is alive.
    Running,
    /// Every stage done, every gate passed.
    Ok,
    /// A stage failed or was blocked, or a gate failed.
    Failed,
    /// run.json says running, but its process is gone (killed, machine restarted).
    Interrupted,
    /// run.json is missing, half-written or of another format.
    Broken,
}

impl RunState {
    /// Every state, for the filter.
    pub const ALL: [RunState; 5] = [
        RunState::Running,
        RunState::Ok,
        RunState::Failed,
        RunState::Interrupted,
        RunState::Broken,
    ];

    /// The lower-case name shown and used in `?status=`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Ok => "ok",
            RunState::Failed => "failed",
            RunState::Interrupted => "interrupted",
            RunState::Broken => "broken",
        }
    }

    /// The state named `s`.
    pub fn parse(s: &str) -> Option<RunState> {
        RunState::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// One run folder and what its run.json says (or why it could not be read).
#[derive(Debug)]
pub struct RunEntry {
    /// The pipeline's folder name.
    pub pipeline: String,
    /// The run id (the folder name).
    pub id: String,
    /// The run's folder.
    pub dir: PathBuf,
    /// run.json, or the reason it cannot be read.
    pub manifest: Result<RunManifest, String>,
    /// The runs folder (canonical): every stage folder must lie inside it.
    root: PathBuf,
}

impl RunEntry {
    /// Reads `dir/run.json` (a run under the runs folder `root`).
    fn load(root: &Path, pipeline: &str, id: &str, dir: PathBuf) -> RunEntry {
        let manifest = kiln_core::artifact::load::<RunManifest>(&dir).map_err(|e| e.to_string());
        RunEntry {
            pipeline: pipeline.to_string(),
            id: id.to_string(),
            dir,
            manifest,
            root: root.to_path_buf(),
        }
    }

    /// The folder of stage `stage` (a name run.json gives), when it is a plain name and
    /// its folder exists inside the runs folder (a stage links into the cache, which is
    /// inside; a name or link that leads elsewhere is not followed).
    pub fn stage_dir(&self, stage: &str) -> Option<PathBuf> {
        if !plain(stage) {
            return None;
        }
        let real = self.dir.join(stage).canonicalize().ok()?;
        (real.starts_with(&self.root) && real.is_dir()).then_some(real)
    }

    /// The run's state.
    pub fn state(&self) -> RunState {
        match &self.manifest {
            Err(_) => RunState::Broken,
            Ok(m) => match m.status {
                RunStatus::Ok => RunState::Ok,
                RunStatus::Failed => RunState::Failed,
                RunStatus::Running if process_alive(m.pid) => RunState::Running,
                RunStatus::Running => RunState::Interrupted,
            },
        }
    }

    /// `pipeline/id`, the run's key in URLs.
    pub fn key(&self) -> String {
        format!("{}/{}", self.pipeline, self.id)
    }
}

/// Whether process `pid` exists (Linux: /proc/PID; elsewhere assumed alive).
fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// Why a URL's path was not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// A name that is not a plain folder or file name (`..`, a slash, a dot file).
    BadName(String),
    /// Nothing there.
    Missing(String),
    /// The path leads outside the runs folder (through a link).
    Outside(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::BadName(n) => write!(f, "`{n}` is not a run, stage or file name"),
            Refused::Missing(n) => write!(f, "there is no `{n}` in the runs folder"),
            Refused::Outside(n) => write!(f, "`{n}` leads outside the runs folder"),
        }
    }
}

/// A plain name: not empty, not `.`/`..`, no separator, no NUL, not hidden.
pub(crate) fn plain(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && name.len() <= 255
}

impl RunsDir {
    /// The folder at `path`, which must exist.
    pub fn open(path: &Path) -> Result<RunsDir, UiError> {
        let root = path.canonicalize().map_err(|e| UiError::RunsDir {
            path: path.to_path_buf(),
            message: format!(
                "cannot open the runs folder ({e}); run a pipeline first (`kiln run pipelines/iris.toml`) or point --runs-dir at one"
            ),
        })?;
        if !root.is_dir() {
            return Err(UiError::RunsDir {
                path: path.to_path_buf(),
                message: "is not a folder; point --runs-dir at the runs folder".into(),
            });
        }
        Ok(RunsDir { root })
    }

    /// The canonical folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `names` joined under the runs folder, each checked, the result canonical and
    /// inside the folder.
    pub fn resolve(&self, names: &[&str]) -> Result<PathBuf, Refused> {
        let shown = names.join("/");
        if let Some(bad) = names.iter().find(|n| !plain(n)) {
            return Err(Refused::BadName((*bad).to_string()));
        }
        let mut path = self.root.clone();
        path.extend(names);
        let real = path
            .canonicalize()
            .map_err(|_| Refused::Missing(shown.clone()))?;
        if !real.starts_with(&self.root) {
            return Err(Refused::Outside(shown));
        }
        Ok(real)
    }

    /// The run `pipeline/id` (`latest` resolves to the run it points at).
    pub fn run(&self, pipeline: &str, id: &str) -> Result<RunEntry, Refused> {
        let dir = self.resolve(&[pipeline, id])?;
        if !dir.is_dir() {
            return Err(Refused::Missing(format!("{pipeline}/{id}")));
        }
        let id = dir
            .file_name()
            .map_or_else(|| id.to_string(), |n| n.to_string_lossy().into_owned());
        Ok(RunEntry::load(&self.root, pipeline, &id, dir))
    }

    /// Every run of every pipeline, newest first (by run id, which sorts by start time;
    /// ties by pipeline). Folders that are not runs (the cache, `latest`, dot files) are
    /// left out; a run folder whose run.json cannot be read is listed as broken.
    pub fn list(&self) -> Vec<RunEntry> {
        let mut runs = Vec::new();
        for pipeline in read_dir_names(&self.root) {
            let pdir = self.root.join(&pipeline);
            if !pdir.is_dir() || is_link(&pdir) {
                continue;
            }
            for id in read_dir_names(&pdir) {
                let dir = pdir.join(&id);
                if id == "latest" || is_link(&dir) || !dir.is_dir() {
                    continue;
                }
                runs.push(RunEntry::load(&self.root, &pipeline, &id, dir));
            }
        }
        runs.sort_by(|a, b| b.id.cmp(&a.id).then_with(|| a.pipeline.cmp(&b.pipeline)));
        runs
    }
}

/// The plain names in a folder (unreadable folders and entries are skipped).
fn read_dir_names(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| plain(n))
        .collect()
}

fn is_link(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_urls_stay_inside_the_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("iris/r1")).unwrap();
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("iris/escape")).unwrap();
        let runs = RunsDir::open(tmp.path()).unwrap();
        assert!(runs.resolve(&["iris", "r1"]).is_ok());
        for bad in ["..", ".", "", ".cache", "a/b", "a\\b"] {
            assert_eq!(
                runs.resolve(&["iris", bad]),
                Err(Refused::BadName(bad.to_string()))
            );
        }
        assert_eq!(
            runs.resolve(&["iris", "escape"]),
            Err(Refused::Outside("iris/escape".into()))
        );
        assert_eq!(
            runs.resolve(&["iris", "r2"]),
            Err(Refused::Missing("iris/r2".into()))
        );
    }

    #[test]
    fn broken_runs_are_listed_as_broken_newest_first() {
        let tmp = tempfile::tempdir().unwrap();
        for id in ["20260101-000000", "20260102-000000"] {
            std::fs::create_dir_all(tmp.path().join("p").join(id)).unwrap();
        }
        std::fs::write(
            tmp.path().join("p/20260102-000000/run.json"),
            "{\"kind\": \"kiln.run\", ",
        )
        .unwrap();
        std::fs::create_dir_all(tmp.path().join(".cache/abc")).unwrap();
        let runs = RunsDir::open(tmp.path()).unwrap().list();
        let ids: Vec<_> = runs.iter().map(|r| (r.id.as_str(), r.state())).collect();
        assert_eq!(
            ids,
            [
                ("20260102-000000", RunState::Broken),
                ("20260101-000000", RunState::Broken)
            ]
        );
    }
}
