//! The shape of a CSV file, checked before polars reads it: a header with two columns of
//! one name is an error naming both positions (polars would rename one
//! `x_duplicated_0`, and a model would then require that invented column), and a row
//! with more or fewer fields than the header is an error naming its file and line
//! (polars fills a short row with nulls, and the row would vanish as "no target").
//!
//! One pass over the bytes with RFC 4180 quoting (a quoted field may hold the delimiter,
//! `""` and line breaks); lines with no quote are counted with `memchr`.

use crate::error::{PreprocessError, Result};
use std::io::Read;
use std::path::Path;

/// Checks `path`'s header names (when `has_header`) and every row's field count, and
/// returns the number of data rows (records after the header; empty lines skipped).
pub(crate) fn check(path: &Path, delimiter: u8, has_header: bool) -> Result<usize> {
    let file = std::fs::File::open(path).map_err(|source| PreprocessError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut scan = Scan::new(delimiter);
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|source| PreprocessError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        if n == 0 {
            break;
        }
        scan.feed(&buf[..n]);
        if scan.problem.is_some() {
            break;
        }
    }
    scan.finish();
    let shown = path.display();
    if let Some(p) = scan.problem {
        return Err(PreprocessError::Invalid(match p {
            Problem::Fields { line, got, want } => format!(
                "{shown}: line {line} has {got} field(s) but the {} has {want}; fix the row (a missing or extra `{}`, or a value with the delimiter that needs quotes)",
                if has_header { "header" } else { "first row" },
                delimiter as char
            ),
            Problem::Quote { line } => format!(
                "{shown}: line {line} opens a quoted field that is never closed; close the quote (write a quote inside a quoted field as \"\")"
            ),
        }));
    }
    if has_header {
        let names = &scan.header;
        for (j, name) in names.iter().enumerate() {
            if let Some(i) = names[..j].iter().position(|n| n == name) {
                return Err(PreprocessError::Invalid(format!(
                    "{shown}: columns {} and {} of the header are both named `{name}`; rename one",
                    i + 1,
                    j + 1
                )));
            }
        }
    }
    let records = scan.records + u64::from(!has_header && scan.want.is_some());
    Ok(usize::try_from(records).unwrap_or(usize::MAX))
}

enum Problem {
    Fields { line: u64, got: usize, want: usize },
    Quote { line: u64 },
}

/// A streaming scanner of records.
struct Scan {
    delimiter: u8,
    /// Physical line (1-based) where the current record began, and the current line.
    record_line: u64,
    line: u64,
    in_quotes: bool,
    /// The previous byte closed a quoted section (a following quote is an escaped one).
    after_quote: bool,
    fields: usize,
    /// Bytes seen in the current record (an empty line is skipped, as polars does).
    record_bytes: usize,
    /// Fields of the first record.
    want: Option<usize>,
    /// The first record's names (unquoted), while it is read.
    header: Vec<String>,
    field: Vec<u8>,
    problem: Option<Problem>,
    /// Records after the first one.
    records: u64,
}

