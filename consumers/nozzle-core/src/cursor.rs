//! Where a nozzle stands in the firehose, kept across restarts: the cursor of the last frame
//! every destination has dealt with, in a small file written atomically.
//!
//! Flow: the reader loop, after handing a frame's envelopes to the destination queues, records
//! a checkpoint (the frame's cursor and, per destination it pushed to, how many entries that
//! destination had been given) → [`Checkpoints`] → the keeper ([`keep`]) settles the oldest
//! checkpoints whose destinations have all resolved their entries (delivered, or lost and
//! counted) and writes the newest settled cursor with [`CursorFile::store`] → on restart,
//! [`CursorFile::load`] gives it back and the nozzle resumes there
//! ([`crate::FirehoseReader::resume`]).
//!
//! Invariants:
//! - at-least-once: a cursor is written only after every destination that was given that
//!   frame's envelopes has resolved them, so a nozzle killed at any moment (SIGKILL included)
//!   and restarted within the dopplers' window loses nothing;
//! - duplicates are bounded and counted: what a destination took after the last settled frame
//!   is sent again after a restart; the file says how many entries that was (`ahead`, dealt
//!   with: counted in `nozzle.duplicates`) and how many were being delivered (`unsure`, at
//!   most one batch per destination: counted in `nozzle.duplicates_unsure`, duplicates only if
//!   the destination got them before the kill). The file is rewritten whenever either changes,
//!   not only when a frame settles; a sender that stores through the [`Journal`] around each
//!   batch (a syslog drain) leaves it never behind the destination, so the duplicates a
//!   destination sees lie between the two counts; other senders' files lag by at most
//!   [`KEEP_INTERVAL`];
//! - the file is replaced by rename, so it is always one whole cursor, never half of one;
//! - bounded: at most [`MAX_CHECKPOINTS`] checkpoints wait; past it the oldest is dropped,
//!   which only makes the next written cursor coarser (never wrong);
//! - paced: with a cursor the firehose holds what the nozzle has not read yet (the dopplers'
//!   rings), so the reader waits ([`Keeper::pace`]) while a destination that is delivering has
//!   more than [`PACE_IN_FLIGHT`] entries unresolved, instead of reading on and evicting them
//!   from its queue (a restarted nozzle catching up reads far faster than a drain writes). It
//!   never waits for a destination that resolved nothing for [`PACE_STALL`], counted across
//!   frames (one stall in all, not one per frame): one stuck drain does not hold up the
//!   others, it loses its oldest entries as without a cursor.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::Error;

/// Checkpoints waiting to settle before the oldest is dropped.
pub const MAX_CHECKPOINTS: usize = 4096;
/// How often the keeper looks for settled checkpoints. Entries a destination took after the
/// last store are sent again after a SIGKILL without being counted, unless its sender stores
/// through the [`Journal`] itself (a syslog drain does).
pub const KEEP_INTERVAL: Duration = Duration::from_millis(5);
/// Entries a destination may hold unresolved (queued or being sent) before the reader waits for
/// it, unless it says otherwise ([`Progress::pace_limit`]; a tracked [`crate::DestinationQueue`]
/// says half its `max_items`): half the default destination queue (10,000), so a paced queue
/// never evicts.
pub const PACE_IN_FLIGHT: u64 = 5_000;
/// How long a destination may resolve nothing before the reader stops waiting for it.
pub const PACE_STALL: Duration = Duration::from_millis(500);

