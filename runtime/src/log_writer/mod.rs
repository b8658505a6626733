//! Where log lines go: a buffer in memory that a thread of its own writes to
//! stdout every [`FLUSH_EVERY`], or at once when [`FLUSH_AT`] bytes wait (as
//! nginx's `access_log ... buffer=64k flush=1s` does), or when a line comes
//! after a quiet spell (nothing written for [`FLUSH_EVERY`]): so lines are
//! batched under load and seen at once otherwise. A request's line costs
//! a lock and a copy: no system call, no thread woken per line, which a
//! writer thread fed line by line (and stdout's line buffering) cost on every
//! request.
//!
//! Not lossy: past [`MOST_PENDING`] bytes waiting (stdout blocked, a flood of
//! lines), writers wait for the flush rather than drop lines. Dropping the
//! guard writes what is left.
//!
//! The request line, the busiest, is also written here without tracing's
//! formatter: [`write_info`] (in `fast_line`).

mod fast_line;
#[cfg(test)]
mod tests_support;

pub(crate) use fast_line::install_fast_lines;
pub use fast_line::{Field, write_info};

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// From this many bytes waiting, they are written at once.
pub const FLUSH_AT: usize = 64 * 1024;
/// The most bytes that may wait; writers wait past it.
pub const MOST_PENDING: usize = 1024 * 1024;

#[derive(Debug)]
struct Pending {
    bytes: Vec<u8>,
    closed: bool,
    /// Write at once: a line came after a quiet spell.
    urgent: bool,
    last_write: std::time::Instant,
}

impl Default for Pending {
    fn default() -> Self {
        let now = std::time::Instant::now();
        Self {
            bytes: Vec::new(),
            closed: false,
            urgent: false,
            // Long ago: the first line is written at once.
            last_write: now.checked_sub(Duration::from_secs(3600)).unwrap_or(now),
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    /// [`FLUSH_EVERY`], but in tests.
    every: Duration,
    pending: Mutex<Pending>,
    /// Wakes the flusher: enough bytes wait, or the writer closes.
    full: Condvar,
    /// Wakes writers waiting for room.
    drained: Condvar,
}

/// Makes the writers of log lines; clone it freely.
#[derive(Debug, Clone)]
pub struct BufferedLines {
    shared: Arc<Shared>,
}

/// Writes what is left and stops the flusher when dropped.
#[derive(Debug)]
pub struct FlushGuard {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

impl BufferedLines {
    /// Lines buffered for `out`, which a thread of its own writes.
    pub fn new(out: impl Write + Send + 'static) -> (Self, FlushGuard) {
        Self::flushed_every(FLUSH_EVERY, out)
    }

    fn flushed_every(every: Duration, out: impl Write + Send + 'static) -> (Self, FlushGuard) {
        let shared = Arc::new(Shared {
            every,
            ..Shared::default()
        });
        let flusher = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("log-writer".into())
                .spawn(move || flush_until_closed(&shared, out))
                .expect("the log writer thread starts")
        };
        (
            Self {
                shared: Arc::clone(&shared),
            },
            FlushGuard {
                shared,
                flusher: Some(flusher),
            },
        )
    }
}

fn flush_until_closed(shared: &Shared, mut out: impl Write) {
    // The buffer written last, emptied, given back to the writers in place
    // of the one it takes: the two keep their capacity, so a busy log does not
    // grow a new buffer (reallocating and copying) after every write.
    let mut spare = Vec::new();
    loop {
        let (mut bytes, closed) = {
            let pending = shared.pending.lock().expect("not poisoned");
            let (mut pending, _) = shared
                .full
                .wait_timeout_while(pending, shared.every, |pending| {
                    pending.bytes.len() < FLUSH_AT && !pending.closed && !pending.urgent
                })
                .expect("not poisoned");
            let bytes = std::mem::replace(&mut pending.bytes, std::mem::take(&mut spare));
            pending.urgent = false;
            if !bytes.is_empty() {
                pending.last_write = std::time::Instant::now();
            }
            (bytes, pending.closed)
        };
        shared.drained.notify_all();
        if !bytes.is_empty() {
            // Nowhere to report a failed write of the log itself.
            let _ = out.write_all(&bytes);
            let _ = out.flush();
        }
        bytes.clear();
        spare = bytes;
        if closed {
            return;
        }
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.pending.lock().expect("not poisoned").closed = true;
        self.shared.full.notify_one();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

/// One writer, for one line.
#[derive(Debug)]
pub struct LineWriter {
    shared: Arc<Shared>,
}

impl Write for LineWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let pending = self.shared.pending.lock().expect("not poisoned");
        let mut pending = self
            .shared
            .drained
            .wait_while(pending, |pending| {
                !pending.closed
                    && !pending.bytes.is_empty()
                    && pending.bytes.len() + bytes.len() > MOST_PENDING
            })
            .expect("not poisoned");
        pending.bytes.extend_from_slice(bytes);
        if pending.bytes.len() >= FLUSH_AT {
            self.shared.full.notify_one();
        } else if !pending.urgent && pending.last_write.elapsed() >= self.shared.every {
            pending.urgent = true;
            self.shared.full.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BufferedLines {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            shared: Arc::clone(&self.shared),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    use super::tests_support::Collected;

    #[test]
    fn lines_are_written_together_within_the_flush_interval_and_all_on_drop() {
        let out = Collected::default();
        let (lines, guard) = BufferedLines::new(out.clone());
        for n in 0..1_000 {
            writeln!(lines.make_writer(), "line {n}").unwrap();
        }
        let started = Instant::now();
        while out.0.lock().unwrap().0.is_empty() {
            assert!(started.elapsed() < FLUSH_EVERY * 20, "nothing was written");
            std::thread::sleep(Duration::from_millis(5));
        }
        writeln!(lines.make_writer(), "the last").unwrap();
        drop(guard);
        let (bytes, writes) = out.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(text.lines().count(), 1_001);
        assert!(text.ends_with("the last\n"));
        assert!(writes < 100, "{writes} writes for 1 001 lines");
    }

    #[test]
    fn a_line_after_a_quiet_spell_is_written_at_once_not_at_the_next_flush() {
        let out = Collected::default();
        // A flush every minute: a line seen within seconds was written for itself.
        let every = Duration::from_secs(60);
        let (lines, _guard) = BufferedLines::flushed_every(every, out.clone());
        {
            let mut pending = lines.shared.pending.lock().unwrap();
            pending.last_write = Instant::now() - every;
        }
        writeln!(lines.make_writer(), "after a quiet spell").unwrap();
        let started = Instant::now();
        while out.0.lock().unwrap().0.is_empty() {
            assert!(started.elapsed() < Duration::from_secs(20), "not written");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_writer_past_the_bound_waits_for_the_flush_and_nothing_is_lost() {
        let out = Collected::default();
        let (lines, guard) = BufferedLines::new(out.clone());
        let line = vec![b'x'; 4096];
        for _ in 0..(MOST_PENDING / line.len()) * 3 {
            lines.make_writer().write_all(&line).unwrap();
        }
        drop(guard);
        assert_eq!(
            out.0.lock().unwrap().0.len(),
            (MOST_PENDING / 4096) * 3 * 4096
        );
    }
}
