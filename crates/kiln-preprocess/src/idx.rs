//! Reader for the IDX format of MNIST (big-endian header, u8 payload), gzip or raw.

use crate::error::{PreprocessError, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The payload and dimensions of one IDX file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// Dimensions from the header (e.g. `[60000, 28, 28]`).
    pub dims: Vec<usize>,
    /// The u8 values.
    pub data: Vec<u8>,
}

/// Reads an IDX file of unsigned bytes; `.gz` files are decompressed.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let raw = std::fs::read(path).map_err(|source| PreprocessError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| PreprocessError::Idx {
                path: path.to_path_buf(),
                message: format!("gzip data is corrupt ({e}); download the file again"),
            })?;
        out
    } else {
        raw
    };
    parse_idx(&bytes).map_err(|message| PreprocessError::Idx {
        path: path.to_path_buf(),
        message,
    })
}

/// Parses IDX bytes (already decompressed).
pub fn parse_idx(bytes: &[u8]) -> std::result::Result<IdxArray, String> {
    if bytes.len() < 4 {
        return Err(format!(
            "file holds {} bytes, too short for an IDX header",
            bytes.len()
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(format!(
            "bad IDX magic {:02x}{:02x}{:02x}{:02x}: expected 0000 08 0n (not an IDX file?)",
            bytes[0], bytes[1], bytes[2], bytes[3]
        ));
    }
    if bytes[2] != 0x08 {
        return Err(format!(
            "IDX element type 0x{:02x} is not supported; kiln reads unsigned bytes (0x08)",
            bytes[2]
        ));
    }
    let rank = bytes[3] as usize;
    if rank == 0 || rank > 4 {
        return Err(format!(
            "IDX rank {rank} is not supported (expected 1 to 4)"
        ));
    }
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err("IDX header is truncated".into());
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| {
            u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap_or([0; 4])) as usize
        })
        .collect();
    let n: usize = dims.iter().product();
    let payload = &bytes[header..];
    if payload.len() != n {
        return Err(format!(
            "header announces {} values ({:?}) but the file holds {}; the file is truncated or corrupt",
            n,
            dims,
            payload.len()
        ));
    }
    Ok(IdxArray {
        dims,
        data: payload.to_vec(),
    })
}

/// The image and label files for an IDX prefix such as `fixtures/mnist/train`:
/// `<prefix>-images-idx3-ubyte[.gz]` and `<prefix>-labels-idx1-ubyte[.gz]`.
pub fn idx_pair(prefix: &Path) -> Result<(PathBuf, PathBuf)> {
    let find = |kind: &str| -> Result<PathBuf> {
        let base = format!("{}-{kind}-ubyte", prefix.display());
        for cand in [format!("{base}.gz"), base.clone()] {
            let p = PathBuf::from(&cand);
            if p.is_file() {
                return Ok(p);
            }
        }
        Err(PreprocessError::Io {
            path: PathBuf::from(format!("{base}.gz")),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "IDX file not found (also tried without .gz)",
            ),
        })
    };
    Ok((find("images-idx3")?, find("labels-idx1")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(magic: [u8; 4], dims: &[u32]) -> Vec<u8> {
        let mut v = magic.to_vec();
        for d in dims {
            v.extend(d.to_be_bytes());
        }
        v
    }

    #[test]
    fn parses_images_and_labels() {
        let mut b = header([0, 0, 8, 3], &[2, 2, 3]);
        b.extend(0u8..12);
        let a = parse_idx(&b).unwrap();
        assert_eq!(a.dims, vec![2, 2, 3]);
        assert_eq!(a.data, (0u8..12).collect::<Vec<_>>());
        let mut l = header([0, 0, 8, 1], &[3]);
        l.extend([7, 1, 9]);
        assert_eq!(parse_idx(&l).unwrap().data, vec![7, 1, 9]);
    }

    #[test]
    fn corrupt_headers_are_explained() {
        assert!(parse_idx(&[1, 2]).unwrap_err().contains("too short"));
        assert!(
            parse_idx(&header([0x1f, 0x8b, 8, 3], &[1, 1, 1]))
                .unwrap_err()
                .contains("bad IDX magic")
        );
        assert!(
            parse_idx(&header([0, 0, 0x0d, 1], &[1]))
                .unwrap_err()
                .contains("element type 0x0d")
        );
        let mut short = header([0, 0, 8, 3], &[10, 28, 28]);
        short.extend([0u8; 100]);
        assert!(
            parse_idx(&short)
                .unwrap_err()
                .contains("header announces 7840 values")
        );
    }

    #[test]
    fn reads_the_mnist_fixture_and_rejects_a_truncated_gzip() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/mnist");
        let (img, lab) = idx_pair(&root.join("t10k")).unwrap();
        let labels = read_idx(&lab).unwrap();
        assert_eq!(labels.dims, vec![10_000]);
        assert_eq!(&labels.data[..5], &[7, 2, 1, 0, 4]);
        let bytes = std::fs::read(&img).unwrap();
        let dir = std::env::temp_dir().join(format!("kiln-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cut = dir.join("cut-images-idx3-ubyte.gz");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let e = read_idx(&cut).unwrap_err().to_string();
        assert!(
            e.contains("cut-images-idx3-ubyte.gz") && e.contains("corrupt"),
            "{e}"
        );
        assert!(
            idx_pair(&dir.join("nope"))
                .unwrap_err()
                .to_string()
                .contains("nope-images-idx3-ubyte.gz")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