/// A destination's running totals, as the checkpoints see them.
pub trait Progress: Send + Sync + std::fmt::Debug {
    /// Entries handed to the destination so far.
    fn pushed(&self) -> u64;
    /// Entries it has dealt with so far: delivered, or lost and counted. Entries resolve in
    /// the order they were pushed.
    fn resolved(&self) -> u64;
    /// Entries its sender has taken so far: the resolved ones and those being delivered right
    /// now (which the destination may or may not have when the nozzle is killed). Default
    /// [`Progress::resolved`], for a destination that cannot tell.
    fn taken(&self) -> u64 {
        self.resolved()
    }
    /// Entries it may hold unresolved before the reader waits for it ([`Keeper::pace`]);
    /// `None` for a destination that is never waited for because being behind costs it
    /// nothing (it folds what it is given instead of queueing it, e.g. an aggregator).
    /// Default [`PACE_IN_FLIGHT`].
    fn pace_limit(&self) -> Option<u64> {
        Some(PACE_IN_FLIGHT)
    }
}

/// What the cursor file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// The cursor of the last frame every destination dealt with.
    pub cursor: String,
    /// Entries past that frame the destinations had already dealt with when this was written:
    /// they are sent again after a restart (counted as duplicates).
    pub ahead: u64,
    /// Entries past `ahead` that were being delivered when this was written: sent again after
    /// a restart, and duplicates if the destination had taken them before the nozzle stopped
    /// (counted as possible duplicates).
    pub unsure: u64,
}

/// The cursor file: `cursor <text>` and `ahead <n>` lines, replaced atomically.
#[derive(Debug, Clone)]
pub struct CursorFile {
    path: PathBuf,
}

impl CursorFile {
    /// The file at `path` (it need not exist yet; its directory must).
    #[must_use]
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The nozzle's `cursor_file` setting opened: the file (when set) and what it kept (when
    /// it exists), so the nozzle resumes from there.
    ///
    /// # Errors
    /// The file exists but cannot be read or is not a cursor file.
    pub fn open(path: Option<&str>) -> Result<(Option<Self>, Option<Saved>), Error> {
        let Some(file) = path.map(Self::new) else {
            return Ok((None, None));
        };
        let saved = file.load()?;
        Ok((Some(file), saved))
    }

    /// Where it lives.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What was stored; `None` when there is no file yet.
    ///
    /// # Errors
    /// The file exists but cannot be read or is not a cursor file.
    pub fn load(&self) -> Result<Option<Saved>, Error> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.bad(format!("cannot be read: {e}"))),
        };
        let mut cursor = None;
        let (mut ahead, mut unsure) = (0, 0);
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("cursor", c)) if !c.is_empty() && c.len() <= 4096 => {
                    cursor = Some(c.to_owned());
                }
                Some(("ahead", n)) => ahead = n.parse().unwrap_or(0),
                Some(("unsure", n)) => unsure = n.parse().unwrap_or(0),
                _ => {}
            }
        }
        match cursor {
            Some(cursor) => Ok(Some(Saved {
                cursor,
                ahead,
                unsure,
            })),
            None => Err(self.bad("holds no cursor; delete it to start from live data".to_owned())),
        }
    }

    /// Replaces the file with `saved` (write beside it, then rename over it).
    ///
    /// # Errors
    /// The directory is not writable.
    pub fn store(&self, saved: &Saved) -> Result<(), Error> {
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let body = format!(
            "cursor {}\nahead {}\nunsure {}\n",
            saved.cursor, saved.ahead, saved.unsure
        );
        std::fs::write(&tmp, body)
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .map_err(|e| self.bad(format!("cannot be written: {e}")))
    }

    fn bad(&self, message: String) -> Error {
        Error::Config {
            field: "cursor_file".to_owned(),
            message: format!("{}: {message}", self.path.display()),
        }
    }
}

/// Checks a nozzle's `cursor_file` setting: a non-empty path whose directory exists.
///
/// # Errors
/// [`Error::Config`] naming `cursor_file` and what to do.
pub fn validate_cursor_file(file: &str) -> Result<(), Error> {
    let dir = Path::new(file)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if file.is_empty() || !dir.is_dir() {
        return Err(Error::Config {
            field: "cursor_file".to_owned(),
            message: format!(
                "{file:?}: its directory must exist; create it, or leave cursor_file out"
            ),
        });
    }
    Ok(())
}

