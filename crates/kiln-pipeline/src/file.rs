//! The pipeline file: TOML parsed with spans, checked against each stage's Config, with
//! every problem reported at once as `file:line:col` plus the offending line.
//!
//! One file, over 600 lines: the span bookkeeping (line/column of every key) is shared by
//! every check here, and splitting it would pass the spans through a second module's API.

use crate::StageKind;
use crate::stage::KINDS;
use serde::Deserialize;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

/// One problem in a pipeline file, located.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    /// The file.
    pub file: PathBuf,
    /// 1-based line (0 when the problem is in a `--set` argument, which the message names).
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// What is wrong and what to do.
    pub message: String,
    /// The text of the line.
    pub line_text: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            // the message names the --set argument it is about
            return write!(f, "{}: {}", self.file.display(), self.message);
        }
        writeln!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )?;
        let num = self.line.to_string();
        writeln!(f, "{} | {}", num, self.line_text)?;
        write!(
            f,
            "{} | {}^",
            " ".repeat(num.len()),
            " ".repeat(self.col.saturating_sub(1))
        )
    }
}

/// A parsed stage: its id, kind, edges and typed configuration.
#[derive(Debug, Clone)]
pub struct StageDef {
    /// The id (`[stages.<id>]`).
    pub id: String,
    /// What the stage does.
    pub kind: StageKind,
    /// Stages whose artifacts it consumes.
    pub inputs: Vec<String>,
    /// Stages whose verdict must pass before it runs.
    pub requires: Vec<String>,
    /// The typed configuration.
    pub config: StageConfig,
    pub(crate) span: Range<usize>,
}

/// A stage's configuration, one variant per stage kind.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(untagged)]
pub enum StageConfig {
    /// `uses = "preprocess"`.
    Preprocess(kiln_preprocess::Config),
    /// `uses = "train"`.
    Train(kiln_train::Config),
    /// `uses = "optimize"`.
    Optimize(kiln_optimize::Config),
    /// `uses = "evaluate"`.
    Evaluate(kiln_evaluate::Config),
    /// `uses = "deploy"`.
    Deploy(kiln_deploy::Config),
}

impl StageConfig {
    /// Out-of-range values of the stage's config, as (key path, message) pairs.
    pub fn problems(&self) -> Vec<(String, String)> {
        match self {
            StageConfig::Preprocess(c) => c.problems(),
            StageConfig::Train(c) => c.problems(),
            StageConfig::Optimize(c) => c.problems(),
            StageConfig::Evaluate(c) => c.problems(),
            StageConfig::Deploy(c) => c.problems(),
        }
    }
}

/// The span of the value at a dotted key path (`optimizer.lr`, `steps.0.by`), if written.
fn span_of(table: &DeTable, path: &str) -> Option<Range<usize>> {
    // `candidates[0].structured` walks like `candidates.0.structured`
    let path = path.replace('[', ".").replace(']', "");
    let mut parts = path.split('.');
    let first = table.get(parts.next()?)?;
    let mut cur = first;
    for part in parts {
        cur = match cur.get_ref() {
            DeValue::Table(t) => t.get(part)?,
            DeValue::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur.span())
}

/// A whole pipeline file, validated.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The file it came from.
    pub file: PathBuf,
    /// Pipeline name (runs go under `runs/<name>/`).
    pub name: String,
    /// Seed given to every stage that has none of its own.
    pub seed: u64,
    /// Optional description.
    pub description: Option<String>,
    /// Stages in execution order (inputs and requirements first).
    pub stages: Vec<StageDef>,
    /// The file's text (after `--set` overrides, for hashing).
    pub source_text: String,
}

impl Pipeline {
    /// The stage with this id.
    pub fn stage(&self, id: &str) -> Option<&StageDef> {
        self.stages.iter().find(|s| s.id == id)
    }
}

/// Whether `name` can name a pipeline or a stage: non-empty, letters, digits, `-` and
/// `_` only (so it can never form a path outside the runs folder).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    version: u32,
    name: String,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    description: Option<String>,
}

