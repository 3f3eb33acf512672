//! The content-addressed stage cache under `runs/.cache/`: an entry is complete or absent.
//!
//! - `<hash>/` is a complete entry: its files, `.kiln-key.json` (the [`StageKey`]) and,
//!   written last, `.kiln-entry.json` (the [`Marker`] with the output's content hash, so
//!   a cached run never hashes the output again). A folder without a readable marker of
//!   its own hash is not an entry and is built again.
//! - `<hash>.partial/` is where a stage writes; only the holder of `<hash>.lock` touches
//!   it (a training stage's partial keeps its checkpoint for a resumed run).
//! - `<hash>.lock` is locked exclusively (std's file locks, released by the OS when a
//!   process dies) while an entry is built; it holds the holder's pid, run and stage, so
//!   a waiting run can say who it waits for.
//!
//! Committing: every file of the partial folder is fsynced while its content hash is
//! computed, the marker is written and fsynced, then the partial folder is renamed to
//! `<hash>` — or, under `--force` with an entry in place, exchanged with it in one
//! atomic `renameat2(RENAME_EXCHANGE)` (Linux), so the new entry is in place before the
//! old one is deleted. A kill at any point leaves either the old complete entry, the new
//! complete entry, or no entry; never a folder a later run accepts half-written.

use crate::key::StageKey;
use crate::{PipelineError, io};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The marker of a complete entry (`.kiln-entry.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    /// The entry's key hash (its folder name).
    pub key_hash: String,
    /// The content hash of its files (hidden files and `*.timings.json` skipped).
    pub content_hash: String,
    /// Seconds since the Unix epoch when it was committed.
    pub created: u64,
}

impl kiln_core::Artifact for Marker {
    const KIND: &'static str = "kiln.cache-entry";
    const FILE: &'static str = ".kiln-entry.json";
}

/// The file holding an entry's [`StageKey`].
pub const KEY_FILE: &str = ".kiln-key.json";

/// Points where tests kill the process (`KILN_KILL_AT=<point>`: abort, as kill -9 would,
/// with no cleanup), to check that every one leaves the cache usable.
pub fn kill_point(point: &str) {
    if std::env::var("KILN_KILL_AT").is_ok_and(|p| p == point) {
        eprintln!("KILN_KILL_AT={point}: aborting");
        std::process::abort();
    }
}

/// Who holds an entry's lock, as written into the lock file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    /// The process id.
    pub pid: u32,
    /// `<pipeline>/<run-id>`.
    pub run: String,
    /// The stage it builds.
    pub stage: String,
    /// Seconds since the Unix epoch when it took the lock.
    pub since: u64,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "run {} (pid {}), building stage `{}` since {} s ago",
            self.run,
            self.pid,
            self.stage,
            now().saturating_sub(self.since)
        )
    }
}

/// The cache folder.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// An entry's lock, held while it is built; released when dropped.
#[derive(Debug)]
pub struct EntryLock {
    file: File,
}

impl Drop for EntryLock {
    fn drop(&mut self) {
        // clear the holder note; the OS releases the lock when the file closes
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Cache {
    /// The cache in `root` (created when missing).
    pub fn open(root: &Path) -> Result<Cache, PipelineError> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        Ok(Cache {
            root: root.to_path_buf(),
        })
    }

    /// The folder of entry `hash` (complete or not).
    pub fn entry(&self, hash: &str) -> PathBuf {
        self.root.join(hash)
    }

    /// The folder a stage writes entry `hash` into.
    pub fn partial(&self, hash: &str) -> PathBuf {
        self.root.join(format!("{hash}.partial"))
    }

    fn lock_path(&self, hash: &str) -> PathBuf {
        self.root.join(format!("{hash}.lock"))
    }

    /// The content hash of entry `hash` when it is complete (its marker names it).
    pub fn complete(&self, hash: &str) -> Option<Marker> {
        let m: Marker = kiln_core::artifact::load(&self.entry(hash)).ok()?;
        (m.key_hash == hash).then_some(m)
    }

    /// Takes entry `hash`'s lock, waiting while another process holds it (saying who,
    /// through `waiting`, once) for at most `timeout` (None: as long as it takes).
    pub fn lock(
        &self,
        hash: &str,
        holder: &Holder,
        timeout: Option<Duration>,
        waiting: &mut dyn FnMut(&str),
    ) -> Result<EntryLock, PipelineError> {
        let path = self.lock_path(hash);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        let started = Instant::now();
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    let who = read_holder(&mut file)
                        .map_or_else(|| "another kiln process".to_string(), |h| h.to_string());
                    if timeout.is_some_and(|t| started.elapsed() >= t) {
                        return Err(PipelineError::LockTimeout {
                            lock: path,
                            holder: who,
                            waited: started.elapsed(),
                        });
                    }
                    if !told {
                        waiting(&who);
                        told = true;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(TryLockError::Error(e)) => return Err(io(&path)(e)),
            }
        }
        let note = serde_json::to_vec(holder).unwrap_or_default();
        let wrote = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(&note))
            .and_then(|()| file.flush());
        wrote.map_err(io(&path))?;
        Ok(EntryLock { file })
    }

    /// Makes the partial folder of `hash` its complete entry (see the module docs) and
    /// returns its marker. Needs the entry's lock.
    pub fn commit(
        &self,
        hash: &str,
        key: &StageKey,
        _lock: &EntryLock,
    ) -> Result<Marker, PipelineError> {
        let partial = self.partial(hash);
        kiln_core::write_json(&partial.join(KEY_FILE), key)?;
        let content_hash = kiln_core::artifact::hash_dir_synced(&partial)?;
        kill_point("before-marker");
        let marker = Marker {
            key_hash: hash.to_string(),
            content_hash,
            created: now(),
        };
        kiln_core::artifact::save(&partial, &marker)?;
        sync_path(&partial.join(<Marker as kiln_core::Artifact>::FILE))?;
        sync_path(&partial)?;
        kill_point("before-rename");
        let done = self.entry(hash);
        if done.exists() {
            exchange(&partial, &done)?;
            kill_point("after-exchange");
            // the old entry, now under the partial name
            std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
        } else {
            std::fs::rename(&partial, &done).map_err(io(&done))?;
        }
        sync_path(&self.root)?;
        Ok(marker)
    }
}

/// Reads the holder note of a lock file held by another process.
fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// fsync of a file or folder (what the rename protocol needs to survive a power cut).
fn sync_path(p: &Path) -> Result<(), PipelineError> {
    File::open(p).and_then(|f| f.sync_all()).map_err(io(p))
}

/// Exchanges two folders atomically (`renameat2` with `RENAME_EXCHANGE`).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> Result<(), PipelineError> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE).map_err(|e| PipelineError::Io {
        path: b.to_path_buf(),
        source: e.into(),
    })
}

/// Elsewhere: the old entry moves aside first, then the new one takes its name (a kill
/// in between leaves no entry, which the next run rebuilds).
#[cfg(not(target_os = "linux"))]
fn exchange(a: &Path, b: &Path) -> Result<(), PipelineError> {
    let aside = a.with_extension("old");
    std::fs::rename(b, &aside).map_err(io(b))?;
    std::fs::rename(a, b).map_err(io(b))?;
    std::fs::rename(&aside, a).map_err(io(a))
}
