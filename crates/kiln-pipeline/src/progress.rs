//! progress.json: a [`Progress`] that passes everything on (to the terminal's bars) and
//! keeps `<run>/progress.json` current — the running stage, its phase and every epoch
//! finished — rewritten atomically at most a few times a second, so a reader (a UI)
//! polls it without any lock.

use kiln_core::Progress;
use kiln_core::artifact::progress::{EpochPoint, RunProgress};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Least time between two writes for mere progress within a phase.
const EVERY: Duration = Duration::from_millis(300);

/// Progress passed on to `inner` and written to a run folder.
pub(crate) struct FileProgress<'a> {
    inner: &'a dyn Progress,
    dir: PathBuf,
    state: Mutex<(RunProgress, Option<Instant>)>,
}

impl<'a> FileProgress<'a> {
    /// Progress for the run in `dir`, passed on to `inner`.
    pub fn new(inner: &'a dyn Progress, dir: &Path) -> Self {
        FileProgress {
            inner,
            dir: dir.to_path_buf(),
            state: Mutex::new((RunProgress::default(), None)),
        }
    }

    /// A new stage begins (`""` when the run is over).
    pub fn stage(&self, id: &str) {
        self.update(true, |p| {
            *p = RunProgress {
                stage: id.to_string(),
                ..Default::default()
            };
        });
    }

    fn update(&self, force: bool, f: impl FnOnce(&mut RunProgress)) {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (p, last) = &mut *guard;
        f(p);
        if force || last.is_none_or(|t| t.elapsed() >= EVERY) {
            p.updated = crate::cache::now();
            // progress is informational: a failed write must not fail the run
            if let Err(e) = kiln_core::artifact::save(&self.dir, p) {
                tracing::debug!("progress.json: {e}");
            }
            *last = Some(Instant::now());
        }
    }
}

impl Progress for FileProgress<'_> {
    fn start(&self, name: &str, total: u64) {
        self.inner.start(name, total);
        self.update(true, |p| {
            p.phase = name.to_string();
            p.done = 0;
            p.total = total;
        });
    }

    fn advance(&self, n: u64) {
        self.inner.advance(n);
        self.update(false, |p| p.done += n);
    }

    fn message(&self, msg: &str) {
        self.inner.message(msg);
    }

    fn finish(&self) {
        self.inner.finish();
        self.update(true, |p| p.done = p.total);
    }

    fn epoch(&self, point: &EpochPoint) {
        self.inner.epoch(point);
        self.update(true, |p| p.epochs.push(point.clone()));
    }
}