/// Spans at or past this offset stand for the `--set` arguments (they have no place in
/// the file): `SET_BASE + k` is the k-th one.
pub(crate) const SET_BASE: usize = usize::MAX / 2;

/// The span standing for the k-th `--set` argument.
fn set_span(k: usize) -> Range<usize> {
    SET_BASE + k..SET_BASE + k + 1
}

const HEADER_KEYS: &[&str] = &["version", "name", "seed", "description", "stages"];

pub(crate) struct Ctx<'a> {
    pub file: &'a Path,
    pub text: &'a str,
    pub diags: Vec<Diagnostic>,
    /// The `--set` arguments, for errors located in one of them.
    pub set: &'a [String],
}

impl Ctx<'_> {
    pub fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let message = message.into();
        if span.start >= SET_BASE {
            let arg = self
                .set
                .get(span.start - SET_BASE)
                .map_or(String::new(), |a| format!(" `{a}`"));
            self.diags.push(Diagnostic {
                file: self.file.to_path_buf(),
                line: 0,
                col: 0,
                message: format!("--set{arg}: {message}"),
                line_text: String::new(),
            });
            return;
        }
        let (line, col, line_text) = locate(self.text, span.start);
        self.diags.push(Diagnostic {
            file: self.file.to_path_buf(),
            line,
            col,
            message,
            line_text,
        });
    }

    fn toml_error(&mut self, e: toml::de::Error, fallback: Range<usize>, valid: &[&str]) {
        let span = e.span().unwrap_or(fallback);
        let msg = polish(e.message(), valid);
        self.error(span, msg);
    }
}

fn locate(text: &str, offset: usize) -> (usize, usize, String) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = text[start..offset].chars().count() + 1;
    let end = text[start..]
        .find('\n')
        .map(|i| start + i)
        .unwrap_or(text.len());
    (
        line,
        col,
        text[start..end].trim_end_matches('\r').to_string(),
    )
}

