//! Filesystem queues: one directory per queue, one file per entry.
//!
//! An entry is named `<20-digit nanoseconds since the epoch>-<key>.json`, so sorting the names
//! gives arrival order. It is written as a dot-named temporary file, fsynced, renamed into place
//! and the directory fsynced, so a reader never sees half an entry and an entry that was
//! acknowledged survives a crash or power cut. Readers ignore dot files (temporaries in flight)
//! and anything not ending in `.json`.
//!
//! A [`Consumer`] starts its inotify watch before its first scan, so a file that lands while the
//! scan runs is either in the scan or wakes the watch: nothing slips between the two. Events are
//! only wake-ups; what is handed out always comes from a fresh directory listing, and names already
//! handed out are skipped until they are completed (removed) or released.

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// inotify drops events when its queue overflows; a slow rescan bounds how long an entry can wait
/// if that ever happens. It is not how entries are normally found.
const SAFETY_RESCAN: Duration = Duration::from_secs(10);

/// How often a consumer without a watch looks for new entries.
const POLL_WITHOUT_WATCH: Duration = Duration::from_secs(1);

/// Temporaries older than this were left by a process that died mid-write.
const STALE_TEMPORARY: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("watching {path}: {source}")]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
    #[error("invalid queue entry name `{0}`")]
    InvalidName(String),
}

impl QueueError {
    fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Self + 'a {
        move |source| Self::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }

    /// The underlying I/O error kind, if any (the HTTP layer maps a full or read-only disk to 503).
    pub fn io_kind(&self) -> Option<ErrorKind> {
        match self {
            Self::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}

/// One queue directory.
#[derive(Debug, Clone)]
pub struct Queue {
    dir: PathBuf,
}

/// An entry handed out by [`Consumer::next_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub contents: Vec<u8>,
}

/// Is `key` usable inside an entry name? (It ends up in a file name, so no `/`, no leading dot.)
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 200
        && !key.starts_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Is `name` a (visible) entry name that readers pick up?
fn is_entry_name(name: &str) -> bool {
    name.strip_suffix(".json").is_some_and(valid_key)
}

/// Nanoseconds since the epoch, strictly increasing within this process so that two pushes in
/// the same nanosecond still sort in push order.
fn unique_nanos() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// The entry name `push` would give `key` at `nanos`.
pub fn entry_name(nanos: u64, key: &str) -> String {
    format!("{nanos:020}-{key}.json")
}

/// A name for a new entry with `key`, sorting after every entry this process named before (for
/// a caller that must record the name before it writes the entry).
pub fn fresh_entry_name(key: &str) -> String {
    entry_name(unique_nanos(), key)
}

fn sync_dir(dir: &Path) -> Result<(), QueueError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(QueueError::io("syncing", dir))
}

impl Queue {
    /// Opens the queue at `dir`, creating the directory (and its parents) if needed.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Queue, QueueError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(QueueError::io("creating", &dir))?;
        Ok(Queue { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Durably adds an entry named `<20-digit ns>-<key>.json` and returns the name.
    pub fn push(&self, key: &str, contents: &[u8]) -> Result<String, QueueError> {
        if !valid_key(key) {
            return Err(QueueError::InvalidName(key.to_owned()));
        }
        let name = entry_name(unique_nanos(), key);
        self.push_named(&name, contents)?;
        Ok(name)
    }

    /// Durably adds an entry under a caller-chosen name. Writing the same name again replaces the
    /// entry atomically, which is what makes a repeat after a crash harmless.
    pub fn push_named(&self, name: &str, contents: &[u8]) -> Result<(), QueueError> {
        if !is_entry_name(name) {
            return Err(QueueError::InvalidName(name.to_owned()));
        }
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        // Unique per writer, so two processes writing the same name never share a temporary.
        let tmp = self.dir.join(format!(
            ".{name}.tmp-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(QueueError::io("creating", &tmp))?;
            file.write_all(contents)
                .map_err(QueueError::io("writing", &tmp))?;
            file.sync_all().map_err(QueueError::io("syncing", &tmp))?;
            let dest = self.dir.join(name);
            fs::rename(&tmp, &dest).map_err(QueueError::io("renaming into", &dest))
        })();
        if result.is_err() {
            // Leave nothing behind that we cannot keep (e.g. a partial write on a full disk).
            let _ = fs::remove_file(&tmp);
        }
        result?;
        if let Err(e) = sync_dir(&self.dir) {
            // The rename may not survive a crash, so the caller must not count on the entry:
            // take it back rather than leave one that is there only until the power goes.
            let _ = fs::remove_file(self.dir.join(name));
            return Err(e);
        }
        Ok(())
    }

    /// The entry names, in order; dot files (temporaries) are not entries.
    pub fn list(&self) -> Result<Vec<String>, QueueError> {
        let mut names = Vec::new();
        for item in fs::read_dir(&self.dir).map_err(QueueError::io("listing", &self.dir))? {
            let item = item.map_err(QueueError::io("listing", &self.dir))?;
            if let Some(name) = item.file_name().to_str()
                && is_entry_name(name)
            {
                names.push(name.to_owned());
            }
        }
        names.sort_unstable();
        Ok(names)
    }

    /// Reads an entry; `None` if it is gone.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>, QueueError> {
        let path = self.dir.join(name);
        match fs::read(&path) {
            Ok(c) => Ok(Some(c)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(QueueError::io("reading", &path)(e)),
        }
    }

    /// Durably removes an entry (no error if it is already gone).
    pub fn remove(&self, name: &str) -> Result<(), QueueError> {
        if !is_entry_name(name) {
            return Err(QueueError::InvalidName(name.to_owned()));
        }
        let path = self.dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(QueueError::io("removing", &path)(e)),
        }
        sync_dir(&self.dir)
    }

    /// Removes temporaries that a process which died mid-write left behind.
    fn remove_stale_temporaries(&self) {
        let Ok(items) = fs::read_dir(&self.dir) else {
            return;
        };
        for item in items.flatten() {
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            if !(name.starts_with('.') && name.contains(".json.tmp-")) {
                continue;
            }
            let old = item
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TEMPORARY);
            if old {
                let _ = fs::remove_file(item.path());
            }
        }
    }

