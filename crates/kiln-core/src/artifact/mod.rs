//! kiln's artifacts on disk: one serde type per JSON file a stage writes (the boundary
//! every reader goes through: summary tables, the model card, `kiln inspect`, a UI, a
//! user's own program), each saved with its `kind` and `format_version`, plus the file
//! helpers they share (atomic writes, content hashes).
//!
//! A reader loads an artifact with [`load`], which refuses a file of another kind or of
//! a newer format (naming both), and reads files from before formats were recorded
//! (format 0) where their fields still fit.

mod io;

pub mod bundle;
pub mod candidates;
pub mod history;
pub mod metrics;
pub mod parity;
pub mod profile;
pub mod progress;
pub mod run;
pub mod sweep;
pub mod verdict;

pub use io::{
    atomic_write, atomic_write_with, hash_bytes, hash_dir, hash_dir_synced, hash_file, read_json,
    write_json,
};

use crate::error::{CoreError, Result};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::path::Path;

/// A JSON artifact: its kind, file name and format.
pub trait Artifact: Serialize + DeserializeOwned {
    /// `kind` in the file, e.g. `kiln.history`.
    const KIND: &'static str;
    /// The file name in a stage's folder, e.g. `history.json`.
    const FILE: &'static str;
    /// The format this kiln writes, and the newest it reads.
    const FORMAT: u32 = 1;
}

/// What [`save`] writes: the kind and format first, then the artifact's own fields.
#[derive(Serialize)]
struct Envelope<'a, T> {
    kind: &'static str,
    format_version: u32,
    #[serde(flatten)]
    body: &'a T,
}

/// The kind and format of a file, read before its body.
#[derive(Deserialize)]
struct Header {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    format_version: u32,
}

/// Writes `value` as `dir/<T::FILE>` (atomically), with its kind and format.
pub fn save<T: Artifact>(dir: &Path, value: &T) -> Result<()> {
    write_json(
        &dir.join(T::FILE),
        &Envelope {
            kind: T::KIND,
            format_version: T::FORMAT,
            body: value,
        },
    )
}

/// Reads `dir/<T::FILE>`: see [`load_file`].
pub fn load<T: Artifact>(dir: &Path) -> Result<T> {
    load_file(&dir.join(T::FILE))
}

/// Reads an artifact file of type `T`. A file of another kind, or of a format newer
/// than this kiln reads, is an error that says which and what to do.
pub fn load_file<T: Artifact>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| CoreError::io(path, e))?;
    let json = |source| CoreError::Json {
        path: path.to_path_buf(),
        source,
    };
    let header: Header = serde_json::from_slice(&bytes).map_err(json)?;
    if let Some(kind) = header.kind.filter(|k| k != T::KIND) {
        return Err(CoreError::Format {
            path: path.to_path_buf(),
            message: format!("holds a `{kind}`, not a `{}`", T::KIND),
        });
    }
    if header.format_version > T::FORMAT {
        return Err(CoreError::Format {
            path: path.to_path_buf(),
            message: format!(
                "is format {} of `{}`, written by a newer kiln; this kiln reads up to format {}: update kiln, or rerun the stage that wrote it with this one",
                header.format_version,
                T::KIND,
                T::FORMAT
            ),
        });
    }
    serde_json::from_slice(&bytes).map_err(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Note {
        text: String,
        #[serde(default)]
        count: usize,
    }

    impl Artifact for Note {
        const KIND: &'static str = "kiln.note";
        const FILE: &'static str = "note.json";
        const FORMAT: u32 = 2;
    }

    #[test]
    fn artifacts_carry_kind_and_format_and_refuse_newer_or_other_files() {
        let dir = tempfile_dir("kind");
        let note = Note {
            text: "hi".into(),
            count: 3,
        };
        save(&dir, &note).unwrap();
        let text = std::fs::read_to_string(dir.join("note.json")).unwrap();
        assert!(
            text.starts_with(
                "{\n  \"kind\": \"kiln.note\",\n  \"format_version\": 2,\n  \"text\": \"hi\""
            ),
            "{text}"
        );
        assert_eq!(load::<Note>(&dir).unwrap(), note);
        // a file from before formats were recorded still reads
        std::fs::write(dir.join("note.json"), r#"{"text": "old"}"#).unwrap();
        assert_eq!(load::<Note>(&dir).unwrap().text, "old");
        // a newer format names both versions and what to do
        std::fs::write(
            dir.join("note.json"),
            r#"{"kind": "kiln.note", "format_version": 3, "text": "new"}"#,
        )
        .unwrap();
        let e = load::<Note>(&dir).unwrap_err().to_string();
        assert!(e.contains("is format 3 of `kiln.note`, written by a newer kiln; this kiln reads up to format 2"), "{e}");
        // another kind of file under this name
        std::fs::write(
            dir.join("note.json"),
            r#"{"kind": "kiln.history", "text": "x"}"#,
        )
        .unwrap();
        let e = load::<Note>(&dir).unwrap_err().to_string();
        assert!(
            e.contains("holds a `kiln.history`, not a `kiln.note`"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("kiln-core-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