/// Rewrites serde's messages into kiln's voice, adding "did you mean" for unknown keys.
fn polish(message: &str, valid: &[&str]) -> String {
    let msg = message.trim().trim_end_matches('.').to_string();
    // serde's words for whole numbers
    for (int, words) in [
        ("usize", "a whole number of at least 0"),
        ("u64", "a whole number of at least 0"),
        ("u32", "a whole number of at least 0"),
        ("i64", "a whole number"),
    ] {
        if let Some(rest) = msg
            .strip_prefix("invalid type: floating point `")
            .and_then(|r| r.strip_suffix(&format!("`, expected {int}")))
        {
            return format!("{rest} is not a whole number; this key takes {words}");
        }
        if let Some(rest) = msg
            .strip_prefix("invalid value: integer `")
            .and_then(|r| r.strip_suffix(&format!("`, expected {int}")))
        {
            return format!("{rest} is out of range; this key takes {words}");
        }
        if let Some(found) = msg
            .strip_prefix("invalid type: ")
            .and_then(|r| r.strip_suffix(&format!(", expected {int}")))
        {
            return format!("found {found}; this key takes {words}");
        }
    }
    for (ty, words) in [
        ("f64", "a number"),
        ("f32", "a number"),
        ("a boolean", "true or false"),
    ] {
        if let Some(found) = msg
            .strip_prefix("invalid type: ")
            .and_then(|r| r.strip_suffix(&format!(", expected {ty}")))
        {
            return format!("found {found}; this key takes {words}");
        }
    }
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let name = rest.split('`').next().unwrap_or("");
        let mut expected: Vec<String> = rest
            .split('`')
            .skip(2)
            .step_by(2)
            .map(String::from)
            .collect();
        if expected.is_empty() {
            expected = valid.iter().map(|s| s.to_string()).collect();
        }
        let hint = crate::nearest(name, &expected)
            .map(|n| format!("; did you mean `{n}`?"))
            .unwrap_or_else(|| {
                format!(
                    "; valid keys here: {}",
                    expected
                        .iter()
                        .map(|e| format!("`{e}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            });
        return format!("unknown key `{name}`{hint}");
    }
    if let Some(rest) = msg.strip_prefix("unknown variant `") {
        let name = rest.split('`').next().unwrap_or("");
        let expected: Vec<String> = rest
            .split('`')
            .skip(2)
            .step_by(2)
            .map(String::from)
            .collect();
        let hint = crate::nearest(name, &expected)
            .map(|n| format!("; did you mean `{n}`?"))
            .unwrap_or_else(|| {
                format!(
                    "; expected one of {}",
                    expected
                        .iter()
                        .map(|e| format!("`{e}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            });
        return format!("unknown value `{name}`{hint}");
    }
    msg
}

fn take_string_list(ctx: &mut Ctx, table: &mut DeTable, key: &str) -> Vec<(String, Range<usize>)> {
    let Some(v) = table.remove(key) else {
        return Vec::new();
    };
    let span = v.span();
    match v.into_inner() {
        DeValue::String(s) => vec![(s.to_string(), span)],
        DeValue::Array(items) => {
            let mut out = Vec::new();
            for it in items {
                let sp = it.span();
                match it.into_inner() {
                    DeValue::String(s) => out.push((s.to_string(), sp)),
                    other => ctx.error(
                        sp,
                        format!(
                            "`{key}` must list stage ids as strings, found {}",
                            crate::an(other.type_str())
                        ),
                    ),
                }
            }
            out
        }
        other => {
            ctx.error(
                span,
                format!(
                    "`{key}` must be a stage id or a list of stage ids, found {}",
                    crate::an(other.type_str())
                ),
            );
            Vec::new()
        }
    }
}

/// Applies `--set a.b.c=value` overrides to the parsed document; everything a `--set`
/// puts there carries that argument's span, so an error in it names the argument.
fn apply_set<'a>(ctx: &mut Ctx, root: &mut DeTable<'a>, set: &'a [String]) {
    for (k, s) in set.iter().enumerate() {
        let span = set_span(k);
        let Some((path, raw)) = s.split_once('=').filter(|(p, _)| !p.trim().is_empty()) else {
            ctx.error(span, "must look like stages.train.epochs=2");
            continue;
        };
        let value = match DeValue::parse(raw.trim()) {
            Ok(v) => respan(v.into_inner(), &span),
            Err(_) => DeValue::String(std::borrow::Cow::Borrowed(raw.trim())),
        };
        let keys: Vec<&str> = path.trim().split('.').collect();
        if let Err(m) = set_path(root, &keys, value, &span) {
            ctx.error(span, m);
        }
    }
}

/// `v` with every span inside it (keys and values) set to `span`.
fn respan<'a>(v: DeValue<'a>, span: &Range<usize>) -> DeValue<'a> {
    match v {
        DeValue::Array(items) => DeValue::Array(
            items
                .into_iter()
                .map(|i| Spanned::new(span.clone(), respan(i.into_inner(), span)))
                .collect(),
        ),
        DeValue::Table(t) => DeValue::Table(
            t.into_iter()
                .map(|(k, v)| {
                    (
                        Spanned::new(span.clone(), k.into_inner()),
                        Spanned::new(span.clone(), respan(v.into_inner(), span)),
                    )
                })
                .collect(),
        ),
        other => other,
    }
}

fn set_path<'a>(
    table: &mut DeTable<'a>,
    keys: &[&str],
    value: DeValue<'a>,
    span: &Range<usize>,
) -> Result<(), String> {
    let key = keys[0].to_string();
    if keys.len() == 1 {
        table.insert(
            Spanned::new(span.clone(), std::borrow::Cow::Owned(key)),
            Spanned::new(span.clone(), value),
        );
        return Ok(());
    }
    if !table.contains_key(keys[0]) {
        table.insert(
            Spanned::new(span.clone(), std::borrow::Cow::Owned(key.clone())),
            Spanned::new(span.clone(), DeValue::Table(DeTable::new())),
        );
    }
    match table.get_mut(keys[0]).map(|v| v.get_mut()) {
        Some(DeValue::Table(t)) => set_path(t, &keys[1..], value, span),
        _ => Err(format!("`{key}` is not a table")),
    }
}

/// Reports every float of the document that is not finite (`nan`, `inf`, or a number
/// too large for f64): kiln's settings are finite numbers, and NaN would otherwise pass
/// every range check.
fn check_finite(ctx: &mut Ctx, v: &Spanned<DeValue>) {
    match v.get_ref() {
        DeValue::Float(f) => {
            let text = f.as_str();
            if !text.parse::<f64>().is_ok_and(f64::is_finite) {
                ctx.error(
                    v.span(),
                    format!("`{text}` is not a finite number; every number here must be finite"),
                );
            }
        }
        DeValue::Array(items) => {
            for i in items {
                check_finite(ctx, i);
            }
        }
        DeValue::Table(t) => {
            for (_, x) in t.iter() {
                check_finite(ctx, x);
            }
        }
        _ => {}
    }
}

fn deserialize<'de, T: Deserialize<'de>>(
    ctx: &mut Ctx,
    table: DeTable<'de>,
    span: Range<usize>,
    valid: &[&str],
) -> Option<T> {
    match T::deserialize(ValueDeserializer::from(Spanned::new(
        span.clone(),
        DeValue::Table(table),
    ))) {
        Ok(v) => Some(v),
        Err(e) => {
            ctx.toml_error(e, span, valid);
            None
        }
    }
}

/// Parses and validates a pipeline file's text; `file` is used for messages and to
/// resolve relative paths. Returns every problem found.
pub fn parse<'a>(
    file: &Path,
    text: &'a str,
    set: &'a [String],
) -> Result<Pipeline, Vec<Diagnostic>> {
    let mut ctx = Ctx {
        file,
        text,
        diags: Vec::new(),
        set,
    };
    let (doc, errors) = DeTable::parse_recoverable(text);
    for e in errors {
        ctx.toml_error(e, 0..1, &[]);
    }
    if !ctx.diags.is_empty() {
        return Err(ctx.diags);
    }
    let root_span = doc.span();
    let mut root = doc.into_inner();
    apply_set(&mut ctx, &mut root, set);
    for (_, v) in root.iter() {
        check_finite(&mut ctx, v);
    }
    if !ctx.diags.is_empty() {
        ctx.diags.sort_by_key(|d| (d.line == 0, d.line, d.col));
        return Err(ctx.diags);
    }
    let stages_val = root.remove("stages");
    let header: Option<Header> = deserialize(&mut ctx, root, root_span.clone(), HEADER_KEYS);
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let seed = header.as_ref().map(|h| h.seed).unwrap_or(0);
    if let Some(h) = &header {
        if h.version != 1 {
            ctx.error(
                root_span.start..root_span.start + 1,
                format!(
                    "pipeline `version = {}` is not supported; this kiln reads version 1",
                    h.version
                ),
            );
        }
        if !valid_name(&h.name) {
            ctx.error(
                root_span.start..root_span.start + 1,
                format!(
                    "pipeline name `{}` must be non-empty and use only letters, digits, - and _",
                    h.name
                ),
            );
        }
    }
    let mut stages = Vec::new();
    let mut broken: Vec<String> = Vec::new();
    match stages_val.map(|v| (v.span(), v.into_inner())) {
        None => ctx.error(
            root_span.start..root_span.start + 1,
            "the pipeline has no `[stages.<id>]` tables; add at least one stage",
        ),
        Some((sp, DeValue::Table(t))) => {
            for (key, val) in t {
                let id = key.get_ref().to_string();
                let id_span = key.span();
                let span = val.span();
                if !valid_name(&id) {
                    ctx.error(
                        id_span,
                        format!(
                            "stage id `{id}` must be non-empty and use only letters, digits, - and _ (it names a folder of the run)"
                        ),
                    );
                    broken.push(id);
                    continue;
                }
                let DeValue::Table(mut table) = val.into_inner() else {
                    ctx.error(
                        id_span,
                        format!("stage `{id}` must be a table ([stages.{id}])"),
                    );
                    broken.push(id);
                    continue;
                };
                let Some(uses) = table.remove("uses") else {
                    ctx.error(id_span, format!("stage `{id}` has no `uses` key; add uses = \"preprocess\" (or train, optimize, evaluate, deploy)"));
                    broken.push(id);
                    continue;
                };
                let uses_span = uses.span();
                let found = uses
                    .get_ref()
                    .as_str()
                    .and_then(|u| KINDS.iter().find(|k| k.kind.as_str() == u));
                let Some(kind) = found.map(|k| k.kind) else {
                    let got = uses.get_ref().as_str().unwrap_or("?");
                    let names: Vec<String> =
                        KINDS.iter().map(|k| k.kind.as_str().to_string()).collect();
                    let hint = crate::nearest(got, &names)
                        .map(|n| format!("did you mean `{n}`?"))
                        .unwrap_or_else(|| format!("expected one of {}", names.join(", ")));
                    ctx.error(uses_span, format!("unknown stage kind `{got}`; {hint}"));
                    broken.push(id);
                    continue;
                };
                let mut inputs = take_string_list(&mut ctx, &mut table, "input");
                inputs.extend(take_string_list(&mut ctx, &mut table, "inputs"));
                let requires = take_string_list(&mut ctx, &mut table, "requires");
                let own_seed = table.contains_key("seed");
                let own_finetune_seed = table
                    .get("finetune")
                    .and_then(|f| f.get_ref().as_table())
                    .is_some_and(|f| f.contains_key("seed"));
                let table_copy = table.clone();
                let config = match kind {
                    StageKind::Preprocess => {
                        deserialize::<kiln_preprocess::Config>(&mut ctx, table, span.clone(), &[])
                            .map(|mut c| {
                                if !own_seed {
                                    c.seed = seed;
                                }
                                for p in c.source.paths_mut() {
                                    if p.is_relative() {
                                        *p = dir.join(&*p);
                                    }
                                }
                                StageConfig::Preprocess(c)
                            })
                    }
                    StageKind::Train => {
                        deserialize::<kiln_train::Config>(&mut ctx, table, span.clone(), &[]).map(
                            |mut c| {
                                if !own_seed {
                                    c.seed = seed;
                                }
                                StageConfig::Train(c)
                            },
                        )
                    }
                    StageKind::Optimize => {
                        deserialize::<kiln_optimize::Config>(&mut ctx, table, span.clone(), &[])
                            .map(|mut c| {
                                if !own_finetune_seed {
                                    c.finetune.seed = seed;
                                }
                                StageConfig::Optimize(c)
                            })
                    }
                    StageKind::Evaluate => {
                        deserialize(&mut ctx, table, span.clone(), &[]).map(StageConfig::Evaluate)
                    }
                    StageKind::Deploy => {
                        deserialize(&mut ctx, table, span.clone(), &[]).map(StageConfig::Deploy)
                    }
                };
                let Some(config) = config else {
                    broken.push(id);
                    continue;
                };
                for (key, msg) in config.problems() {
                    let at = span_of(&table_copy, &key).unwrap_or(id_span.clone());
                    ctx.error(at, format!("stage `{id}`: {key}: {msg}"));
                }
                stages.push((
                    StageDef {
                        id,
                        kind,
                        inputs: inputs.iter().map(|(s, _)| s.clone()).collect(),
                        requires: requires.iter().map(|(s, _)| s.clone()).collect(),
                        config,
                        span: id_span,
                    },
                    inputs,
                    requires,
                ));
            }
            if stages.is_empty() && ctx.diags.is_empty() {
                ctx.error(sp, "`[stages]` is empty; add at least one stage");
            }
        }
        Some((sp, other)) => ctx.error(
            sp,
            format!(
                "`stages` must be a table of stages, found {}",
                crate::an(other.type_str())
            ),
        ),
    }
    let ordered = crate::graph::order(&mut ctx, stages, &broken);
    ctx.diags.sort_by_key(|d| (d.line == 0, d.line, d.col));
    match header {
        Some(h) if ctx.diags.is_empty() => Ok(Pipeline {
            file: file.to_path_buf(),
            name: h.name,
            seed: h.seed,
            description: h.description,
            stages: ordered,
            source_text: format!("{text}\n# --set {}", set.join(" ")),
        }),
        _ => Err(ctx.diags),
    }
}
