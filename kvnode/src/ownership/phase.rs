//! Where a move coming into this node stands, as one explicit state, and the
//! only ways it may change.

use std::sync::atomic::{AtomicU8, Ordering};

/// The phase of a move at its destination.
///
/// ```text
/// fulva, rocksteady:  Prepared -> Serving -> ServingComplete
/// source-driven:      Prepared -> Copying -> Copied -> FinalPass -> FinalComplete
/// ```
/// Each pass starts once, after the one before it has applied everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MovePhase {
    /// Prepared: requests for the range get `Retry`; nothing is pulled.
    Prepared = 0,
    /// Source-driven: the copy pass runs while the source serves.
    Copying = 1,
    /// Source-driven: the copy pass has applied everything.
    Copied = 2,
    /// Source-driven: the final pass (what changed, under the source's lock).
    FinalPass = 3,
    /// Source-driven: the final pass has applied everything.
    FinalComplete = 4,
    /// Fulva, rocksteady: this node serves the range and pulls it.
    Serving = 5,
    /// Fulva, rocksteady: serving, and every object has been applied.
    ServingComplete = 6,
}

/// What happens to a move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveEvent {
    /// The coordinator starts the source-driven copy pass.
    BeginCopy,
    /// The coordinator starts the source-driven final pass.
    BeginFinal,
    /// The coordinator makes this node serve the range (fulva, rocksteady,
    /// or taking a range back).
    BeginServing,
    /// The pass's last batch has been applied.
    LastBatchApplied,
}

impl MovePhase {
    const ALL: [MovePhase; 7] = [
        MovePhase::Prepared,
        MovePhase::Copying,
        MovePhase::Copied,
        MovePhase::FinalPass,
        MovePhase::FinalComplete,
        MovePhase::Serving,
        MovePhase::ServingComplete,
    ];

    /// The phase after `event`, or `None` when the event does not apply
    /// here (a pass that already started, a batch after the end).
    pub fn after(self, event: MoveEvent) -> Option<MovePhase> {
        use MoveEvent::*;
        use MovePhase::*;
        match (self, event) {
            (Prepared, BeginCopy) => Some(Copying),
            (Copied, BeginFinal) => Some(FinalPass),
            (Prepared, BeginServing) => Some(Serving),
            (Copying, LastBatchApplied) => Some(Copied),
            (FinalPass, LastBatchApplied) => Some(FinalComplete),
            (Serving, LastBatchApplied) => Some(ServingComplete),
            _ => None,
        }
    }

    /// Whether the destination takes requests for the range.
    pub fn serves(self) -> bool {
        matches!(self, MovePhase::Serving | MovePhase::ServingComplete)
    }

    /// Whether the pass in force has applied every object of the range.
    pub fn complete(self) -> bool {
        matches!(self, MovePhase::Copied | MovePhase::FinalComplete | MovePhase::ServingComplete)
    }
}

/// A [`MovePhase`] shared between the data path (reads it on every request
/// for the range) and the move's tasks (change it).
pub struct SharedPhase(AtomicU8);

impl SharedPhase {
    /// A move just prepared.
    pub fn new() -> SharedPhase {
        SharedPhase(AtomicU8::new(MovePhase::Prepared as u8))
    }

    /// The phase now.
    #[inline]
    pub fn get(&self) -> MovePhase {
        let raw = self.0.load(Ordering::Acquire);
        MovePhase::ALL[usize::from(raw)]
    }

    /// Applies `event`: the phase before and after, or `None` (nothing
    /// changed) when the event does not apply in the phase found.
    pub fn apply(&self, event: MoveEvent) -> Option<(MovePhase, MovePhase)> {
        let mut current = self.get();
        loop {
            let next = current.after(event)?;
            match self.0.compare_exchange(current as u8, next as u8, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some((current, next)),
                Err(raw) => current = MovePhase::ALL[usize::from(raw)],
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MoveEvent::*;
    use MovePhase::*;

    fn run(events: &[MoveEvent]) -> Vec<Option<MovePhase>> {
        let phase = SharedPhase::new();
        events.iter().map(|e| phase.apply(*e).map(|(_, after)| after)).collect()
    }

    #[test]
    fn each_strategy_walks_its_own_path_and_nothing_else() {
        assert_eq!(run(&[BeginServing, LastBatchApplied]), [Some(Serving), Some(ServingComplete)]);
        assert_eq!(
            run(&[BeginCopy, LastBatchApplied, BeginFinal, LastBatchApplied]),
            [Some(Copying), Some(Copied), Some(FinalPass), Some(FinalComplete)]
        );
        // A pass starts once: a repeated start (a retried StartMigration) changes nothing.
        assert_eq!(run(&[BeginServing, BeginServing]), [Some(Serving), None]);
        assert_eq!(run(&[BeginCopy, BeginCopy]), [Some(Copying), None]);
        // The final pass only after the whole copy; nothing goes back.
        assert_eq!(run(&[BeginCopy, BeginFinal]), [Some(Copying), None]);
        assert_eq!(run(&[BeginFinal]), [None]);
        assert_eq!(
            run(&[BeginCopy, LastBatchApplied, BeginFinal, BeginCopy]),
            [Some(Copying), Some(Copied), Some(FinalPass), None]
        );
        assert_eq!(
            run(&[BeginCopy, BeginServing]),
            [Some(Copying), None],
            "a source-driven move never serves early"
        );
        assert_eq!(
            run(&[BeginServing, LastBatchApplied, LastBatchApplied]),
            [Some(Serving), Some(ServingComplete), None]
        );
        assert_eq!(run(&[LastBatchApplied]), [None], "nothing to complete before a pass");
    }

    #[test]
    fn serving_and_completeness_follow_the_phase() {
        for phase in MovePhase::ALL {
            let serves = matches!(phase, Serving | ServingComplete);
            assert_eq!(phase.serves(), serves, "{phase:?}");
            assert_eq!(MovePhase::ALL[phase as usize], phase, "the table matches the discriminants");
        }
        assert!(Copied.complete() && !Copying.complete() && !Serving.complete());
    }
}