    /// A consumer of this queue. The watch starts here, before the consumer's first scan.
    ///
    /// If inotify cannot be used (its per-user limits are exhausted, say), the consumer still
    /// works, by rescanning every second, and says so in the log.
    pub fn consumer(&self) -> Result<Consumer, QueueError> {
        self.remove_stale_temporaries();
        let wake = Arc::new(Notify::new());
        let (watcher, rescan) = match self.watch(Arc::clone(&wake)) {
            Ok(w) => (Some(w), SAFETY_RESCAN),
            Err(e) => {
                tracing::warn!(error = %e, "no inotify watch; polling the queue every second");
                (None, POLL_WITHOUT_WATCH)
            }
        };
        Ok(Consumer {
            queue: self.clone(),
            wake,
            handed_out: HashSet::new(),
            rescan,
            _watcher: watcher,
        })
    }

    fn watch(&self, wake: Arc<Notify>) -> Result<notify::RecommendedWatcher, QueueError> {
        let watch_error = |source| QueueError::Watch {
            path: self.dir.clone(),
            source,
        };
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let relevant = match &event {
                    // Removals (our own completions) and temporaries need no rescan.
                    Ok(e) => {
                        !matches!(e.kind, EventKind::Remove(_) | EventKind::Access(_))
                            && (e.paths.is_empty()
                                || e.paths.iter().any(|p| {
                                    p.file_name()
                                        .and_then(|n| n.to_str())
                                        .is_some_and(|n| !n.starts_with('.'))
                                }))
                    }
                    // An error may mean lost events: rescan.
                    Err(_) => true,
                };
                if relevant {
                    wake.notify_one();
                }
            })
            .map_err(watch_error)?;
        watcher
            .watch(&self.dir, RecursiveMode::NonRecursive)
            .map_err(watch_error)?;
        Ok(watcher)
    }
}

/// Hands out a queue's entries, each once until it is completed or released.
pub struct Consumer {
    queue: Queue,
    wake: Arc<Notify>,
    handed_out: HashSet<String>,
    rescan: Duration,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("dir", &self.queue.dir)
            .field("handed_out", &self.handed_out.len())
            .finish_non_exhaustive()
    }
}

