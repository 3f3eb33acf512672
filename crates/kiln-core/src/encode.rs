//! Text (categorical) columns and the encoders that turn them into numbers: one-hot,
//! ordinal, and a hashed bag of words. Shared by the preprocessing stage (fitting on the
//! train split) and `Schema::apply_with_text` (kiln predict, kiln serve), so both compute
//! the same features from the same cells.

use crate::error::{CoreError, Result};
use std::collections::HashMap;

/// The code of a missing cell in a [`TextColumn`].
pub const MISSING: u32 = u32::MAX;

/// One text column, dictionary-encoded: each distinct cell is stored once in `dict`, and
/// `codes` holds, per row, its index in `dict` or [`MISSING`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TextColumn {
    /// Distinct cells, in order of first appearance.
    pub dict: Vec<String>,
    /// Per row: the index of its cell in `dict`, or [`MISSING`].
    pub codes: Vec<u32>,
}

impl TextColumn {
    /// Builds a column from cells (`None` = missing).
    pub fn from_cells<'a>(cells: impl IntoIterator<Item = Option<&'a str>>) -> TextColumn {
        let mut index: HashMap<&'a str, u32> = HashMap::new();
        let mut dict = Vec::new();
        let codes = cells
            .into_iter()
            .map(|c| match c {
                None => MISSING,
                Some(s) => *index.entry(s).or_insert_with(|| {
                    dict.push(s.to_string());
                    (dict.len() - 1) as u32
                }),
            })
            .collect();
        TextColumn { dict, codes }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.codes.len()
    }

    /// Whether the column has no rows.
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    /// The cell of row `i` (`None` when missing or out of range).
    pub fn get(&self, i: usize) -> Option<&str> {
        self.codes
            .get(i)
            .and_then(|&c| self.dict.get(c as usize))
            .map(String::as_str)
    }

    /// The rows at `idx`, in that order (the dictionary is shared as is).
    pub fn take(&self, idx: &[u32]) -> TextColumn {
        TextColumn {
            dict: self.dict.clone(),
            codes: idx.iter().map(|&i| self.codes[i as usize]).collect(),
        }
    }

    /// How many rows hold each dictionary entry (missing rows are not counted).
    pub fn counts(&self) -> Vec<usize> {
        let mut n = vec![0usize; self.dict.len()];
        for &c in &self.codes {
            if c != MISSING {
                n[c as usize] += 1;
            }
        }
        n
    }

    /// Missing rows replaced by `value`.
    pub fn fill(&mut self, value: &str) {
        if !self.codes.contains(&MISSING) {
            return;
        }
        let code = match self.dict.iter().position(|d| d == value) {
            Some(p) => p as u32,
            None => {
                self.dict.push(value.to_string());
                (self.dict.len() - 1) as u32
            }
        };
        for c in &mut self.codes {
            if *c == MISSING {
                *c = code;
            }
        }
    }
}

