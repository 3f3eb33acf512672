//! A CSV file read in blocks cut at record boundaries, each parsed by polars' CSV reader
//! on its own (in parallel over the block), so memory stays at a few blocks whatever the
//! file's size. polars' streaming engine maps a local file into memory whole, and every
//! page it has read counts in the process's resident memory until the scan ends: a
//! 4.7 GB table would show as 4.7 GB.
//!
//! A record boundary is a line break outside quotes (RFC 4180: a quoted field may hold
//! line breaks, and `""` is a quote inside one, which toggles the state twice).

use polars::prelude::*;
use std::io::Read;
use std::path::Path;

/// Bytes read at a time (a block holds at least one whole record, so a longer record
/// makes its block longer).
pub(crate) const BLOCK_BYTES: usize = 8 << 20;

/// The records of a CSV file after its header, block by block.
pub(crate) struct Blocks {
    file: std::fs::File,
    /// Bytes read past the last whole record.
    carry: Vec<u8>,
    block_bytes: usize,
    header_skipped: bool,
    eof: bool,
}

impl Blocks {
    /// Opens `path` for blocks of about `block_bytes` bytes.
    pub(crate) fn open(path: &Path, block_bytes: usize) -> std::io::Result<Blocks> {
        Ok(Blocks {
            file: std::fs::File::open(path)?,
            carry: Vec::new(),
            block_bytes: block_bytes.max(1),
            header_skipped: false,
            eof: false,
        })
    }

    /// The next block of whole records (the header left out); None after the last.
    pub(crate) fn next_block(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            if self.eof {
                let rest = std::mem::take(&mut self.carry);
                return Ok((!rest.is_empty()).then_some(rest));
            }
            let start = self.carry.len();
            self.carry.resize(start + self.block_bytes, 0);
            let n = read_full(&mut self.file, &mut self.carry[start..])?;
            self.carry.truncate(start + n);
            if n == 0 {
                self.eof = true;
                if !self.header_skipped {
                    // a header without a line break after it: no records
                    self.carry.clear();
                }
                continue;
            }
            if !self.header_skipped {
                let Some(end) = record_ends(&self.carry).next() else {
                    continue;
                };
                self.carry.drain(..end);
                self.header_skipped = true;
            }
            if let Some(end) = record_ends(&self.carry).last() {
                let rest = self.carry.split_off(end);
                return Ok(Some(std::mem::replace(&mut self.carry, rest)));
            }
        }
    }
}

/// Reads until `buf` is full or the file ends; the bytes read.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The offsets just past each line break outside quotes in `buf`, which starts at a
/// record boundary.
fn record_ends(buf: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let mut in_quotes = false;
    memchr::memchr2_iter(b'"', b'\n', buf).filter_map(move |i| {
        if buf[i] == b'"' {
            in_quotes = !in_quotes;
            None
        } else {
            (!in_quotes).then_some(i + 1)
        }
    })
}

/// Parses one block (whole records, no header) into the `columns` of `schema` (the file's
/// columns in order with their types; `NA` and empty cells null).
pub(crate) fn parse(
    bytes: &[u8],
    schema: &SchemaRef,
    columns: &[String],
    csv: &crate::stream::CsvFormat,
) -> PolarsResult<DataFrame> {
    let nulls = (!csv.null_values.is_empty()).then(|| {
        NullValues::AllColumns(csv.null_values.iter().map(|s| s.as_str().into()).collect())
    });
    CsvReadOptions::default()
        .with_has_header(false)
        .with_schema(Some(schema.clone()))
        .with_columns(Some(columns.iter().map(|c| c.as_str().into()).collect()))
        .with_parse_options(
            CsvParseOptions::default()
                .with_separator(csv.delimiter)
                .with_null_values(nulls),
        )
        .into_reader_with_file_handle(std::io::Cursor::new(bytes))
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks_of(text: &str, block: usize) -> Vec<String> {
        let dir = std::env::temp_dir().join(format!("kiln-csv-blocks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!("b{}-{block}.csv", text.len()));
        std::fs::write(&p, text).unwrap();
        let mut b = Blocks::open(&p, block).unwrap();
        let mut out = Vec::new();
        while let Some(x) = b.next_block().unwrap() {
            out.push(String::from_utf8(x).unwrap());
        }
        let _ = std::fs::remove_file(&p);
        out
    }

    #[test]
    fn blocks_end_at_record_boundaries_and_join_to_the_records() {
        let text = "a,b\n1,\"x\ny\"\n2,\"say \"\"hi\"\"\"\n3,z\n4,w";
        for block in 1..=text.len() + 1 {
            let blocks = blocks_of(text, block);
            // together the blocks are every byte after the header, in order
            assert_eq!(blocks.concat(), &text[4..], "block {block}");
            // each block but the last ends with a record's line break, never inside quotes
            for b in &blocks[..blocks.len() - 1] {
                assert!(b.ends_with('\n'), "block {block}: {b:?}");
                assert_eq!(b.matches('"').count() % 2, 0, "block {block}: {b:?}");
            }
        }
        // one block of 8 bytes: whole records only
        assert_eq!(
            blocks_of("h\n1\n22\n333\n4444\n", 8),
            ["1\n22\n", "333\n4444\n"]
        );
        // a header alone, with or without its line break, holds no records
        assert!(blocks_of("a,b\n", 3).is_empty());
        assert!(blocks_of("a,b", 3).is_empty());
    }
}