#[derive(Debug)]
struct Checkpoint {
    cursor: Arc<str>,
    marks: Vec<(Arc<dyn Progress>, u64)>,
}

/// Frames handed to destinations and not yet settled, oldest first.
#[derive(Debug, Default)]
pub struct Checkpoints {
    pending: VecDeque<Checkpoint>,
    /// The newest settled checkpoint, with its marks (to count what is ahead of it).
    settled: Option<Checkpoint>,
    /// The `ahead` and `unsure` last handed out by [`Checkpoints::settle`].
    told: (u64, u64),
    /// The destinations the newest checkpoint was handed to (what [`Keeper::pace`] watches).
    latest: Vec<Arc<dyn Progress>>,
}

impl Checkpoints {
    /// Records that everything up to `cursor` has been handed to the destinations in `marks`,
    /// each with its [`Progress::pushed`] total right after.
    pub fn record(&mut self, cursor: Arc<str>, marks: Vec<(Arc<dyn Progress>, u64)>) {
        if self.pending.len() >= MAX_CHECKPOINTS {
            self.pending.pop_front();
        }
        self.latest.clear();
        self.latest.extend(marks.iter().map(|(p, _)| Arc::clone(p)));
        self.pending.push_back(Checkpoint { cursor, marks });
    }

    /// Settles what the destinations have dealt with; returns what to store when the settled
    /// cursor moved, or when the destinations took or dealt with more past it (what a restart
    /// would send again, so the file must say so even while no further frame settles).
    pub fn settle(&mut self) -> Option<Saved> {
        let mut moved = false;
        while let Some(front) = self.pending.front() {
            if !front.marks.iter().all(|(p, at)| p.resolved() >= *at) {
                break;
            }
            self.settled = self.pending.pop_front();
            moved = true;
        }
        let settled = self.settled.as_ref()?;
        // Every destination is sent its own entries past the cursor again: they add up.
        let (mut ahead, mut unsure) = (0, 0);
        for (p, at) in &settled.marks {
            // Taken first: an entry resolving between the two reads is then counted unsure,
            // never missed.
            let taken = p.taken().saturating_sub(*at);
            let resolved = p.resolved().saturating_sub(*at);
            ahead += resolved;
            unsure += taken.saturating_sub(resolved);
        }
        if !moved && (ahead, unsure) == self.told {
            return None;
        }
        self.told = (ahead, unsure);
        Some(Saved {
            cursor: settled.cursor.to_string(),
            ahead,
            unsure,
        })
    }
}

/// The checkpoints and the file they are stored in, shared by the [`keep`] task and the
/// senders: a sender that delivers by writes it cannot take back (a syslog drain) stores
/// through it right after taking a batch and right after delivering it
/// ([`Journal::store`]), so what a SIGKILL leaves in the file is never behind what the
/// destination may hold; the keeper's periodic store covers everyone else.
#[derive(Debug, Clone)]
pub struct Journal {
    inner: Arc<JournalInner>,
}

#[derive(Debug)]
struct JournalInner {
    checkpoints: Mutex<Checkpoints>,
    file: CursorFile,
    /// Held across settle and write, so stores from several tasks land in order.
    writing: Mutex<()>,
}

impl Journal {
    /// A journal stored in `file`.
    #[must_use]
    pub fn new(file: CursorFile) -> Self {
        Self {
            inner: Arc::new(JournalInner {
                checkpoints: Mutex::new(Checkpoints::default()),
                file,
                writing: Mutex::new(()),
            }),
        }
    }

