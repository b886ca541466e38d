//! `fulva check PATH`: the linearizability checker ([`fulva_local::check`])
//! over a recorded history, with the offending window printed.

use fulva_local::check::{check_events, read_history, KeyResult};
use std::path::Path;

/// Runs `fulva check PATH`; returns whether the history is linearizable.
pub fn run(path: &Path) -> anyhow::Result<bool> {
    let events = read_history(path)?;
    let report = check_events(&events)?;
    crate::out!("{} events, {} keys, {} operations", events.len(), report.keys, report.operations);
    for (key, result) in &report.violations {
        if let KeyResult::Violation { window, stuck } = result {
            crate::out!("NOT linearizable: key {key:?}: no order of these operations explains the history:");
            for op in window {
                let mark = if op == stuck { "  <- cannot be placed" } else { "" };
                crate::out!(
                    "  process {:>4} {:<6} {:<24} call {:>14} ns  return {:>14}{mark}",
                    op.process,
                    format!("{:?}", op.f).to_lowercase(),
                    op.value.as_deref().map_or("absent".to_string(), |v| format!("{v:?}")),
                    op.call,
                    op.ret.map_or("unknown".to_string(), |r| format!("{r} ns")),
                );
            }
        }
    }
    for key in &report.unknown {
        crate::out!("UNKNOWN: key {key:?}: the search exceeded its budget");
    }
    if report.is_linearizable() {
        crate::out!("linearizable");
    }
    Ok(report.is_linearizable())
}
