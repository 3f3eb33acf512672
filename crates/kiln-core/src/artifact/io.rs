//! Files on disk: atomic writes (temp file + rename), JSON helpers and content hashes.

use crate::error::{CoreError, Result};
use serde::{Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// crash never leaves a partial file under the final name.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write_with(path, |f| {
        std::io::Write::write_all(f, bytes).map_err(|e| CoreError::io(path, e))
    })
}

/// Writes `path` atomically with `write`, which gets a new temporary file beside it; the
/// file is renamed into place when `write` succeeds and removed when it fails.
pub fn atomic_write_with(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> Result<()>,
) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| CoreError::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| CoreError::io(&tmp, e))?;
    if let Err(e) = write(&mut f) {
        drop(f);
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| CoreError::io(path, e))
}

/// Serialises `value` as pretty JSON and writes it atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(value).map_err(|source| CoreError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    text.push(b'\n');
    atomic_write(path, &text)
}

/// Reads and parses a JSON file.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| CoreError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|source| CoreError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Hex SHA-256 of a byte slice.
pub fn hash_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Hex BLAKE3 of a file's contents, read in 1 MiB pieces (a content hash for the cache:
/// BLAKE3 runs several times faster than SHA-256 here, and the source files and
/// artifacts it reads are hundreds of MB).
pub fn hash_file(path: &Path) -> Result<String> {
    let file = std::fs::File::open(path).map_err(|e| CoreError::io(path, e))?;
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(std::io::BufReader::with_capacity(1 << 20, file))
        .map_err(|e| CoreError::io(path, e))?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// Hex BLAKE3 over every regular file of a folder: its sorted relative names, each with
/// its size and [`hash_file`], recursively. The files are hashed in parallel (one
/// thread per core). Hidden files (names starting with `.`) and measurements
/// (`*.timings.json`, which differ from run to run) are skipped.
pub fn hash_dir(dir: &Path) -> Result<String> {
    hash_dir_with(dir, false)
}

/// [`hash_dir`], also fsyncing every file it hashes (hidden ones and timings too), so
/// the folder's content is on disk before a marker that vouches for it.
pub fn hash_dir_synced(dir: &Path) -> Result<String> {
    hash_dir_with(dir, true)
}

fn hash_dir_with(dir: &Path, sync: bool) -> Result<String> {
    if sync {
        let mut all = Vec::new();
        collect_all(dir, &mut all)?;
        for f in all {
            std::fs::File::open(&f)
                .and_then(|h| h.sync_all())
                .map_err(|e| CoreError::io(&f, e))?;
        }
    }
    let mut files = Vec::new();
    collect_files(dir, dir, &mut files)?;
    files.sort();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(files.len())
        .max(1);
    // file i goes to thread i % threads; each thread returns its (index, size, hash)
    let per_thread: Vec<Result<Vec<(usize, u64, String)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let files = &files;
                s.spawn(move || {
                    (t..files.len())
                        .step_by(threads)
                        .map(|i| {
                            let path = dir.join(&files[i]);
                            let len = std::fs::metadata(&path)
                                .map_err(|e| CoreError::io(&path, e))?
                                .len();
                            Ok((i, len, hash_file(&path)?))
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(CoreError::Invalid("a hashing thread panicked".into())))
            })
            .collect()
    });
    let mut hashes = vec![(0u64, String::new()); files.len()];
    for part in per_thread {
        for (i, len, h) in part? {
            hashes[i] = (len, h);
        }
    }
    let mut hasher = blake3::Hasher::new();
    for (rel, (len, h)) in files.iter().zip(&hashes) {
        hasher.update(rel.as_bytes());
        hasher.update(&[0]);
        hasher.update(&len.to_le_bytes());
        hasher.update(h.as_bytes());
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// Every file under `dir`, hidden ones too.
fn collect_all(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| CoreError::io(dir, e))? {
        let path = entry.map_err(|e| CoreError::io(dir, e))?.path();
        if path.is_dir() {
            collect_all(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| CoreError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| CoreError::io(dir, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.ends_with(".timings.json") {
            continue;
        }
        if path.is_dir() {
            collect_files(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_leaves_no_temp_and_hash_is_stable() {
        let dir = std::env::temp_dir().join(format!("kiln-core-art-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        atomic_write(&dir.join("a.txt"), b"hello").unwrap();
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1);
        assert_eq!(
            hash_file(&dir.join("a.txt")).unwrap(),
            // BLAKE3 of "hello" (b3sum)
            "ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f"
        );
        let h1 = hash_dir(&dir).unwrap();
        atomic_write(&dir.join("b.txt"), b"x").unwrap();
        let h2 = hash_dir(&dir).unwrap();
        assert_ne!(h1, h2);
        // measurements and hidden files do not count
        atomic_write(&dir.join("latency.timings.json"), b"[1.5]").unwrap();
        atomic_write(&dir.join(".lock"), b"1").unwrap();
        assert_eq!(h2, hash_dir(&dir).unwrap());
        // a file's name counts, and bytes moved from one file to the next do too
        std::fs::rename(dir.join("b.txt"), dir.join("c.txt")).unwrap();
        let h3 = hash_dir(&dir).unwrap();
        assert_ne!(h2, h3);
        atomic_write(&dir.join("a.txt"), b"hellox").unwrap();
        atomic_write(&dir.join("c.txt"), b"").unwrap();
        assert_ne!(h3, hash_dir(&dir).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