    fn checkpoints(&self) -> std::sync::MutexGuard<'_, Checkpoints> {
        self.inner
            .checkpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores the newest settled cursor, with what is ahead of it and being delivered, when
    /// any of that changed since the last store. A small synchronous write: call it from a
    /// sender only where the file must not lag (see the type's doc). A failed write is
    /// logged and retried with the next one.
    pub fn store(&self) {
        let _writing = self
            .inner
            .writing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let saved = self.checkpoints().settle();
        if let Some(saved) = saved
            && let Err(e) = self.inner.file.store(&saved)
        {
            tracing::warn!(error = %e, "cannot keep the firehose cursor");
        }
    }
}

/// A running nozzle's cursor keeping: the checkpoints its reader records and the [`keep`] task
/// that stores them.
#[derive(Debug)]
pub struct Keeper {
    journal: Journal,
    /// What the reader's last wait saw ([`Keeper::pace`]).
    paced: PaceMemory,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// The destinations' resolved total at the end of the last wait and when it last moved: a
/// destination that is stuck costs the reader one [`PACE_STALL`], not one per frame (which
/// would slow the whole firehose read to two frames a second and starve the other
/// destinations).
#[derive(Debug, Default)]
struct PaceMemory(Mutex<Option<(u64, tokio::time::Instant)>>);

impl PaceMemory {
    fn get(&self) -> Option<(u64, tokio::time::Instant)> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, last: u64, moved: tokio::time::Instant) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some((last, moved));
    }
}

impl Keeper {
    /// Starts keeping the cursor in `file`; `None` for a nozzle that keeps none.
    #[must_use]
    pub fn start(file: Option<CursorFile>) -> Option<Self> {
        Self::with_journal(file.map(Journal::new))
    }

    /// Starts keeping the cursor through `journal` (one its senders store through too);
    /// `None` for a nozzle that keeps none.
    #[must_use]
    pub fn with_journal(journal: Option<Journal>) -> Option<Self> {
        let journal = journal?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(keep(journal.clone(), stop.clone()));
        Some(Self {
            journal,
            paced: PaceMemory::default(),
            stop,
            task,
        })
    }

    /// Records that everything up to `cursor` was handed to the destinations in `marks` (see
    /// [`Checkpoints::record`]).
    pub fn record(&self, cursor: &str, marks: Vec<(Arc<dyn Progress>, u64)>) {
        self.journal.checkpoints().record(Arc::from(cursor), marks);
    }

    /// Waits while a destination of the newest checkpoint holds more than its
    /// [`Progress::pace_limit`] entries unresolved and is still resolving some (see the
    /// module's invariants); returns at once when none does, and when `shutdown` fires.
    /// Cancel-safe: dropping the future only ends the wait.
    pub async fn pace(&self, shutdown: &CancellationToken) {
        let latest = self.journal.checkpoints().latest.clone();
        pace(&latest, &self.paced, shutdown).await;
    }

