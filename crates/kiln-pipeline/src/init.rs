//! `kiln init`: a commented pipeline file for a table kiln has never seen — the
//! preprocessing [`kiln_preprocess::suggest`] proposes, a network and training settings
//! sized to the data, evaluate (with baselines) and deploy stages — that runs as written.

use kiln_core::Task;
use kiln_preprocess::suggest::{ColumnKind, Suggestion, suggest};
use kiln_preprocess::{Source, Step};
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

/// `to` relative to the folder `from` (both made absolute), for the `path` of the source.
fn relative(to: &Path, from: &Path) -> PathBuf {
    let (Ok(to), Ok(from)) = (std::path::absolute(to), std::path::absolute(from)) else {
        return to.to_path_buf();
    };
    let (a, b): (Vec<Component>, Vec<Component>) =
        (to.components().collect(), from.components().collect());
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    // sharing only the root: the absolute path reads better than ../../..
    if common <= 1 {
        return to;
    }
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &a[common..] {
        out.push(c);
    }
    out
}

/// A TOML string.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// One step as an inline table, as serde writes it, `op` first
/// (`{ op = "drop", columns = [...] }`).
fn step(s: &Step) -> String {
    match toml::Value::try_from(s) {
        Ok(toml::Value::Table(t)) => {
            let op = t.get("op").map(|v| format!("op = {v}"));
            let rest = t
                .iter()
                .filter(|(k, _)| *k != "op")
                .map(|(k, v)| format!("{k} = {v}"));
            format!(
                "{{ {} }}",
                op.into_iter().chain(rest).collect::<Vec<_>>().join(", ")
            )
        }
        Ok(v) => v.to_string(),
        Err(e) => format!("# {e}"),
    }
}

/// The text of a pipeline file for `data` and `target`, to be written at `output`
/// (paths in it are relative to that file's folder), and what was seen.
pub fn init(
    data: &Path,
    target: &str,
    output: &Path,
) -> kiln_preprocess::Result<(String, Suggestion)> {
    let s = suggest(data, target)?;
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let rel = relative(data, dir);
    let stem = data
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("table")
        .to_string();
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let classification = s.task == Task::Classification;
    let train_rows = s.n_rows.saturating_sub(s.target_missing) * 6 / 10;
    let z = kiln_train::Sizing::for_rows(train_rows);
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Written by `kiln init {} --target {target}` from {} rows.",
        data.display(),
        s.n_rows
    );
    let _ = writeln!(
        t,
        "# Run it with `kiln run {}`; every choice below is a default to revise.",
        output.display()
    );
    let _ = writeln!(
        t,
        "# Completion in editors: `kiln schema > kiln.schema.json`, then `#:schema kiln.schema.json` as the first line."
    );
    let _ = writeln!(t, "version = 1\nname = {}\nseed = 1\n", quote(&name));
    let _ = writeln!(t, "[stages.data]\nuses = \"preprocess\"");
    let path = rel.display().to_string();
    let source = match &s.source {
        Source::Csv { delimiter: ',', .. } => format!(
            "{{ format = \"csv\", path = {}, null_values = [\"NA\", \"\"] }}",
            quote(&path)
        ),
        Source::Csv { delimiter, .. } => format!(
            "{{ format = \"csv\", path = {}, delimiter = {}, null_values = [\"NA\", \"\"] }}",
            quote(&path),
            quote(&delimiter.to_string())
        ),
        Source::Parquet { .. } => format!("{{ format = \"parquet\", path = {} }}", quote(&path)),
        _ => format!("{{ format = \"arrow\", path = {} }}", quote(&path)),
    };
    let _ = writeln!(t, "source = {source}");
    let _ = writeln!(t, "target = {}", quote(target));
    let task = if classification {
        "classification"
    } else {
        "regression"
    };
    let why = if classification {
        format!("{} classes", s.n_classes)
    } else {
        "a number with many values".to_string()
    };
    let _ = writeln!(t, "task = \"{task}\"   # the target holds {why}");
    if s.target_missing > 0 {
        let _ = writeln!(
            t,
            "# {} rows have no target: they are dropped and counted in profile.json",
            s.target_missing
        );
    }
    let _ = writeln!(t, "# Columns as read:");
    for c in &s.columns {
        let kind = match c.kind {
            ColumnKind::Number => "number",
            ColumnKind::Category => "category",
            ColumnKind::FreeText => "free text",
        };
        let fate = match c.dropped {
            Some(r) => format!("dropped: {}", r.describe()),
            None => "kept".into(),
        };
        let _ = writeln!(
            t,
            "#   {:<24} {kind:<9} {:>6} distinct {:>6} empty   {fate}",
            c.name, c.distinct, c.missing
        );
    }
    let _ = writeln!(t, "steps = [");
    for st in s.steps() {
        let _ = writeln!(t, "  {},", step(&st));
    }
    let _ = writeln!(t, "]");
    let _ = writeln!(
        t,
        "split = {{ valid = 0.2, test = 0.2{} }}\n",
        if classification {
            ", stratify = true"
        } else {
            ""
        }
    );
    let _ = writeln!(t, "[stages.train]\nuses = \"train\"\ninput = \"data\"");
    let _ = writeln!(
        t,
        "# sized for about {train_rows} training rows and {} features",
        s.n_features()
    );
    let hidden = z
        .hidden
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let embedded = s.embedded();
    if !embedded.is_empty() {
        let _ = writeln!(
            t,
            "# learned embeddings (model.embeddings: every `ordinal` column by default) of {}",
            embedded
                .iter()
                .map(|c| format!("`{}` ({} values)", c.name, c.distinct))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = writeln!(
        t,
        "model = {{ hidden = [{hidden}], dropout = {} }}",
        z.dropout
    );
    let _ = writeln!(
        t,
        "optimizer = {{ kind = \"adamw\", lr = 1e-3, weight_decay = 1e-4 }}"
    );
    let _ = writeln!(t, "epochs = {}\nbatch_size = {}", z.epochs, z.batch_size);
    let _ = writeln!(
        t,
        "early_stopping = {{ patience = {} }}   # the best epoch's weights are kept\n",
        z.patience
    );
    let _ = writeln!(
        t,
        "[stages.eval]\nuses = \"evaluate\"\ninputs = [\"train\"]"
    );
    let _ = writeln!(
        t,
        "# baselines (majority class / mean and a linear model) are scored beside the model;"
    );
    let _ = writeln!(
        t,
        "# add gates to block deploy below a bar, e.g. gates = {{ {} = \">= 0.9\" }}\n",
        if classification { "accuracy" } else { "r2" }
    );
    let _ = writeln!(
        t,
        "[stages.ship]\nuses = \"deploy\"\ninput = \"train\"\nrequires = [\"eval\"]"
    );
    Ok((t, s))
}
