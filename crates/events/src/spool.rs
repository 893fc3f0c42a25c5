//! The local, append-only spool of score events that could not be written
//! to ClickHouse yet.
//!
//! Events are JSON lines in numbered segment files
//! (`spool/events-000000000042.ndjson`); new events append to the newest
//! segment, replay reads the oldest first and deletes a segment only after
//! ClickHouse accepted all of it, so order is kept and nothing is lost when
//! ClickHouse or the host restarts. A crash between an accepted insert and
//! the deletion replays that segment again (at-least-once). A torn last line
//! (a crash mid-write) is skipped and counted.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::ScoreEvent;

/// Events per segment before a new one is started; replay sends one
/// segment per insert.
const SEGMENT_EVENTS: usize = 50_000;

/// The spool folder's state.
pub(crate) struct Spool {
    dir: PathBuf,
    /// Sequence numbers of the segments on disk, oldest first; the last one
    /// may be `active`.
    segments: VecDeque<u64>,
    active: Option<Active>,
    /// Events in all segments (an estimate after a restart: counted on open).
    pending: u64,
    bytes: u64,
    max_bytes: u64,
    /// A segment file was created since the last [`Spool::sync_target`].
    created: bool,
}

struct Active {
    seq: u64,
    writer: BufWriter<File>,
    events: usize,
}

/// What an fsync must cover for everything appended so far to be on disk.
pub(crate) struct SyncTarget {
    /// The active segment (a second handle on it), if there is one.
    pub(crate) file: Option<File>,
    /// The spool folder, when a segment was created since the last sync.
    pub(crate) dir: Option<File>,
}

