//! `fulva check`: linearizability of a recorded history, key by key.
//!
//! Linearizability is compositional, so a history of a key-value store is
//! linearizable exactly when the sub-history of every key is linearizable as
//! a register (initially absent; a delete writes "absent"). Each key is checked
//! with the Wing–Gong search as improved by Lowe (and used by Porcupine):
//! operations are linearized in call order with backtracking, and states
//! already explored (set of linearized operations, register value) are
//! memoized. An operation whose outcome is unknown (`info`, or an invoke with
//! no completion) may take effect at any point after its call, or never.

use fulva_client::{Event, EventType, Function};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::path::Path;

/// One operation of a key's sub-history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// Process that ran it.
    pub process: u64,
    /// Read, write or delete.
    pub f: Function,
    /// Value written, or value read (`None` = absent).
    pub value: Option<String>,
    /// Call time.
    pub call: u64,
    /// Completion time; `None` when the outcome is unknown.
    pub ret: Option<u64>,
}

/// Result for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyResult {
    /// A linearization exists.
    Linearizable,
    /// None exists; the operations around the point where every order failed.
    Violation {
        /// Operations concurrent with the one that could not be placed, in call order.
        window: Vec<Operation>,
        /// The operation that could not be placed.
        stuck: Operation,
    },
    /// The search gave up (budget exhausted).
    Unknown,
}

/// Summary of a whole history.
#[derive(Clone, Debug)]
pub struct Report {
    /// Keys checked.
    pub keys: usize,
    /// Operations checked (completed plus unknown-outcome ones).
    pub operations: usize,
    /// Keys with a violation, and its window.
    pub violations: Vec<(String, KeyResult)>,
    /// Keys the search gave up on.
    pub unknown: Vec<String>,
}

impl Report {
    /// Whether every key is linearizable.
    pub fn is_linearizable(&self) -> bool {
        self.violations.is_empty() && self.unknown.is_empty()
    }
}

/// Errors reading a history.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// A line is not an event.
    #[error("line {line}: {message}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// Groups events into per-key operations. Failed operations are dropped (they
/// had no effect); invokes without a completion count as unknown outcomes.
pub fn operations_by_key(events: &[Event]) -> Result<BTreeMap<String, Vec<Operation>>, CheckError> {
    let mut open: HashMap<u64, (usize, &Event)> = HashMap::new();
    let mut by_key: BTreeMap<String, Vec<Operation>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        match e.kind {
            EventType::Invoke => {
                if let Some((line, _)) = open.insert(e.process, (i, e)) {
                    return Err(CheckError::Parse {
                        line: i + 1,
                        message: format!(
                            "process {} invoked again before completing line {}",
                            e.process,
                            line + 1
                        ),
                    });
                }
            }
            kind => {
                let Some((_, call)) = open.remove(&e.process) else {
                    return Err(CheckError::Parse {
                        line: i + 1,
                        message: format!("process {} completes nothing", e.process),
                    });
                };
                if call.key != e.key || call.f != e.f {
                    return Err(CheckError::Parse {
                        line: i + 1,
                        message: "completion does not match its invoke".into(),
                    });
                }
                let value = if call.f == Function::Read { e.value.clone() } else { call.value.clone() };
                let op = Operation {
                    process: e.process,
                    f: call.f,
                    value,
                    call: call.time_ns,
                    ret: (kind == EventType::Ok).then_some(e.time_ns),
                };
                match kind {
                    EventType::Ok => by_key.entry(call.key.clone()).or_default().push(op),
                    // A read with an unknown outcome constrains nothing.
                    EventType::Info if call.f != Function::Read => {
                        by_key.entry(call.key.clone()).or_default().push(op)
                    }
                    _ => {}
                }
            }
        }
    }
    for (_, call) in open.into_values() {
        if call.f != Function::Read {
            let value = call.value.clone();
            by_key.entry(call.key.clone()).or_default().push(Operation {
                process: call.process,
                f: call.f,
                value,
                call: call.time_ns,
                ret: None,
            });
        }
    }
    Ok(by_key)
}

