//! Where a preprocess stage's data comes from (`source` in a pipeline file): CSV, Parquet
//! or Arrow IPC files (globs included), MNIST IDX files, or folders of images, each with
//! its options and the paths it reads.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A data source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "format", rename_all = "lowercase", deny_unknown_fields)]
pub enum Source {
    /// A CSV file (`path`), or separate `train` and `test` files. Every path of a csv,
    /// parquet or arrow source may be a glob (`data/part-*.csv`): the matching files, in
    /// name order, are read as one table.
    Csv {
        /// The one file to split.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<PathBuf>,
        /// Training file (with `test`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        train: Option<PathBuf>,
        /// Test file (with `train`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        test: Option<PathBuf>,
        /// Field delimiter (default `,`).
        #[serde(default = "default_delimiter")]
        delimiter: char,
        /// Whether the first line holds column names (default true).
        #[serde(default = "default_true")]
        has_header: bool,
        /// Cell values read as null (e.g. `["NA", ""]`).
        #[serde(default)]
        null_values: Vec<String>,
    },
    /// Parquet (`path`, or `train` and `test`), read with polars (missing cells are
    /// nulls).
    Parquet {
        /// The one file to split.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<PathBuf>,
        /// Training file (with `test`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        train: Option<PathBuf>,
        /// Test file (with `train`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        test: Option<PathBuf>,
    },
    /// Arrow IPC (`.arrow` / `.feather`; `path`, or `train` and `test`), read with polars.
    Arrow {
        /// The one file to split.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<PathBuf>,
        /// Training file (with `test`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        train: Option<PathBuf>,
        /// Test file (with `train`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        test: Option<PathBuf>,
    },
    /// MNIST-style IDX files: `train` (and optional `test`) are prefixes such as
    /// `fixtures/mnist/train`, completed with `-images-idx3-ubyte[.gz]` and
    /// `-labels-idx1-ubyte[.gz]`.
    Idx {
        /// Prefix of the training files.
        train: PathBuf,
        /// Prefix of the test files.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        test: Option<PathBuf>,
    },
    /// Image files, one sub-folder per class (`path/<class>/<image>`; `path`, or `train`
    /// and `test` folders laid out alike), read as the target `label` (the folder's
    /// name) and pixel features `pixel_0` … (0–255, channel by channel, row by row).
    /// PNG, JPEG, GIF and BMP; each image converted to `channels` and resized to
    /// `image`. A corrupt file, one declaring an image over 16384 x 16384 pixels (refused
    /// before decoding) or an empty class folder is an error naming it; with
    /// `skip_unreadable = true` a file that cannot be read or decoded is skipped instead,
    /// logged, and counted in profile.json (`dropped_rows.unreadable_files`, with each
    /// file and why in `skipped_files`).
    Images {
        /// The one folder to split.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<PathBuf>,
        /// Training folder (with `test`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        train: Option<PathBuf>,
        /// Test folder (with `train`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        test: Option<PathBuf>,
        /// `[height, width]` every image is resized to (bilinear), each side 1 to 4096.
        image: [usize; 2],
        /// 1 (grey, the default) or 3 (red, green, blue).
        #[serde(default = "one_channel")]
        channels: usize,
        /// Skip (and count) files that cannot be read or decoded instead of failing
        /// (default false).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        skip_unreadable: bool,
    },
}

fn one_channel() -> usize {
    1
}

fn default_delimiter() -> char {
    ','
}
pub(crate) fn default_true() -> bool {
    true
}

impl Source {
    /// `[height, width]` an images source resizes to (None for tables and IDX files,
    /// whose layout comes from their header).
    pub fn image_size(&self) -> Option<[usize; 2]> {
        match self {
            Source::Images { image, .. } => Some(*image),
            _ => None,
        }
    }

    /// The format's name as written in `format = "…"`.
    pub fn format(&self) -> &'static str {
        match self {
            Source::Csv { .. } => "csv",
            Source::Parquet { .. } => "parquet",
            Source::Arrow { .. } => "arrow",
            Source::Idx { .. } => "idx",
            Source::Images { .. } => "images",
        }
    }

    /// The paths the source names, with their keys (`path`, `train`, `test`).
    pub fn named_paths(&self) -> Vec<(&'static str, &std::path::Path)> {
        let (path, train, test) = match self {
            Source::Csv {
                path, train, test, ..
            }
            | Source::Parquet { path, train, test }
            | Source::Arrow { path, train, test }
            | Source::Images {
                path, train, test, ..
            } => (path.as_deref(), train.as_deref(), test.as_deref()),
            Source::Idx { train, test } => (None, Some(train.as_path()), test.as_deref()),
        };
        [("path", path), ("train", train), ("test", test)]
            .into_iter()
            .filter_map(|(k, p)| Some((k, p?)))
            .collect()
    }

    /// Every file path the source names (to resolve or hash them).
    pub fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        match self {
            Source::Csv {
                path, train, test, ..
            }
            | Source::Parquet { path, train, test }
            | Source::Arrow { path, train, test }
            | Source::Images {
                path, train, test, ..
            } => [path, train, test]
                .into_iter()
                .filter_map(|p| p.as_mut())
                .collect(),
            Source::Idx { train, test } => {
                let mut v = vec![train];
                v.extend(test.as_mut());
                v
            }
        }
    }
}