impl Spool {
    /// Opens (creating) `dir` and finds the segments a previous run left.
    pub(crate) fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        let mut segments = Vec::new();
        let mut bytes = 0;
        let mut pending = 0;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(seq) = name
                .to_str()
                .and_then(|n| n.strip_prefix("events-"))
                .and_then(|n| n.strip_suffix(".ndjson"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            bytes += entry.metadata()?.len();
            pending += BufReader::new(File::open(entry.path())?).lines().count() as u64;
            segments.push(seq);
        }
        segments.sort_unstable();
        Ok(Spool {
            dir: dir.to_owned(),
            segments: segments.into(),
            active: None,
            pending,
            bytes,
            max_bytes,
            created: false,
        })
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("events-{seq:012}.ndjson"))
    }

    /// Events waiting in the spool.
    pub(crate) fn pending(&self) -> u64 {
        self.pending
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Appends `events`. Err when the spool is full (nothing written) or
    /// the disk refuses (lines before the failure may be on disk; replay
    /// skips a torn one).
    pub(crate) fn append(&mut self, events: &[ScoreEvent]) -> std::io::Result<()> {
        let mut lines = Vec::with_capacity(events.len() * 320);
        for e in events {
            serde_json::to_writer(&mut lines, e)?;
            lines.push(b'\n');
        }
        if self.bytes + lines.len() as u64 > self.max_bytes {
            return Err(std::io::Error::other(format!(
                "the event spool in {} is full ({} MiB)",
                self.dir.display(),
                self.max_bytes >> 20
            )));
        }
        if self
            .active
            .as_ref()
            .is_none_or(|a| a.events >= SEGMENT_EVENTS)
        {
            self.rotate()?;
            let seq = self.segments.back().map_or(1, |s| s + 1);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path(seq))?;
            self.segments.push_back(seq);
            self.created = true;
            self.active = Some(Active {
                seq,
                writer: BufWriter::new(file),
                events: 0,
            });
        }
        if let Some(active) = self.active.as_mut() {
            active.writer.write_all(&lines)?;
            // Into the OS at once: a killed process loses nothing written.
            active.writer.flush()?;
            active.events += events.len();
        }
        self.bytes += lines.len() as u64;
        self.pending += events.len() as u64;
        Ok(())
    }

    /// What to fsync so that every append so far survives a crash of the
    /// machine, not only of the process: closed segments were synced when
    /// they closed, so the active one and, after a new segment appeared,
    /// the folder's entry for it.
    pub(crate) fn sync_target(&mut self) -> std::io::Result<SyncTarget> {
        let file = match &self.active {
            Some(active) => Some(active.writer.get_ref().try_clone()?),
            None => None,
        };
        let dir = if std::mem::take(&mut self.created) {
            Some(File::open(&self.dir)?)
        } else {
            None
        };
        Ok(SyncTarget { file, dir })
    }

    /// Closes the active segment (so it can be replayed), syncing it to disk.
    pub(crate) fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(mut active) = self.active.take() {
            active.writer.flush()?;
            active.writer.get_ref().sync_data()?;
        }
        Ok(())
    }

    /// The oldest segment's events, closing it first if it is the active one.
    /// Unreadable lines are skipped; their count is returned too.
    pub(crate) fn oldest(&mut self) -> std::io::Result<Option<(u64, Vec<ScoreEvent>, u64)>> {
        let Some(&seq) = self.segments.front() else {
            return Ok(None);
        };
        if self.active.as_ref().is_some_and(|a| a.seq == seq) {
            self.rotate()?;
        }
        let mut events = Vec::new();
        let mut bad = 0;
        for line in BufReader::new(File::open(self.path(seq))?).lines() {
            match serde_json::from_str(&line?) {
                Ok(e) => events.push(e),
                Err(_) => bad += 1,
            }
        }
        Ok(Some((seq, events, bad)))
    }

    /// Deletes a replayed segment.
    pub(crate) fn remove(&mut self, seq: u64, events: u64) -> std::io::Result<()> {
        let path = self.path(seq);
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        std::fs::remove_file(&path)?;
        self.segments.retain(|s| *s != seq);
        self.bytes = self.bytes.saturating_sub(len);
        self.pending = self.pending.saturating_sub(events);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: i64) -> ScoreEvent {
        ScoreEvent {
            ts_us: n,
            request_id: format!("r{n}"),
            portfolio_id: "p".into(),
            model: "m".into(),
            version: "1.0.0".into(),
            digest: "sha256:x".into(),
            params_hash: "h".into(),
            as_of: None,
            value: Some(n as f64),
            unit: "currency_amount".into(),
            cached: false,
            latency_us: 1,
            error_code: String::new(),
            path: "single".into(),
            snapshot: "s".into(),
            key_id: "k".into(),
            ..ScoreEvent::default()
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "riskhost-spool-{tag}-{}-{}",
            std::process::id(),
            now_nanos()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn now_nanos() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    }

    #[test]
    fn replays_in_order_and_survives_a_reopen() {
        let dir = temp_dir("order");
        let mut spool = Spool::open(&dir, 1 << 30).unwrap();
        assert!(spool.is_empty());
        spool.append(&[event(1), event(2)]).unwrap();
        spool.append(&[event(3)]).unwrap();
        assert_eq!(spool.pending(), 3);
        drop(spool);

        let mut spool = Spool::open(&dir, 1 << 30).unwrap();
        assert_eq!(spool.pending(), 3);
        // New events after a restart go to a new, later segment.
        spool.append(&[event(4)]).unwrap();
        let mut replayed = Vec::new();
        while let Some((seq, events, bad)) = spool.oldest().unwrap() {
            assert_eq!(bad, 0);
            replayed.extend(events.iter().map(|e| e.ts_us));
            spool.remove(seq, events.len() as u64).unwrap();
        }
        assert_eq!(replayed, [1, 2, 3, 4]);
        assert_eq!(spool.pending(), 0);
        assert!(spool.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_line_is_skipped_and_a_full_spool_refuses() {
        let dir = temp_dir("torn");
        let mut spool = Spool::open(&dir, 1 << 30).unwrap();
        spool.append(&[event(1)]).unwrap();
        spool.rotate().unwrap();
        let path = spool.path(1);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"ts_us\": 2, \"requ").unwrap();
        let (_, events, bad) = spool.oldest().unwrap().unwrap();
        assert_eq!((events.len(), bad), (1, 1));

        let mut tiny = Spool::open(&temp_dir("full"), 10).unwrap();
        let e = tiny.append(&[event(1)]).unwrap_err();
        assert!(e.to_string().contains("full"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
