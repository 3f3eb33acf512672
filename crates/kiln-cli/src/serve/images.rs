//! Image request bodies for a model trained on images: `{"images": ["<base64>", ...]}`
//! or a `multipart/form-data` upload with one image per part, each decoded under the
//! decompression-bomb limits, converted and resized to the schema's image shape as
//! training read its files, then the fitted preprocessing applied.

use super::parse::{Batch, Shape};
use super::routes::ApiError;
use axum::http::StatusCode;
use base64::Engine as _;
use kiln_core::{ImageShape, Rows};
use serde_json::Value;

/// One image of a request: where it came from (for errors) and its encoded bytes.
pub(super) struct Upload {
    pub(super) name: String,
    pub(super) bytes: Vec<u8>,
}

/// The schema's image shape, or why the model takes no images.
fn image_shape(shape: &Shape) -> Result<ImageShape, ApiError> {
    shape.schema.image.ok_or_else(|| {
        ApiError::invalid(
            "this model was not trained on images; send `rows` or `instances` of its input columns",
        )
    })
}

/// `{"images": [...]}`: each entry base64 (standard alphabet, padding optional, a
/// `data:image/...;base64,` prefix allowed).
pub(super) fn from_json(shape: &Shape, images: &Value) -> Result<Vec<Upload>, ApiError> {
    image_shape(shape)?;
    let Some(items) = images.as_array() else {
        return Err(ApiError::invalid(
            "`images` must be an array of base64-encoded image files",
        ));
    };
    too_many(shape, items.len())?;
    let engine = base64::engine::general_purpose::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let name = format!("images[{i}]");
            let Some(text) = v.as_str() else {
                return Err(ApiError::invalid(format!(
                    "{name}: expected a base64 string, got {}",
                    kind(v)
                )));
            };
            let data = text.split_once(";base64,").map_or(text, |(_, d)| d);
            let bytes = engine.decode(data.trim()).map_err(|e| {
                ApiError::invalid(format!(
                    "{name}: not base64 ({e}); send each image file base64-encoded"
                ))
            })?;
            Ok(Upload { name, bytes })
        })
        .collect()
}

/// The parts of a `multipart/form-data` body, each one image (its field and file name in
/// errors).
pub(super) async fn from_multipart(
    shape: &Shape,
    content_type: &str,
    body: axum::body::Bytes,
) -> Result<Vec<Upload>, ApiError> {
    image_shape(shape)?;
    let boundary = multer::parse_boundary(content_type).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_multipart",
            format!("multipart/form-data without a usable boundary: {e}"),
        )
    })?;
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut parts = multer::Multipart::new(stream, boundary);
    let mut out = Vec::new();
    let malformed = |e: multer::Error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_multipart",
            format!("malformed multipart body: {e}"),
        )
    };
    while let Some(field) = parts.next_field().await.map_err(malformed)? {
        let name = match (field.name(), field.file_name()) {
            (Some(n), Some(f)) => format!("part `{n}` ({f})"),
            (Some(n), None) => format!("part `{n}`"),
            (None, Some(f)) => format!("part {} ({f})", out.len()),
            (None, None) => format!("part {}", out.len()),
        };
        let bytes = field.bytes().await.map_err(malformed)?.to_vec();
        out.push(Upload { name, bytes });
        too_many(shape, out.len())?;
    }
    Ok(out)
}

/// More images than `--max-batch` is a 413, as for rows.
fn too_many(shape: &Shape, n: usize) -> Result<(), ApiError> {
    if n > shape.max_batch {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_rows",
            format!(
                "{n} images in one request; at most {} (--max-batch)",
                shape.max_batch
            ),
        ));
    }
    Ok(())
}

/// The uploads decoded (CPU-bound: the handlers run it on the blocking pool), their
/// pixels put through the fitted preprocessing.
pub(super) fn prepare(shape: &Shape, uploads: &[Upload]) -> Result<Batch, ApiError> {
    let image = image_shape(shape)?;
    let mut values = Vec::with_capacity(uploads.len() * image.len());
    for u in uploads {
        let pixels = kiln_preprocess::images::decode_image(
            &u.bytes,
            [image.height, image.width],
            image.channels,
        )
        .map_err(|e| ApiError::invalid(format!("{}: {e}", u.name)))?;
        values.extend(pixels);
    }
    shape.features(Rows {
        n_rows: uploads.len(),
        values,
        text: Vec::new(),
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
