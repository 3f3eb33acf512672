//! The stage graph: checks that inputs and requirements name existing stages of the right
//! artifact kind, rejects cycles, and orders stages so each runs after what it needs.

use crate::StageKind;
use crate::file::{Ctx, StageDef};
use std::ops::Range;

type Edges = Vec<(String, Range<usize>)>;

/// Checks edges and orders the stages. `broken` holds ids of stages whose own definition
/// failed (already reported): references to them are not reported again.
pub(crate) fn order(
    ctx: &mut Ctx,
    stages: Vec<(StageDef, Edges, Edges)>,
    broken: &[String],
) -> Vec<StageDef> {
    let ids: Vec<String> = stages.iter().map(|(s, _, _)| s.id.clone()).collect();
    let kind_of = |id: &str| {
        stages
            .iter()
            .find(|(s, _, _)| s.id == id)
            .map(|(s, _, _)| s.kind)
    };
    let mut ok = true;
    for (s, inputs, requires) in &stages {
        let rule = crate::stage::kind(s.kind).inputs;
        let (allowed, what, min, max) = (rule.kinds, rule.what, rule.min, rule.max);
        if inputs.len() < min || inputs.len() > max {
            let msg = if min == 0 {
                format!("stage `{}` ({}) takes no `input`", s.id, s.kind.as_str())
            } else {
                format!(
                    "stage `{}` ({}) needs `input` naming {what}",
                    s.id,
                    s.kind.as_str()
                )
            };
            ctx.error(
                inputs
                    .first()
                    .map(|(_, sp)| sp.clone())
                    .unwrap_or(s.span.clone()),
                msg,
            );
            ok = false;
        }
        for (name, sp) in inputs.iter().chain(requires) {
            match kind_of(name) {
                None if broken.contains(name) => ok = false,
                None => {
                    let hint = crate::nearest(name, &ids)
                        .map(|n| format!("; did you mean `{n}`?"))
                        .unwrap_or_else(|| format!("; stages are: {}", ids.join(", ")));
                    ctx.error(
                        sp.clone(),
                        format!(
                            "stage `{}` refers to `{name}`, which is not a stage{hint}",
                            s.id
                        ),
                    );
                    ok = false;
                }
                Some(_) if name == &s.id => {
                    ctx.error(
                        sp.clone(),
                        format!("stage `{}` cannot depend on itself", s.id),
                    );
                    ok = false;
                }
                Some(_) => {}
            }
        }
        for (name, sp) in inputs {
            if let Some(k) = kind_of(name)
                && !allowed.contains(&k)
            {
                ctx.error(
                    sp.clone(),
                    format!(
                        "stage `{}` ({}) needs {what}, but `{name}` is {} stage",
                        s.id,
                        s.kind.as_str(),
                        crate::an(k.as_str())
                    ),
                );
                ok = false;
            }
        }
        for (name, sp) in requires {
            if let Some(k) = kind_of(name)
                && k != StageKind::Evaluate
            {
                ctx.error(sp.clone(), format!("`requires` names stages whose verdict must pass; `{name}` is {} stage, not an evaluate stage", crate::an(k.as_str())));
                ok = false;
            }
        }
    }
    if !ok {
        return Vec::new();
    }
    // Kahn's algorithm; ties broken by id, so the order is stable.
    let mut remaining = stages;
    let mut done: Vec<StageDef> = Vec::new();
    while !remaining.is_empty() {
        let ready = remaining.iter().position(|(s, _, _)| {
            s.inputs
                .iter()
                .chain(&s.requires)
                .all(|d| done.iter().any(|x| &x.id == d))
        });
        match ready {
            Some(i) => done.push(remaining.remove(i).0),
            None => {
                let cyc: Vec<String> = remaining.iter().map(|(s, _, _)| s.id.clone()).collect();
                let sp = remaining[0].0.span.clone();
                ctx.error(sp, format!("stages {} depend on each other in a cycle; remove one of the `input`/`requires` links", cyc.join(", ")));
                return Vec::new();
            }
        }
    }
    done
}
