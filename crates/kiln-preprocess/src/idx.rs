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

/// The most values an IDX file may hold (4 GiB of bytes); the most values per row
/// (every dimension after the first, multiplied: 16M).
pub const MAX_VALUES: usize = 1 << 32;
/// See [`MAX_VALUES`].
pub const MAX_ROW: usize = 1 << 24;

/// Reads an IDX file of unsigned bytes; `.gz` files are decompressed, never past what
/// the header announces (a small file claiming a huge array is refused before anything
/// that size is allocated).
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let raw = std::fs::read(path).map_err(|source| PreprocessError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |message: String| PreprocessError::Idx {
        path: path.to_path_buf(),
        message,
    };
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let corrupt = |e: std::io::Error| {
            bad(format!(
                "gzip data is corrupt ({e}); download the file again"
            ))
        };
        let mut gz = flate2::read::GzDecoder::new(&raw[..]);
        // the header (at most 4 + 4 × 4 bytes), then exactly what it announces, plus one
        // byte to notice a longer file
        let mut head = Vec::new();
        (&mut gz).take(4).read_to_end(&mut head).map_err(corrupt)?;
        let rank = head.get(3).map_or(0, |&r| usize::from(r));
        (&mut gz)
            .take(4 * rank.min(4) as u64)
            .read_to_end(&mut head)
            .map_err(corrupt)?;
        let announced = header(&head).map_err(bad)?.1;
        // grown as data arrives, never reserved from the header: a small file announcing
        // a huge array costs only what it really holds
        let mut out = head;
        gz.take(announced as u64 + 1)
            .read_to_end(&mut out)
            .map_err(corrupt)?;
        out
    } else {
        raw
    };
    parse_idx(&bytes).map_err(bad)
}

/// The dimensions an IDX header announces and the number of values they make, checked:
/// no overflow, at most [`MAX_VALUES`] values and [`MAX_ROW`] per row.
fn header(bytes: &[u8]) -> std::result::Result<(Vec<usize>, usize), String> {
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
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let row = dims[1..]
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&r| r <= MAX_ROW);
    let Some(row) = row else {
        return Err(format!(
            "header announces rows of {:?} values, more than kiln reads ({MAX_ROW} per row); the file is corrupt or not MNIST-like",
            &dims[1..]
        ));
    };
    let n = dims[0].checked_mul(row).filter(|&n| n <= MAX_VALUES);
    let Some(n) = n else {
        return Err(format!(
            "header announces {:?}: more than the {MAX_VALUES} values kiln reads from one file",
            dims
        ));
    };
    Ok((dims, n))
}

/// Parses IDX bytes (already decompressed).
pub fn parse_idx(bytes: &[u8]) -> std::result::Result<IdxArray, String> {
    let (dims, n) = header(bytes)?;
    let payload = &bytes[4 + 4 * dims.len()..];
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

    /// Sizes from the header are checked before anything is allocated: dimensions whose
    /// product overflows (or wraps to 0 with an empty payload), rows wider than kiln
    /// reads, and a small gzip file announcing gigabytes.
    #[test]
    fn huge_or_overflowing_headers_are_refused_before_allocating() {
        let big = 1u32 << 31;
        for dims in [
            &[4, big, big][..],
            &[0, big, big],
            &[1, 1 << 25],
            &[u32::MAX, 65536],
        ] {
            let e = parse_idx(&header([0, 0, 8, dims.len() as u8], dims)).unwrap_err();
            assert!(e.contains("header announces"), "{dims:?}: {e}");
            assert!(e.contains("kiln reads"), "{dims:?}: {e}");
        }
        // 2^31 values claimed by a few bytes of gzip: refused without reading them
        let dir = std::env::temp_dir().join(format!("kiln-idx-bomb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bomb = dir.join("bomb.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &header([0, 0, 8, 3], &[1 << 20, 1 << 10, 1 << 10]))
            .unwrap();
        std::io::Write::write_all(&mut gz, &vec![0u8; 1 << 20]).unwrap();
        std::fs::write(&bomb, gz.finish().unwrap()).unwrap();
        let e = read_idx(&bomb).unwrap_err().to_string();
        assert!(
            e.contains("bomb.gz") && e.contains("header announces"),
            "{e}"
        );
        // a small header claiming within bounds but a short payload: named as truncated
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &header([0, 0, 8, 2], &[1000, 1000])).unwrap();
        std::io::Write::write_all(&mut gz, &[7u8; 10]).unwrap();
        std::fs::write(&bomb, gz.finish().unwrap()).unwrap();
        let e = read_idx(&bomb).unwrap_err().to_string();
        assert!(
            e.contains("announces 1000000 values") && e.contains("holds 10"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
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
