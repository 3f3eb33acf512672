//! The end-of-run summary: each stage with output describes itself in tables
//! ([`crate::stage::Stage::summary`]).

use crate::file::Pipeline;
use crate::stage::{self, ViewCx};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A small table for the end-of-run summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Table {
    /// Title line.
    pub title: String,
    /// Column names.
    pub header: Vec<String>,
    /// Rows of cells.
    pub rows: Vec<Vec<String>>,
}

/// The tables of every stage with output in `dirs`, in pipeline order.
pub(crate) fn tables(p: &Pipeline, dirs: &BTreeMap<String, PathBuf>) -> Vec<Table> {
    p.stages
        .iter()
        .filter(|s| dirs.contains_key(&s.id))
        .flat_map(|def| {
            stage::of(&def.config).summary(&ViewCx {
                def,
                pipeline: p,
                dirs,
            })
        })
        .collect()
}