/// Category counts of a column as (category, count), most frequent first, ties by name
/// (byte order).
pub fn frequencies(col: &TextColumn) -> Vec<(String, usize)> {
    let mut v: Vec<(String, usize)> = col
        .dict
        .iter()
        .cloned()
        .zip(col.counts())
        .filter(|(_, n)| *n > 0)
        .collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

/// 64-bit FNV-1a of `bytes` (offset basis 0xcbf29ce484222325, prime 0x100000001b3):
/// stable across runs, platforms and Rust versions, unlike `std`'s randomized hasher.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The tokens of `text` for `hash_text`: lowercased, split on every character that is
/// not alphanumeric (Unicode), empty pieces skipped.
pub fn tokens(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// The bucket of `token` among `n_features`: `fnv1a(token) % n_features`.
pub fn bucket(token: &str, n_features: usize) -> usize {
    (fnv1a(token.as_bytes()) % n_features.max(1) as u64) as usize
}

/// What an encoder writes for one cell: (offset among the column's outputs, value) pairs
/// added to outputs that start at 0.
pub(crate) type Sparse = Vec<(u32, f32)>;

/// An encoder's plan for one text column: the output names, and what each dictionary
/// entry and a missing cell write.
pub(crate) struct Expansion {
    pub names: Vec<String>,
    pub per_code: Vec<Sparse>,
    pub missing: Sparse,
}

/// Replaces each encoded column of row-major `data` (columns `names`) by its outputs, in
/// place: the outputs take the column's position. `plans` holds (column index, plan).
pub(crate) fn expand(
    names: &mut Vec<String>,
    data: &mut Vec<f32>,
    text: &[&TextColumn],
    plans: &[(usize, Expansion)],
    op: &str,
) -> Result<()> {
    let width = names.len();
    let n_rows = data.len() / width.max(1);
    // the new layout: per old column, either copy it or write a plan's outputs
    let mut new_names = Vec::new();
    enum Seg {
        Copy(usize),
        Plan(usize, usize),
    }
    let mut segs = Vec::with_capacity(width);
    for (j, n) in names.iter().enumerate() {
        match plans.iter().position(|(c, _)| *c == j) {
            Some(p) => {
                segs.push(Seg::Plan(p, plans[p].1.names.len()));
                new_names.extend(plans[p].1.names.iter().cloned());
            }
            None => {
                segs.push(Seg::Copy(j));
                new_names.push(n.clone());
            }
        }
    }
    {
        let mut seen = std::collections::HashSet::new();
        if let Some(d) = new_names.iter().find(|n| !seen.insert(n.as_str())) {
            return Err(CoreError::Invalid(format!(
                "{op} makes a feature named `{d}`, but a feature of that name already exists; rename or drop the other column first"
            )));
        }
    }
    for (k, (_, p)) in plans.iter().enumerate() {
        if text[k].len() != n_rows {
            return Err(CoreError::Invalid(format!(
                "{op}: a text column holds {} rows but the rows number {n_rows}",
                text[k].len()
            )));
        }
        if text[k].dict.len() > p.per_code.len() {
            return Err(CoreError::Invalid(format!(
                "{op}: internal: the plan covers {} of {} categories",
                p.per_code.len(),
                text[k].dict.len()
            )));
        }
    }
    let new_w = new_names.len();
    let mut out = vec![0.0f32; n_rows * new_w];
    for (i, (row, o)) in data
        .chunks_exact(width)
        .zip(out.chunks_exact_mut(new_w))
        .enumerate()
    {
        let mut at = 0;
        for s in &segs {
            match *s {
                Seg::Copy(j) => {
                    o[at] = row[j];
                    at += 1;
                }
                Seg::Plan(p, k) => {
                    let code = text[p].codes[i];
                    let plan = &plans[p].1;
                    let w = if code == MISSING {
                        &plan.missing
                    } else {
                        &plan.per_code[code as usize]
                    };
                    for &(off, v) in w {
                        o[at + off as usize] += v;
                    }
                    at += k;
                }
            }
        }
    }
    *data = out;
    *names = new_names;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_values() {
        // published FNV-1a 64 test vectors
        assert_eq!(fnv1a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn tokens_lowercase_and_split_on_non_alphanumerics() {
        assert_eq!(
            tokens("Late delivery!! late-fee, 2x"),
            ["late", "delivery", "late", "fee", "2x"]
        );
        assert!(tokens(" ,;").is_empty());
    }

    #[test]
    fn text_columns_encode_count_fill_and_take() {
        let mut c = TextColumn::from_cells([Some("b"), None, Some("a"), Some("b")]);
        assert_eq!(c.dict, ["b", "a"]);
        assert_eq!(c.codes, [0, MISSING, 1, 0]);
        assert_eq!(
            frequencies(&c),
            [("b".to_string(), 2), ("a".to_string(), 1)]
        );
        let t = c.take(&[3, 1]);
        assert_eq!((t.get(0), t.get(1)), (Some("b"), None));
        c.fill("z");
        assert_eq!(c.get(1), Some("z"));
        assert_eq!(c.dict, ["b", "a", "z"]);
    }
}
