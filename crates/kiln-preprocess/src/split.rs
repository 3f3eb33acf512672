//! Seeded train / valid / test split of row indices: a stratified shuffle, or a hash of
//! each row's id ([`kiln_core::row_split`]).

use crate::error::{PreprocessError, Result};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Errors unless `valid` and `test` are fractions that leave training rows.
fn check_fractions(valid: f64, test: f64) -> Result<()> {
    for (name, f) in [("valid", valid), ("test", test)] {
        if !(0.0..1.0).contains(&f) {
            return Err(PreprocessError::Invalid(format!(
                "split.{name} = {f} must be in [0, 1)"
            )));
        }
    }
    if valid + test >= 1.0 {
        return Err(PreprocessError::Invalid(format!(
            "split fractions valid + test = {} leave no training rows; keep their sum below 1",
            valid + test
        )));
    }
    Ok(())
}

/// Splits row indices into `[train, valid, test]`. With `stratify`, each class is shuffled
/// and cut separately so every split keeps the class proportions; each split's indices
/// are returned in ascending order. Depends only on the labels and the seed (never on
/// thread count or timing).
pub fn stratified_split(
    labels: &[u32],
    n_classes: usize,
    valid: f64,
    test: f64,
    stratify: bool,
    seed: u64,
) -> Result<[Vec<u32>; 3]> {
    check_fractions(valid, test)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let groups: Vec<Vec<u32>> = if stratify {
        let mut g = vec![Vec::new(); n_classes.max(1)];
        for (i, &l) in labels.iter().enumerate() {
            g[l as usize].push(i as u32);
        }
        g
    } else {
        vec![(0..labels.len() as u32).collect()]
    };
    let mut out = [Vec::new(), Vec::new(), Vec::new()];
    for mut g in groups {
        g.shuffle(&mut rng);
        let n_test = (g.len() as f64 * test).round() as usize;
        let n_valid = ((g.len() as f64 * valid).round() as usize).min(g.len() - n_test);
        out[2].extend_from_slice(&g[..n_test]);
        out[1].extend_from_slice(&g[n_test..n_test + n_valid]);
        out[0].extend_from_slice(&g[n_test + n_valid..]);
    }
    for s in &mut out {
        s.sort_unstable();
    }
    Ok(out)
}

/// Splits rows by a seeded hash of their ids (`ids[i]` the id of row `i` as text): each
/// split's indices ascending, each row's split independent of every other row.
pub fn hash_split(ids: &[String], valid: f64, test: f64, seed: u64) -> Result<[Vec<u32>; 3]> {
    check_fractions(valid, test)?;
    let mut out = [Vec::new(), Vec::new(), Vec::new()];
    for (i, id) in ids.iter().enumerate() {
        let s = kiln_core::row_split::row_split(seed, id.as_bytes(), valid, test);
        out[s as usize].push(i as u32);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stratified_seeded_disjoint() {
        let labels: Vec<u32> = (0..1000).map(|i| if i % 10 == 0 { 1 } else { 0 }).collect();
        let [tr, va, te] = stratified_split(&labels, 2, 0.1, 0.2, true, 42).unwrap();
        assert_eq!((tr.len(), va.len(), te.len()), (700, 100, 200));
        // class 1 is 10 %: exactly 10 % of each split
        let ones = |s: &[u32]| s.iter().filter(|&&i| labels[i as usize] == 1).count();
        assert_eq!((ones(&tr), ones(&va), ones(&te)), (70, 10, 20));
        let mut all: Vec<u32> = tr.iter().chain(&va).chain(&te).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert_eq!(
            stratified_split(&labels, 2, 0.1, 0.2, true, 42).unwrap()[1],
            va
        );
        assert_ne!(
            stratified_split(&labels, 2, 0.1, 0.2, true, 43).unwrap()[1],
            va
        );
        let e = stratified_split(&labels, 2, 0.6, 0.5, true, 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("split fractions valid + test = 1.1 leave no training rows"),
            "{e}"
        );
        // a sum of exactly 1 leaves no training rows either
        let e = stratified_split(&labels, 2, 0.5, 0.5, true, 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("split fractions valid + test = 1 leave no training rows"),
            "{e}"
        );
        let e = stratified_split(&labels, 2, 1.0, 0.0, true, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("split.valid = 1 must be in [0, 1)"), "{e}");
    }

    #[test]
    fn hash_split_depends_on_each_row_alone() {
        let ids: Vec<String> = (0..2000).map(|i| format!("r{i}")).collect();
        let [tr, va, te] = hash_split(&ids, 0.1, 0.2, 9).unwrap();
        assert_eq!(tr.len() + va.len() + te.len(), 2000);
        assert!(tr.windows(2).all(|w| w[0] < w[1]));
        // every other row alone: each keeps its split
        let half: Vec<String> = ids.iter().step_by(2).cloned().collect();
        let [htr, hva, hte] = hash_split(&half, 0.1, 0.2, 9).unwrap();
        let back = |s: &[u32]| -> Vec<u32> { s.iter().map(|&i| i * 2).collect() };
        let evens = |s: &[u32]| -> Vec<u32> { s.iter().copied().filter(|i| i % 2 == 0).collect() };
        assert_eq!(back(&htr), evens(&tr));
        assert_eq!(back(&hva), evens(&va));
        assert_eq!(back(&hte), evens(&te));
        assert!(hash_split(&ids, 0.5, 0.5, 9).is_err());
    }
}
