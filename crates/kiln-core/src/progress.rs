//! A progress-reporting trait so library stages can report progress without owning a UI;
//! the `kiln` binary implements it with indicatif bars.

/// Receives progress of a long step. Implementations must be cheap to call.
pub trait Progress: Send + Sync {
    /// A new phase begins, with `total` units of work (0 when unknown).
    fn start(&self, name: &str, total: u64);
    /// `n` more units are done.
    fn advance(&self, n: u64);
    /// A short status message for the current phase (e.g. loss and accuracy).
    fn message(&self, msg: &str);
    /// The phase is over.
    fn finish(&self);
    /// A training epoch finished (what a live view plots); ignored by default.
    fn epoch(&self, _point: &crate::artifact::progress::EpochPoint) {}
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn message(&self, _: &str) {}
    fn finish(&self) {}
}
