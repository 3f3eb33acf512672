//! Image folders: `dir/<class>/<file>` read into a frame of `label` (the class folder's
//! name) with the pixels held row-major beside it, as IDX files are. Every file is
//! decoded with the `image` crate under size limits (a file declaring a huge image is
//! refused from its header, before any pixel is decoded), converted to grey or RGB and
//! resized to one shape; its values stay 0–255, channel by channel, row by row.

use crate::error::{PolarsContext, PreprocessError, Result};
use crate::frame::{Dense, Frame};
use image::imageops::FilterType;
use kiln_core::artifact::profile::SkippedFile;
use polars::prelude::*;
use std::path::{Path, PathBuf};

/// The widest or tallest image kiln decodes, in pixels.
pub const MAX_SIDE: u32 = 16_384;

/// The most memory one decoded image may take.
pub const MAX_DECODED_BYTES: u64 = 256 << 20;

/// The largest side kiln resizes images to.
pub const MAX_RESIZE: usize = 4_096;

/// The class folders of `dir` and their files, both sorted by name (hidden entries,
/// starting with `.`, left out).
pub fn class_files(dir: &Path) -> Result<Vec<(String, Vec<PathBuf>)>> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PreprocessError::Io { path, source }
    };
    let entries = |d: &Path| -> Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .map_err(io(d))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !n.starts_with('.'))
            })
            .collect();
        v.sort();
        Ok(v)
    };
    let mut classes = Vec::new();
    for class_dir in entries(dir)?.into_iter().filter(|p| p.is_dir()) {
        let name = class_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let files: Vec<PathBuf> = entries(&class_dir)?
            .into_iter()
            .filter(|p| p.is_file())
            .collect();
        if files.is_empty() {
            return Err(PreprocessError::Invalid(format!(
                "{}: the class folder `{name}` holds no image files; add its images or remove the folder",
                class_dir.display()
            )));
        }
        classes.push((name, files));
    }
    if classes.is_empty() {
        return Err(PreprocessError::Invalid(format!(
            "{}: no class folders; an images source reads one sub-folder per class (`{}/<class>/<image>`)",
            dir.display(),
            dir.display()
        )));
    }
    Ok(classes)
}

/// One image file's values: decoded under the limits, converted to `channels` (1 grey,
/// 3 RGB), resized to `[height, width]` (bilinear), channel by channel, row by row.
pub fn read_image(path: &Path, size: [usize; 2], channels: usize) -> Result<Vec<f32>> {
    let io = |source| PreprocessError::Io {
        path: path.to_path_buf(),
        source,
    };
    let reader = image::ImageReader::open(path)
        .map_err(io)?
        .with_guessed_format()
        .map_err(io)?;
    decode(reader, size, channels)
        .map_err(|what| PreprocessError::Invalid(format!("{}: {what}", path.display())))
}

/// [`read_image`] of an image's bytes (an upload); the error says what is wrong with them.
pub fn decode_image(
    bytes: &[u8],
    size: [usize; 2],
    channels: usize,
) -> std::result::Result<Vec<f32>, String> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("not a readable image ({e})"))?;
    decode(reader, size, channels)
}

/// Decodes under the limits, converts and resizes (see [`read_image`]).
fn decode<R: std::io::BufRead + std::io::Seek>(
    mut reader: image::ImageReader<R>,
    [height, width]: [usize; 2],
    channels: usize,
) -> std::result::Result<Vec<f32>, String> {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => format!(
            "declares an image larger than kiln decodes (at most {MAX_SIDE} x {MAX_SIDE} pixels and {} MiB decoded); shrink it or remove it",
            MAX_DECODED_BYTES >> 20
        ),
        e => format!(
            "not a readable image ({e}); kiln reads PNG, JPEG, GIF and BMP files: remove or replace it"
        ),
    })?;
    let (w, h) = (width as u32, height as u32);
    let img = if img.width() == w && img.height() == h {
        img
    } else {
        img.resize_exact(w, h, FilterType::Triangle)
    };
    let plane = height * width;
    Ok(if channels == 3 {
        let rgb = img.to_rgb8();
        let mut out = vec![0.0f32; 3 * plane];
        for (i, p) in rgb.pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = f32::from(p.0[c]);
            }
        }
        out
    } else {
        img.to_luma8().pixels().map(|p| f32::from(p.0[0])).collect()
    })
}

/// The image folder `dir` as a frame: `label` (each image's class folder) and the
/// pixels (`pixel_0` …, channel by channel, row by row), one row per file in class and
/// name order; each row's site is its file.
/// With `skip_unreadable`, a file that cannot be read or decoded is left out, logged and
/// listed in the frame's `skipped`; a class left with no image is still an error.
pub(crate) fn read_images_frame(
    dir: &Path,
    image: [usize; 2],
    channels: usize,
    skip_unreadable: bool,
) -> Result<Frame> {
    if !matches!(channels, 1 | 3) {
        return Err(PreprocessError::Invalid(format!(
            "source.channels = {channels}: use 1 (grey) or 3 (RGB)"
        )));
    }
    if image.iter().any(|&s| s == 0 || s > MAX_RESIZE) {
        return Err(PreprocessError::Invalid(format!(
            "source.image = {image:?}: each side from 1 to {MAX_RESIZE} pixels"
        )));
    }
    let classes = class_files(dir)?;
    let n: usize = classes.iter().map(|(_, f)| f.len()).sum();
    let width = channels * image[0] * image[1];
    let mut raw = Vec::with_capacity(n * width);
    let mut labels = Vec::with_capacity(n);
    let mut files = Vec::with_capacity(n);
    let mut skipped = Vec::new();
    for (class, paths) in &classes {
        let before = labels.len();
        for p in paths {
            match read_image(p, image, channels) {
                Ok(px) => raw.extend(px),
                Err(e) if skip_unreadable => {
                    tracing::warn!("skipped (skip_unreadable): {e}");
                    skipped.push(SkippedFile {
                        file: p.display().to_string(),
                        reason: e.to_string(),
                    });
                    continue;
                }
                Err(e) => {
                    return Err(PreprocessError::Invalid(format!(
                        "{e}; or set `skip_unreadable = true` on the source to skip such files"
                    )));
                }
            }
            labels.push(class.clone());
            files.push(p.display().to_string());
        }
        if labels.len() == before {
            return Err(PreprocessError::Invalid(format!(
                "{}: none of the {} files of class `{class}` could be read (skip_unreadable skipped them all); fix or remove them",
                dir.join(class).display(),
                paths.len()
            )));
        }
    }
    let n = labels.len();
    let df = DataFrame::new(n, vec![Column::new("label".into(), labels)])
        .ctx(|| format!("{}: building the frame", dir.display()))?;
    let mut frame = Frame::new(df, dir);
    frame.files = files;
    frame.rows = (0..n).map(|i| (i as u32, 1)).collect();
    frame.skipped = skipped;
    frame.dense = Some(Dense {
        names: (0..width).map(|j| format!("pixel_{j}")).collect(),
        raw,
    });
    Ok(frame)
}
