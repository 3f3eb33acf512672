//! The spill of a streamed preprocess: the source's kept rows as read (raw values, text
//! cells, target text, and where each row came from), written once in chunks to a file
//! beside the artifact and read back chunk by chunk by every later pass, so the source
//! is parsed only once.

use crate::error::{PreprocessError, Result};
use kiln_core::TextColumn;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// One chunk of kept rows.
#[derive(Debug, Clone, Default)]
pub(crate) struct Chunk {
    /// Index of the source file (in the source's file order).
    pub file: u32,
    /// Per row: its row in that file (1-based, header excluded).
    pub rows: Vec<u64>,
    /// Row-major raw values of every feature column (NaN = missing; placeholders at text
    /// columns).
    pub values: Vec<f32>,
    /// The cells of the text columns, in the spill's text column order.
    pub text: Vec<TextColumn>,
    /// The target cells as text.
    pub target: TextColumn,
}

impl Chunk {
    pub(crate) fn n_rows(&self) -> usize {
        self.rows.len()
    }
}

/// Removes the file at its path when dropped (the spill, on every way out of a run).
pub(crate) struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        std::fs::remove_file(&self.0).ok();
    }
}

/// Writes chunks to the spill file.
pub(crate) struct Writer {
    path: PathBuf,
    out: BufWriter<File>,
}

fn io(path: &Path, source: std::io::Error) -> PreprocessError {
    PreprocessError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Writer {
    pub(crate) fn create(path: &Path) -> Result<Writer> {
        let f = File::create(path).map_err(|e| io(path, e))?;
        Ok(Writer {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(8 << 20, f),
        })
    }

    pub(crate) fn write(&mut self, c: &Chunk) -> Result<()> {
        let mut buf: Vec<u8> = Vec::with_capacity(c.values.len() * 4 + c.rows.len() * 8 + 64);
        buf.extend((c.rows.len() as u64).to_le_bytes());
        buf.extend(c.file.to_le_bytes());
        buf.extend((c.text.len() as u32).to_le_bytes());
        buf.extend((c.values.len() as u64).to_le_bytes());
        for r in &c.rows {
            buf.extend(r.to_le_bytes());
        }
        for v in &c.values {
            buf.extend(v.to_le_bytes());
        }
        for t in c.text.iter().chain(std::iter::once(&c.target)) {
            buf.extend((t.dict.len() as u32).to_le_bytes());
            for s in &t.dict {
                buf.extend((s.len() as u32).to_le_bytes());
                buf.extend(s.as_bytes());
            }
            for code in &t.codes {
                buf.extend(code.to_le_bytes());
            }
        }
        self.out.write_all(&buf).map_err(|e| io(&self.path, e))
    }

    pub(crate) fn finish(mut self) -> Result<PathBuf> {
        self.out.flush().map_err(|e| io(&self.path, e))?;
        Ok(self.path)
    }
}

/// Reads the spill file at `path`, calling `each` with every chunk in order.
pub(crate) fn for_each(path: &Path, mut each: impl FnMut(Chunk) -> Result<()>) -> Result<()> {
    let f = File::open(path).map_err(|e| io(path, e))?;
    let mut r = BufReader::with_capacity(8 << 20, f);
    let corrupt = || {
        PreprocessError::Invalid(format!(
            "{}: the spill of this preprocess run is cut short; run it again",
            path.display()
        ))
    };
    loop {
        let mut head = [0u8; 24];
        match r.read_exact(&mut head[..1]) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(io(path, e)),
        }
        r.read_exact(&mut head[1..]).map_err(|_| corrupt())?;
        let word = |a: usize, b: usize| -> u64 {
            let mut x = [0u8; 8];
            x[..b - a].copy_from_slice(&head[a..b]);
            u64::from_le_bytes(x)
        };
        let n = word(0, 8) as usize;
        let file = word(8, 12) as u32;
        let n_text = word(12, 16) as usize;
        let n_values = word(16, 24) as usize;
        let mut bytes = vec![0u8; n * 8 + n_values * 4];
        r.read_exact(&mut bytes).map_err(|_| corrupt())?;
        let (rows_b, values_b) = bytes.split_at(n * 8);
        let rows = rows_b
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
            .collect();
        let values = values_b
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap_or_default()))
            .collect();
        let read_u32 = |r: &mut BufReader<File>| -> Result<u32> {
            let mut x = [0u8; 4];
            r.read_exact(&mut x).map_err(|_| corrupt())?;
            Ok(u32::from_le_bytes(x))
        };
        let mut columns = Vec::with_capacity(n_text + 1);
        for _ in 0..=n_text {
            let d = read_u32(&mut r)? as usize;
            let mut dict = Vec::with_capacity(d);
            for _ in 0..d {
                let len = read_u32(&mut r)? as usize;
                let mut s = vec![0u8; len];
                r.read_exact(&mut s).map_err(|_| corrupt())?;
                dict.push(String::from_utf8(s).map_err(|_| corrupt())?);
            }
            let mut codes_b = vec![0u8; n * 4];
            r.read_exact(&mut codes_b).map_err(|_| corrupt())?;
            let codes = codes_b
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()))
                .collect();
            columns.push(TextColumn { dict, codes });
        }
        let target = columns.pop().unwrap_or_default();
        each(Chunk {
            file,
            rows,
            values,
            text: columns,
            target,
        })?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spill");
        let a = Chunk {
            file: 1,
            rows: vec![3, 4, 9],
            values: vec![1.0, f32::NAN, 2.5, 0.0, -1.0, 7.0],
            text: vec![TextColumn::from_cells([Some("x"), None, Some("ünï")])],
            target: TextColumn::from_cells([Some("a"), Some("b"), Some("a")]),
        };
        let b = Chunk {
            file: 0,
            rows: vec![1],
            values: vec![5.0, 6.0],
            text: vec![TextColumn::from_cells([Some("")])],
            target: TextColumn::from_cells([Some("c")]),
        };
        let mut w = Writer::create(&path).unwrap();
        w.write(&a).unwrap();
        w.write(&b).unwrap();
        w.finish().unwrap();
        let mut back = Vec::new();
        for_each(&path, |c| {
            back.push(c);
            Ok(())
        })
        .unwrap();
        assert_eq!(back.len(), 2);
        for (x, y) in back.iter().zip([&a, &b]) {
            assert_eq!(
                (x.file, &x.rows, &x.text, &x.target),
                (y.file, &y.rows, &y.text, &y.target)
            );
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&x.values), bits(&y.values));
        }
    }
}