    /// Stores the newest settled cursor once more and ends; call it once the senders are done.
    pub async fn finish(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Waits while one of `destinations` has more than its [`Progress::pace_limit`] entries
/// unresolved, unless they resolved nothing for [`PACE_STALL`] (counted across waits through
/// `memory`).
async fn pace(
    destinations: &[Arc<dyn Progress>],
    memory: &PaceMemory,
    shutdown: &CancellationToken,
) {
    let busy = |d: &Arc<dyn Progress>| {
        d.pace_limit()
            .is_some_and(|limit| d.pushed().saturating_sub(d.resolved()) > limit)
    };
    if !destinations.iter().any(busy) {
        return;
    }
    let resolved = || destinations.iter().map(|d| d.resolved()).sum::<u64>();
    let mut last = resolved();
    // Still where the last wait left them: the stall goes on from when they last moved.
    let mut moved = match memory.get() {
        Some((before, at)) if before == last => at,
        _ => tokio::time::Instant::now(),
    };
    loop {
        // Only destinations that are delivering are waited for; a stuck one loses its oldest.
        if !destinations.iter().any(busy) || moved.elapsed() >= PACE_STALL {
            memory.set(last, moved);
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(1)) => {}
            () = shutdown.cancelled() => return,
        }
        let now = resolved();
        if now != last {
            last = now;
            moved = tokio::time::Instant::now();
        }
    }
}

/// The keeper: every [`KEEP_INTERVAL`], and once more when `stop` fires, stores the newest
/// settled cursor ([`Journal::store`]).
pub async fn keep(journal: Journal, stop: CancellationToken) {
    let mut tick = tokio::time::interval(KEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            () = stop.cancelled() => true,
        };
        journal.store();
        if last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[derive(Debug, Default)]
    struct Dest {
        pushed: AtomicU64,
        resolved: AtomicU64,
        /// Resolved plus being delivered (0: as resolved).
        taken: AtomicU64,
        /// Never waited for (an aggregating destination).
        folds: bool,
    }

    impl Progress for Dest {
        fn pushed(&self) -> u64 {
            self.pushed.load(Ordering::Relaxed)
        }
        fn resolved(&self) -> u64 {
            self.resolved.load(Ordering::Relaxed)
        }
        fn taken(&self) -> u64 {
            self.taken.load(Ordering::Relaxed).max(self.resolved())
        }
        fn pace_limit(&self) -> Option<u64> {
            (!self.folds).then_some(100)
        }
    }

    #[test]
    fn a_cursor_settles_only_when_every_destination_dealt_with_its_frame() {
        let (a, b) = (Arc::new(Dest::default()), Arc::new(Dest::default()));
        let mut c = Checkpoints::default();
        a.pushed.store(10, Ordering::Relaxed);
        b.pushed.store(5, Ordering::Relaxed);
        let marks = |n_a, n_b| -> Vec<(Arc<dyn Progress>, u64)> {
            vec![(a.clone(), n_a), (b.clone(), n_b)]
        };
        c.record("one".into(), marks(10, 5));
        c.record("two".into(), marks(20, 5));
        a.resolved.store(10, Ordering::Relaxed);
        assert_eq!(c.settle(), None, "b has not dealt with its five yet");
        b.resolved.store(5, Ordering::Relaxed);
        a.resolved.store(13, Ordering::Relaxed);
        assert_eq!(
            c.settle(),
            Some(Saved {
                cursor: "one".into(),
                ahead: 3,
                unsure: 0
            })
        );
        assert_eq!(c.settle(), None, "nothing moved");
        a.resolved.store(15, Ordering::Relaxed);
        assert_eq!(
            c.settle(),
            Some(Saved {
                cursor: "one".into(),
                ahead: 5,
                unsure: 0
            }),
            "no frame settled, but more was dealt with past it: stored again"
        );
        b.resolved.store(5, Ordering::Relaxed);
        assert_eq!(c.settle(), None, "nothing new");
        a.resolved.store(20, Ordering::Relaxed);
        assert_eq!(c.settle().unwrap().cursor, "two");
    }

    #[test]
    fn a_batch_being_delivered_past_the_cursor_is_stored_as_unsure_until_it_is_dealt_with() {
        let a = Arc::new(Dest::default());
        let mut c = Checkpoints::default();
        a.pushed.store(100, Ordering::Relaxed);
        c.record("one".into(), vec![(a.clone() as Arc<dyn Progress>, 40)]);
        c.record("two".into(), vec![(a.clone() as Arc<dyn Progress>, 100)]);
        a.resolved.store(40, Ordering::Relaxed);
        a.taken.store(90, Ordering::Relaxed);
        let saved = c.settle().unwrap();
        assert_eq!(
            (saved.cursor.as_str(), saved.ahead, saved.unsure),
            ("one", 0, 50)
        );
        a.resolved.store(90, Ordering::Relaxed);
        let saved = c
            .settle()
            .expect("delivered: stored again though no frame settled");
        assert_eq!((saved.ahead, saved.unsure), (50, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_reader_waits_for_a_delivering_destination_but_not_for_a_stuck_one() {
        let d = Arc::new(Dest::default());
        let all: Vec<Arc<dyn Progress>> = vec![d.clone()];
        let shutdown = CancellationToken::new();
        d.pushed.store(100, Ordering::Relaxed);
        tokio::time::timeout(
            Duration::from_millis(1),
            pace(&all, &PaceMemory::default(), &shutdown),
        )
        .await
        .expect("within the limit: no wait");
        d.pushed.store(300, Ordering::Relaxed);
        // Delivering: the wait lasts while it works through its backlog, past PACE_STALL.
        let waiting = tokio::spawn({
            let (all, shutdown) = (all.clone(), shutdown.clone());
            async move { pace(&all, &PaceMemory::default(), &shutdown).await }
        });
        for step in 1..=40u64 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(!waiting.is_finished(), "returned while still 200 behind");
            d.resolved.store(step, Ordering::Relaxed);
        }
        d.resolved.store(200, Ordering::Relaxed);
        tokio::time::timeout(Duration::from_millis(10), waiting)
            .await
            .expect("back within the limit")
            .unwrap();
        // Stuck: given up after PACE_STALL.
        d.pushed.store(1_000, Ordering::Relaxed);
        let started = tokio::time::Instant::now();
        pace(&all, &PaceMemory::default(), &shutdown).await;
        assert!(started.elapsed() >= PACE_STALL);
        assert!(started.elapsed() < PACE_STALL * 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_destination_costs_the_reader_one_stall_not_one_per_frame() {
        let d = Arc::new(Dest::default());
        let all: Vec<Arc<dyn Progress>> = vec![d.clone()];
        let (memory, shutdown) = (PaceMemory::default(), CancellationToken::new());
        d.pushed.store(1_000, Ordering::Relaxed);
        let started = tokio::time::Instant::now();
        pace(&all, &memory, &shutdown).await;
        assert!(
            started.elapsed() >= PACE_STALL,
            "first given up after a stall"
        );
        for _ in 0..10 {
            let frame = tokio::time::Instant::now();
            pace(&all, &memory, &shutdown).await;
            assert_eq!(frame.elapsed(), Duration::ZERO, "still stuck: no wait");
        }
        // Delivering again: waited for again.
        d.resolved.store(10, Ordering::Relaxed);
        let waiting = tokio::spawn({
            let all = all.clone();
            async move { pace(&all, &memory, &shutdown).await }
        });
        tokio::time::sleep(PACE_STALL / 2).await;
        assert!(!waiting.is_finished(), "it moved: the reader waits for it");
        d.resolved.store(1_000, Ordering::Relaxed);
        tokio::time::timeout(Duration::from_millis(10), waiting)
            .await
            .expect("caught up")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_destination_without_a_pace_limit_is_never_waited_for() {
        let folding = Arc::new(Dest {
            folds: true,
            ..Dest::default()
        });
        folding.pushed.store(1_000_000, Ordering::Relaxed);
        let all: Vec<Arc<dyn Progress>> = vec![folding];
        let started = tokio::time::Instant::now();
        pace(&all, &PaceMemory::default(), &CancellationToken::new()).await;
        assert_eq!(started.elapsed(), Duration::ZERO, "far behind, yet no wait");
    }

    #[test]
    fn the_file_round_trips_and_a_missing_file_is_no_cursor() {
        let dir = std::env::temp_dir().join(format!("nozzle-cursor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = CursorFile::new(dir.join("cursor"));
        let _ = std::fs::remove_file(file.path());
        assert_eq!(file.load().unwrap(), None);
        let saved = Saved {
            cursor: "AQEabc".into(),
            ahead: 7,
            unsure: 3,
        };
        file.store(&saved).unwrap();
        assert_eq!(file.load().unwrap(), Some(saved));
        std::fs::write(file.path(), "garbage").unwrap();
        assert!(file.load().unwrap_err().to_string().contains("cursor_file"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
