//! `kiln gc`: removes what no run needs from a runs folder — partial folders abandoned by
//! runs that died (no process holds their lock) and cache entries that no run folder
//! links to — older than a given age, or the oldest of them until the cache fits a size.
//! It takes each entry's lock before removing it, so it never removes what a running
//! `kiln run` is building, and with `dry_run` it only lists.

use crate::cache::now;
use crate::{PipelineError, io};
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

/// What to remove.
#[derive(Debug, Clone, Default)]
pub struct GcOptions {
    /// Only what is at least this many seconds old (by last change).
    pub older_than: u64,
    /// Also remove unlinked entries, oldest first, until the cache holds at most this
    /// many bytes (linked entries are never removed).
    pub max_bytes: Option<u64>,
    /// List, remove nothing.
    pub dry_run: bool,
}

/// One thing gc removed (or would remove).
#[derive(Debug, Clone, PartialEq)]
pub struct Removed {
    /// The folder.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Why: `abandoned partial folder` or `no run links to it`.
    pub why: &'static str,
}

/// Removes abandoned partial folders and unlinked cache entries of `runs_dir`.
pub fn gc(runs_dir: &Path, opts: &GcOptions) -> Result<Vec<Removed>, PipelineError> {
    let cache = runs_dir.join(".cache");
    if !cache.is_dir() {
        return Ok(Vec::new());
    }
    let linked = linked_entries(runs_dir)?;
    let mut candidates: Vec<(u64, Removed)> = Vec::new();
    let mut total = 0u64;
    let mut stale_locks = Vec::new();
    for e in std::fs::read_dir(&cache).map_err(io(&cache))? {
        let path = e.map_err(io(&cache))?.path();
        if path.extension().is_some_and(|x| x == "lock") {
            // the lock of an entry that is not there and not being built
            let stem = path.with_extension("");
            if !stem.exists() && !stem.with_extension("partial").exists() {
                stale_locks.push(path);
            }
            continue;
        }
        if !path.is_dir() {
            continue;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bytes = size(&path);
        total += bytes;
        let age = now().saturating_sub(modified(&path));
        let why = if name.ends_with(".partial") {
            "abandoned partial folder"
        } else if linked.contains(&name) {
            continue;
        } else {
            "no run links to it"
        };
        candidates.push((age, Removed { path, bytes, why }));
    }
    // oldest first
    candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
    let mut removed = Vec::new();
    for (age, r) in candidates {
        let old_enough = age >= opts.older_than;
        let over_size =
            opts.max_bytes.is_some_and(|m| total > m) && r.why != "abandoned partial folder";
        if !old_enough && !over_size {
            continue;
        }
        let hash = r
            .path
            .file_name()
            .map(|n| n.to_string_lossy().trim_end_matches(".partial").to_string())
            .unwrap_or_default();
        // never what a running kiln holds
        let Some(_lock) = try_lock(&cache.join(format!("{hash}.lock")))? else {
            continue;
        };
        if !opts.dry_run {
            std::fs::remove_dir_all(&r.path).map_err(io(&r.path))?;
        }
        total = total.saturating_sub(r.bytes);
        removed.push(r);
    }
    if !opts.dry_run {
        for l in stale_locks {
            // held by a run that is about to build it: leave it
            if try_lock(&l)?.is_some() {
                let _ = std::fs::remove_file(&l);
            }
        }
    }
    Ok(removed)
}

/// Names of the cache entries some run folder links to.
fn linked_entries(runs_dir: &Path) -> Result<BTreeSet<String>, PipelineError> {
    let mut linked = BTreeSet::new();
    for pipeline in std::fs::read_dir(runs_dir).map_err(io(runs_dir))?.flatten() {
        let p = pipeline.path();
        if pipeline.file_name() == ".cache" || !p.is_dir() {
            continue;
        }
        for run in std::fs::read_dir(&p).into_iter().flatten().flatten() {
            for stage in std::fs::read_dir(run.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Ok(target) = std::fs::read_link(stage.path())
                    && let Some(name) = target.file_name()
                {
                    linked.insert(name.to_string_lossy().into_owned());
                }
            }
        }
    }
    Ok(linked)
}

/// The lock of an entry if no process holds it (None when one does).
fn try_lock(path: &Path) -> Result<Option<File>, PipelineError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io(path))?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(io(path)(e)),
    }
}

/// Bytes under a folder.
fn size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let p = e.path();
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => size(&p),
                Ok(m) => m.len(),
                Err(_) => 0,
            }
        })
        .sum()
}

/// Last change of a folder, in seconds since the Unix epoch.
fn modified(p: &Path) -> u64 {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}
