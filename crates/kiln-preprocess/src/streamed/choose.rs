//! Whether a preprocess stage streams its table: `load`, the source's size against
//! `memory_mb`, and what a streamed run cannot do (each said in the error or warning).

use crate::config::{Config, Load, Source, Step};
use crate::error::{PreprocessError, Result};
use crate::load::expand;
use crate::stream::CsvFormat;
use std::path::PathBuf;

fn invalid(m: String) -> PreprocessError {
    PreprocessError::Invalid(m)
}

/// The source's table files and how a CSV is read, or why this config cannot stream.
pub(crate) fn streamable(
    config: &Config,
) -> std::result::Result<(Vec<PathBuf>, CsvFormat), String> {
    let (path, csv) = match &config.source {
        Source::Csv {
            path: Some(p),
            train: None,
            test: None,
            delimiter,
            has_header: true,
            null_values,
        } => (
            p,
            CsvFormat {
                delimiter: u8::try_from(*delimiter).map_err(|_| "a non-ASCII delimiter")?,
                null_values: null_values.clone(),
            },
        ),
        Source::Csv {
            has_header: false, ..
        } => return Err("a CSV source without a header row".into()),
        Source::Parquet {
            path: Some(p),
            train: None,
            test: None,
        }
        | Source::Arrow {
            path: Some(p),
            train: None,
            test: None,
        } => (p, CsvFormat::default()),
        Source::Idx { .. } | Source::Images { .. } => {
            return Err("an IDX or image source (they are read whole)".into());
        }
        _ => return Err("separate train and test files".into()),
    };
    if !config.augment.is_off() {
        return Err("augment".into());
    }
    if let Some(s) = &config.steps
        && s.iter().any(|s| matches!(s, Step::Dedupe {}))
    {
        return Err("a dedupe step (it remembers every row)".into());
    }
    let files = expand(path).map_err(|e| e.to_string())?;
    Ok((files, csv))
}

/// Whether `config` streams its table: `load = "stream"`, or `auto` with source files
/// above a quarter of `memory_mb` (a config that cannot stream stays in memory, with a
/// warning, unless `load = "stream"` asks for it: then that is an error).
pub fn streams(config: &Config) -> Result<bool> {
    let why_not = streamable(config).err();
    match (config.load, why_not) {
        (Load::Memory, _) => Ok(false),
        (Load::Stream, None) => Ok(true),
        (Load::Stream, Some(why)) => Err(invalid(format!(
            "load = \"stream\": this source cannot stream: {why}; set load = \"memory\""
        ))),
        (Load::Auto, why_not) => {
            let bytes: u64 = crate::source_files(&config.source)?
                .iter()
                .filter_map(|f| std::fs::metadata(f).ok())
                .map(|m| m.len())
                .sum();
            let large = bytes > (config.memory_mb << 20) / 4;
            match why_not {
                Some(why) if large => {
                    tracing::warn!(
                        bytes,
                        "the source is large but cannot stream ({why}); reading it into memory"
                    );
                    Ok(false)
                }
                _ => Ok(large),
            }
        }
    }
}