impl Consumer {
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Waits until at least one entry not yet handed out exists, then returns all such entries in
    /// name order. Returns `Ok(empty)` once `shutdown` is cancelled.
    pub async fn next_batch(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<Vec<Entry>, QueueError> {
        self.next_batch_up_to(shutdown, usize::MAX).await
    }

    /// [`Consumer::next_batch`], returning at most `max` entries (the first ones in name order),
    /// so that a long backlog of large entries is not read into memory at once.
    pub async fn next_batch_up_to(
        &mut self,
        shutdown: &CancellationToken,
        max: usize,
    ) -> Result<Vec<Entry>, QueueError> {
        loop {
            if shutdown.is_cancelled() {
                return Ok(Vec::new());
            }
            let batch = self.scan(max.max(1))?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(Vec::new()),
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.rescan) => {}
            }
        }
    }

    fn scan(&mut self, max: usize) -> Result<Vec<Entry>, QueueError> {
        let mut batch = Vec::new();
        for name in self.queue.list()? {
            if batch.len() >= max {
                break;
            }
            if self.handed_out.contains(&name) {
                continue;
            }
            // Gone between listing and reading: another consumer or a manual clean-up took it.
            if let Some(contents) = self.queue.read(&name)? {
                self.handed_out.insert(name.clone());
                batch.push(Entry { name, contents });
            }
        }
        Ok(batch)
    }

    /// Removes the entry's file durably, once its outcome is recorded. Only a new push under the
    /// same name (a deliberate repeat) can bring it back.
    pub fn complete(&mut self, name: &str) -> Result<(), QueueError> {
        self.queue.remove(name)?;
        self.handed_out.remove(name);
        Ok(())
    }

    /// Lets an entry be handed out again by a later `next_batch` (for a retry).
    pub fn release(&mut self, name: &str) {
        self.handed_out.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> (tempfile::TempDir, Queue) {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path().join("q")).unwrap();
        (dir, q)
    }

    async fn batch(c: &mut Consumer) -> Vec<Entry> {
        let token = CancellationToken::new();
        tokio::time::timeout(Duration::from_secs(30), c.next_batch(&token))
            .await
            .expect("a batch within 30 s")
            .unwrap()
    }

    fn names(b: &[Entry]) -> Vec<&str> {
        b.iter().map(|e| e.name.as_str()).collect()
    }

    #[test]
    fn names_sort_in_push_order_and_dot_files_are_ignored() {
        let (_d, q) = queue();
        let a = q.push("zzz", b"1").unwrap();
        let b = q.push("aaa", b"2").unwrap();
        let c = q.push("mmm", b"3").unwrap();
        assert_eq!(a.len(), 20 + 1 + 3 + 5);
        fs::write(q.dir().join(".half-written.json.tmp-1-1"), b"{").unwrap();
        fs::write(q.dir().join("notes.txt"), b"x").unwrap();
        assert_eq!(q.list().unwrap(), vec![a, b, c]);
        assert!(matches!(
            q.push("../x", b""),
            Err(QueueError::InvalidName(_))
        ));
        assert!(matches!(
            q.push_named(".x.json", b""),
            Err(QueueError::InvalidName(_))
        ));
    }

    #[test]
    fn push_named_twice_is_one_entry() {
        let (_d, q) = queue();
        q.push_named("00000000000000000001-d.json", b"a").unwrap();
        q.push_named("00000000000000000001-d.json", b"b").unwrap();
        assert_eq!(q.list().unwrap().len(), 1);
        assert_eq!(
            q.read("00000000000000000001-d.json").unwrap().unwrap(),
            b"b"
        );
        let leftovers = fs::read_dir(q.dir()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporaries left behind");
    }

    #[tokio::test]
    async fn consumer_sees_old_entries_then_new_ones_in_order() {
        let (_d, q) = queue();
        let first = q.push("one", b"1").unwrap();
        let mut c = q.consumer().unwrap();
        // Lands after the watch started and before the first scan.
        let second = q.push("two", b"2").unwrap();
        let b = batch(&mut c).await;
        assert_eq!(names(&b), vec![first.as_str(), second.as_str()]);
        assert_eq!(b[1].contents, b"2");

        let q2 = q.clone();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut pushed = Vec::new();
            for i in 0..5 {
                pushed.push(q2.push(&format!("k{i}"), b"x").unwrap());
            }
            pushed
        });
        let mut seen = Vec::new();
        while seen.len() < 5 {
            seen.extend(batch(&mut c).await.into_iter().map(|e| e.name));
        }
        assert_eq!(seen, writer.await.unwrap(), "every entry once, in order");
    }

    #[tokio::test]
    async fn handed_out_entries_wait_for_complete_or_release() {
        let (_d, q) = queue();
        let a = q.push("a", b"1").unwrap();
        let b = q.push("b", b"2").unwrap();
        let mut c = q.consumer().unwrap();
        assert_eq!(batch(&mut c).await.len(), 2);
        c.complete(&a).unwrap();
        assert_eq!(q.list().unwrap(), vec![b.clone()]);
        c.release(&b);
        assert_eq!(names(&batch(&mut c).await), vec![b.as_str()]);

        let token = CancellationToken::new();
        token.cancel();
        assert!(c.next_batch(&token).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn batches_can_be_bounded() {
        let (_d, q) = queue();
        let pushed: Vec<String> = (0..5)
            .map(|i| q.push(&format!("k{i}"), b"x").unwrap())
            .collect();
        let mut c = q.consumer().unwrap();
        let token = CancellationToken::new();
        let first = c.next_batch_up_to(&token, 2).await.unwrap();
        assert_eq!(names(&first), vec![pushed[0].as_str(), pushed[1].as_str()]);
        let rest = c.next_batch_up_to(&token, 10).await.unwrap();
        assert_eq!(rest.len(), 3);
        assert_eq!(rest[0].name, pushed[2]);
    }

    #[tokio::test]
    async fn shutdown_wakes_a_waiting_consumer() {
        let (_d, q) = queue();
        let mut c = q.consumer().unwrap();
        let token = CancellationToken::new();
        let t = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            t.cancel();
        });
        assert!(c.next_batch(&token).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_temporary_is_not_an_entry_until_renamed() {
        let (_d, q) = queue();
        let mut c = q.consumer().unwrap();
        let tmp = q.dir().join(".00000000000000000001-x.json.tmp-9-9");
        fs::write(&tmp, b"{\"half\":").unwrap();
        let token = CancellationToken::new();
        let waited = tokio::time::timeout(Duration::from_millis(300), c.next_batch(&token)).await;
        assert!(waited.is_err(), "a dot file must not be handed out");
        fs::write(&tmp, b"{\"half\":false}").unwrap();
        fs::rename(&tmp, q.dir().join("00000000000000000001-x.json")).unwrap();
        let b = batch(&mut c).await;
        assert_eq!(b[0].contents, b"{\"half\":false}");
    }
}