/// Reads a JSON-lines history.
pub fn read_history(path: &Path) -> Result<Vec<Event>, CheckError> {
    let io = |source| CheckError::Io { path: path.display().to_string(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut events = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        events.push(
            serde_json::from_str(&line)
                .map_err(|e| CheckError::Parse { line: i + 1, message: e.to_string() })?,
        );
    }
    Ok(events)
}

/// Checks every key of `events`.
pub fn check_events(events: &[Event]) -> Result<Report, CheckError> {
    let by_key = operations_by_key(events)?;
    let mut report =
        Report { keys: by_key.len(), operations: 0, violations: Vec::new(), unknown: Vec::new() };
    for (key, ops) in by_key {
        report.operations += ops.len();
        match check_register(&ops, 20_000_000) {
            KeyResult::Linearizable => {}
            KeyResult::Unknown => report.unknown.push(key),
            violation => report.violations.push((key, violation)),
        }
    }
    Ok(report)
}

#[derive(Clone, Copy)]
struct Entry {
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
    /// For a call: index of its return entry.
    pair: usize,
}

const NIL: usize = usize::MAX;

/// Checks one key's operations as a register that starts absent, with at most
/// `budget` search steps.
pub fn check_register(ops: &[Operation], budget: u64) -> KeyResult {
    if ops.is_empty() {
        return KeyResult::Linearizable;
    }
    // Values as small integers; 0 is "absent".
    let mut ids: HashMap<&str, u32> = HashMap::new();
    let mut values: Vec<u32> = Vec::with_capacity(ops.len());
    for op in ops {
        values.push(match &op.value {
            None => 0,
            Some(s) => {
                let next = ids.len() as u32 + 1;
                *ids.entry(s.as_str()).or_insert(next)
            }
        });
    }

    // Entries sorted by time; calls before returns at equal times; unknown returns last.
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        order.push((op.call, false, i));
        order.push((op.ret.unwrap_or(u64::MAX), true, i));
    }
    order.sort_by_key(|&(t, is_return, i)| (t, is_return, i));
    let head = order.len();
    let mut entries: Vec<Entry> = order
        .iter()
        .enumerate()
        .map(|(k, &(_, is_return, op))| Entry {
            op,
            is_call: !is_return,
            prev: if k == 0 { head } else { k - 1 },
            next: if k + 1 == order.len() { NIL } else { k + 1 },
            pair: NIL,
        })
        .collect();
    // A sentinel head entry.
    entries.push(Entry { op: NIL, is_call: false, prev: NIL, next: 0, pair: NIL });
    let mut return_of = vec![NIL; ops.len()];
    for (k, e) in entries.iter().enumerate().take(head) {
        if !e.is_call {
            return_of[e.op] = k;
        }
    }
    for k in 0..head {
        if entries[k].is_call {
            entries[k].pair = return_of[entries[k].op];
        }
    }

    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state = 0u32;
    let mut stack: Vec<(usize, u32)> = Vec::new();
    let mut seen: HashSet<(Vec<u64>, u32)> = HashSet::new();
    let mut deepest: (usize, usize) = (0, NIL);
    let mut steps = 0u64;
    let mut cursor = entries[head].next;

    let lift = |entries: &mut Vec<Entry>, k: usize| {
        for x in [k, entries[k].pair] {
            let (p, n) = (entries[x].prev, entries[x].next);
            entries[p].next = n;
            if n != NIL {
                entries[n].prev = p;
            }
        }
    };
    let unlift = |entries: &mut Vec<Entry>, k: usize| {
        for x in [entries[k].pair, k] {
            let (p, n) = (entries[x].prev, entries[x].next);
            entries[p].next = x;
            if n != NIL {
                entries[n].prev = x;
            }
        }
    };

    while entries[head].next != NIL {
        steps += 1;
        if steps > budget {
            return KeyResult::Unknown;
        }
        if cursor == NIL {
            // Only possible after backtracking past the end: no order works.
            break;
        }
        let e = entries[cursor];
        if e.is_call {
            let op = &ops[e.op];
            let (ok, next_state) = match op.f {
                Function::Read => (values[e.op] == state, state),
                Function::Write | Function::Delete => (true, values[e.op]),
            };
            if ok {
                let mut next_lin = linearized.clone();
                next_lin[e.op / 64] |= 1 << (e.op % 64);
                if seen.insert((next_lin.clone(), next_state)) {
                    stack.push((cursor, state));
                    state = next_state;
                    linearized = next_lin;
                    lift(&mut entries, cursor);
                    cursor = entries[head].next;
                    continue;
                }
            }
            cursor = e.next;
        } else {
            if stack.len() >= deepest.0 {
                deepest = (stack.len(), e.op);
            }
            let Some((k, previous)) = stack.pop() else { break };
            state = previous;
            let op = entries[k].op;
            linearized[op / 64] &= !(1 << (op % 64));
            unlift(&mut entries, k);
            cursor = entries[k].next;
        }
    }
    if entries[head].next == NIL {
        return KeyResult::Linearizable;
    }
    let stuck = ops[if deepest.1 == NIL { 0 } else { deepest.1 }].clone();
    let end = stuck.ret.unwrap_or(u64::MAX);
    let mut window: Vec<Operation> =
        ops.iter().filter(|o| o.call <= end && o.ret.unwrap_or(u64::MAX) >= stuck.call).cloned().collect();
    window.sort_by_key(|o| o.call);
    KeyResult::Violation { window, stuck }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(process: u64, f: Function, value: Option<&str>, call: u64, ret: Option<u64>) -> Operation {
        Operation { process, f, value: value.map(str::to_string), call, ret }
    }
    use Function::{Delete, Read, Write};

    #[test]
    fn sequential_history_is_linearizable() {
        let ops = [
            op(0, Write, Some("a"), 0, Some(1)),
            op(0, Read, Some("a"), 2, Some(3)),
            op(0, Delete, None, 4, Some(5)),
            op(0, Read, None, 6, Some(7)),
        ];
        assert_eq!(check_register(&ops, 1_000), KeyResult::Linearizable);
    }

    #[test]
    fn stale_read_after_a_completed_write_is_caught() {
        let ops = [
            op(0, Write, Some("a"), 0, Some(1)),
            op(0, Write, Some("b"), 2, Some(3)),
            op(1, Read, Some("a"), 4, Some(5)),
        ];
        let KeyResult::Violation { stuck, .. } = check_register(&ops, 1_000) else { panic!("missed") };
        assert_eq!(stuck.process, 1);
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        let ops = [
            op(0, Write, Some("a"), 0, Some(10)),
            op(1, Write, Some("b"), 1, Some(9)),
            op(2, Read, Some("a"), 11, Some(12)),
            op(3, Read, Some("a"), 13, Some(14)),
        ];
        assert_eq!(check_register(&ops, 1_000), KeyResult::Linearizable);
        // But once a later read saw "b" after "a" was read, "a" cannot come back.
        let ops = [
            op(0, Write, Some("a"), 0, Some(10)),
            op(1, Write, Some("b"), 1, Some(9)),
            op(2, Read, Some("b"), 11, Some(12)),
            op(3, Read, Some("a"), 13, Some(14)),
        ];
        assert!(matches!(check_register(&ops, 1_000), KeyResult::Violation { .. }));
    }

    #[test]
    fn a_deleted_key_coming_back_is_caught() {
        let ops = [
            op(0, Write, Some("a"), 0, Some(1)),
            op(0, Delete, None, 2, Some(3)),
            op(1, Read, Some("a"), 4, Some(5)),
        ];
        assert!(matches!(check_register(&ops, 1_000), KeyResult::Violation { .. }));
    }

    #[test]
    fn unknown_writes_may_or_may_not_take_effect() {
        let took_effect = [op(0, Write, Some("x"), 0, None), op(1, Read, Some("x"), 5, Some(6))];
        assert_eq!(check_register(&took_effect, 1_000), KeyResult::Linearizable);
        let never = [op(0, Write, Some("x"), 0, None), op(1, Read, None, 5, Some(6))];
        assert_eq!(check_register(&never, 1_000), KeyResult::Linearizable);
        // But it cannot take effect before it was called.
        let early = [op(1, Read, Some("x"), 0, Some(1)), op(0, Write, Some("x"), 5, None)];
        assert!(matches!(check_register(&early, 1_000), KeyResult::Violation { .. }));
    }

    #[test]
    fn events_group_into_operations() {
        let ev = |process, kind, f, value: Option<&str>, time_ns| Event {
            process,
            kind,
            f,
            key: "k".into(),
            value: value.map(str::to_string),
            time_ns,
        };
        let events = [
            ev(0, EventType::Invoke, Write, Some("a"), 0),
            ev(1, EventType::Invoke, Read, None, 1),
            ev(0, EventType::Ok, Write, Some("a"), 2),
            ev(1, EventType::Ok, Read, Some("a"), 3),
            ev(2, EventType::Invoke, Write, Some("b"), 4),
            ev(2, EventType::Info, Write, Some("b"), 5),
            ev(3, EventType::Invoke, Read, None, 6),
            ev(3, EventType::Fail, Read, None, 7),
        ];
        let by_key = operations_by_key(&events).unwrap();
        let ops = &by_key["k"];
        assert_eq!(ops.len(), 3, "the failed read is dropped: {ops:?}");
        assert_eq!(ops[2].ret, None);
        assert!(check_events(&events).unwrap().is_linearizable());
    }
}