impl Scan {
    fn new(delimiter: u8) -> Scan {
        Scan {
            delimiter,
            record_line: 1,
            line: 1,
            in_quotes: false,
            after_quote: false,
            fields: 1,
            record_bytes: 0,
            want: None,
            header: Vec::new(),
            field: Vec::new(),
            problem: None,
            records: 0,
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.problem.is_none() {
            // fast path: a whole line without quotes, past the first record
            if !self.in_quotes
                && !self.after_quote
                && self.want.is_some()
                && self.record_bytes == 0
                && let Some(end) = memchr::memchr(b'\n', bytes)
                && memchr::memchr(b'"', &bytes[..end]).is_none()
            {
                let line = &bytes[..end];
                let body = line.strip_suffix(b"\r").unwrap_or(line);
                if !body.is_empty() {
                    let got = memchr::memchr_iter(self.delimiter, body).count() + 1;
                    self.check_fields(got, self.line);
                }
                self.line += 1;
                self.record_line = self.line;
                bytes = &bytes[end + 1..];
                continue;
            }
            let b = bytes[0];
            bytes = &bytes[1..];
            self.byte(b);
        }
    }

    fn byte(&mut self, b: u8) {
        if self.in_quotes {
            if b == b'"' {
                self.in_quotes = false;
                self.after_quote = true;
            } else {
                if b == b'\n' {
                    self.line += 1;
                }
                self.keep(b);
            }
            return;
        }
        if b == b'"' {
            if self.after_quote {
                // "" inside a quoted field: a quote
                self.keep(b'"');
            }
            self.in_quotes = true;
            self.after_quote = false;
            self.record_bytes += 1;
            return;
        }
        self.after_quote = false;
        match b {
            b'\n' => {
                self.end_record();
                self.line += 1;
                self.record_line = self.line;
            }
            b'\r' => {}
            _ if b == self.delimiter => {
                self.fields += 1;
                self.record_bytes += 1;
                self.end_field();
            }
            _ => {
                self.record_bytes += 1;
                self.keep(b);
            }
        }
    }

    fn keep(&mut self, b: u8) {
        if self.want.is_none() {
            self.field.push(b);
        }
    }

    fn end_field(&mut self) {
        if self.want.is_none() {
            let name = String::from_utf8_lossy(&self.field).trim().to_string();
            self.header.push(name);
            self.field.clear();
        }
    }

    fn end_record(&mut self) {
        if self.record_bytes > 0 || self.fields > 1 {
            if self.want.is_none() {
                self.end_field();
                self.want = Some(self.fields);
            } else {
                self.check_fields(self.fields, self.record_line);
            }
        }
        self.fields = 1;
        self.record_bytes = 0;
    }

    fn check_fields(&mut self, got: usize, line: u64) {
        self.records += 1;
        if let Some(want) = self.want
            && got != want
            && self.problem.is_none()
        {
            self.problem = Some(Problem::Fields { line, got, want });
        }
    }

    fn finish(&mut self) {
        if self.problem.is_some() {
            return;
        }
        if self.in_quotes {
            self.problem = Some(Problem::Quote {
                line: self.record_line,
            });
            return;
        }
        self.end_record();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_text(text: &str) -> std::result::Result<usize, String> {
        let dir = std::env::temp_dir().join(format!("kiln-csv-shape-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!("t{}.csv", text.len()));
        std::fs::write(&p, text).unwrap();
        let r = check(&p, b',', true).map_err(|e| e.to_string());
        let _ = std::fs::remove_file(&p);
        r
    }

    #[test]
    fn rows_of_the_header_width_pass_quotes_and_all() {
        // the data rows are counted
        assert_eq!(check_text("a,b,c\n1,2,3\n4,5,6\n"), Ok(2));
        assert_eq!(check_text("a,b\r\n1,2\r\n"), Ok(1));
        // quoted delimiters, escaped quotes, line breaks inside quotes, a blank line
        assert_eq!(
            check_text("a,\"b,c\"\n\"x,y\",\"say \"\"hi\"\"\"\n\n\"multi\nline\",2\n"),
            Ok(2)
        );
        // no final newline
        assert_eq!(check_text("a,b\n1,2"), Ok(1));
        // one column: every line is a row
        assert_eq!(check_text("a\n1\n2\n"), Ok(2));
        // a header and nothing else
        assert_eq!(check_text("a,b\n"), Ok(0));
    }

    #[test]
    fn ragged_rows_and_duplicate_names_are_named() {
        let e = check_text("a,b,c,d,e\n1,2,3,4,5\n1,2,3\n").unwrap_err();
        assert!(
            e.contains("line 3 has 3 field(s) but the header has 5"),
            "{e}"
        );
        let e = check_text("a,b\n1,2\n1,2,3\n").unwrap_err();
        assert!(
            e.contains("line 3 has 3 field(s) but the header has 2"),
            "{e}"
        );
        // the line of a row after a quoted line break counts it
        let e = check_text("a,b\n\"x\ny\",1\n1\n").unwrap_err();
        assert!(e.contains("line 4 has 1 field(s)"), "{e}");
        let e = check_text("a,\"b\",c,b\n1,2,3,4\n").unwrap_err();
        assert!(
            e.contains("columns 2 and 4 of the header are both named `b`"),
            "{e}"
        );
        let e = check_text("a,b\n\"open,1\n").unwrap_err();
        assert!(
            e.contains("line 2 opens a quoted field that is never closed"),
            "{e}"
        );
    }
}
