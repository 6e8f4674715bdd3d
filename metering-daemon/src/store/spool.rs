//! Closed figures written to disk while the round that closes them is still computing.
//!
//! A month end closes a day and a month for every EIP: 2,000,000 figures, about 110 MB for a
//! million EIPs. Written after the round's computation, that file was two fifths of the round.
//! Spooled, it is written a chunk at a time on a thread of its own while the sampler walks the
//! remaining EIPs; the commit then only waits for the last chunk and the fsync, and renames the
//! file into place. Every chunk stays in memory until the commit, so a commit the store refuses
//! keeps its figures like any other record (see `sampling::pending`).

use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
    sync::{Mutex, mpsc},
    thread::JoinHandle,
};

use super::records::encode_figures;
use crate::billing::series::Closed;

/// Bytes encoded before a chunk goes to the writer.
const CHUNK: usize = 8 << 20;

/// Figures being written to `path` (`rounds/figures.spool`: a name no committed file has, so
/// one left by a crash is removed when the store opens).
pub struct FiguresSpool {
    path: PathBuf,
    chunk: Vec<u8>,
    bytes: usize,
    state: Mutex<State>,
}

enum State {
    Writing {
        to_writer: Option<mpsc::Sender<Vec<u8>>>,
        writer: JoinHandle<Written>,
    },
    /// No thread could be started: the chunks are written when the spool is waited for.
    Held(Vec<Vec<u8>>),
    Done(Written),
}

struct Written {
    chunks: Vec<Vec<u8>>,
    /// Whether the file holds every chunk, fsynced.
    result: std::io::Result<()>,
}

impl FiguresSpool {
    pub(super) fn start(path: PathBuf) -> Self {
        let (to_writer, chunks) = mpsc::channel::<Vec<u8>>();
        let target = path.clone();
        let state = match std::thread::Builder::new()
            .name("figures-spool".into())
            .spawn(move || write_chunks(&target, chunks))
        {
            Ok(writer) => State::Writing {
                to_writer: Some(to_writer),
                writer,
            },
            Err(_) => State::Held(Vec::new()),
        };
        Self {
            path,
            chunk: Vec::with_capacity(CHUNK + 4096),
            bytes: 0,
            state: Mutex::new(state),
        }
    }

    /// Adds the figures `closed` for the EIP of store id `id`.
    pub fn push(&mut self, id: u32, closed: &Closed) {
        let before = self.chunk.len();
        encode_figures(&mut self.chunk, id, closed);
        self.bytes += self.chunk.len() - before;
        if self.chunk.len() >= CHUNK {
            self.send_chunk();
        }
    }

    /// Bytes encoded so far.
    pub fn len(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    fn send_chunk(&mut self) {
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK + 4096));
        match self
            .state
            .get_mut()
            .expect("the spool's lock is never poisoned")
        {
            State::Writing {
                to_writer: Some(to_writer),
                ..
            } => {
                // A writer that stopped on an error has its result already; the chunk is
                // only lost to the file, which is then not committed.
                let _ = to_writer.send(chunk);
            }
            State::Held(chunks) => chunks.push(chunk),
            State::Writing {
                to_writer: None, ..
            }
            | State::Done(_) => {
                unreachable!("no figure is added after the spool is closed")
            }
        }
    }

    /// No more figures: the writer writes what is left and fsyncs while the commit writes the
    /// round's other records.
    pub fn close(&mut self) {
        if !self.chunk.is_empty() {
            self.send_chunk();
        }
        if let State::Writing { to_writer, .. } = self
            .state
            .get_mut()
            .expect("the spool's lock is never poisoned")
        {
            to_writer.take();
        }
    }

    /// Waits until the file holds every figure, fsynced, and moves it to `dest` (the commit's
    /// figures file). Returns its length.
    pub(super) fn move_to(&self, dest: &Path) -> std::io::Result<usize> {
        if !self.chunk.is_empty() {
            return Err(std::io::Error::other(
                "figures spool committed before it was closed",
            ));
        }
        self.wait()?;
        std::fs::rename(&self.path, dest)?;
        Ok(self.bytes)
    }

    fn wait(&self) -> std::io::Result<()> {
        let mut state = self
            .state
            .lock()
            .expect("the spool's lock is never poisoned");
        let done = match std::mem::replace(&mut *state, State::Held(Vec::new())) {
            State::Writing { to_writer, writer } => {
                drop(to_writer);
                writer.join().unwrap_or_else(|_| Written {
                    chunks: Vec::new(),
                    result: Err(std::io::Error::other("the figures writer panicked")),
                })
            }
            State::Held(chunks) => {
                let (to_writer, from_spool) = mpsc::channel();
                for chunk in chunks {
                    let _ = to_writer.send(chunk);
                }
                drop(to_writer);
                write_chunks(&self.path, from_spool)
            }
            State::Done(written) => written,
        };
        let result = match &done.result {
            Ok(()) => Ok(()),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        };
        *state = State::Done(done);
        result
    }

    /// Every figure encoded, as one buffer (for a commit the store refused); the file is
    /// removed.
    pub fn into_encoded(mut self) -> Vec<u8> {
        self.close();
        let _ = self.wait();
        let _ = std::fs::remove_file(&self.path);
        let State::Done(written) = self
            .state
            .into_inner()
            .expect("the spool's lock is never poisoned")
        else {
            unreachable!("waited for")
        };
        written.chunks.concat()
    }
}

/// Writes the chunks as they come to a new file at `path`, then fsyncs it; keeps every chunk.
fn write_chunks(path: &Path, chunks: mpsc::Receiver<Vec<u8>>) -> Written {
    let mut kept = Vec::new();
    let mut file = File::create(path);
    let mut failed = None;
    for chunk in chunks {
        if failed.is_none() {
            match &mut file {
                Ok(f) => {
                    if let Err(e) = f.write_all(&chunk) {
                        failed = Some(e);
                    }
                }
                Err(e) => failed = Some(std::io::Error::new(e.kind(), e.to_string())),
            }
        }
        kept.push(chunk);
    }
    let result = match (failed, file) {
        (Some(e), _) | (None, Err(e)) => Err(e),
        (None, Ok(f)) => f.sync_all(),
    };
    Written {
        chunks: kept,
        result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::{
        calendar::Calendar,
        series::{BandwidthHistory, Sample, Series, SeriesOptions},
    };

    fn closed_month() -> Closed {
        let cal = Calendar::new("UTC", 300).unwrap();
        let mut s = Series::new(cal, SeriesOptions::default(), BandwidthHistory::default());
        let t0 = 1_793_491_200; // 2026-11-01T00:00:00Z
        for i in 0..300 {
            s.push(Sample {
                start: t0 + i * 300,
                inbound_bytes: 1_000 + i as u64,
                outbound_bytes: 7,
                state: crate::billing::SampleState::Measured,
            })
            .unwrap();
        }
        s.close();
        s.take_closed()
    }

    /// Enough EIPs for several chunks: the file, and the buffer a refused commit keeps, hold
    /// exactly what encoding them in one buffer gives.
    #[test]
    fn spooled_figures_equal_the_figures_encoded_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let closed = closed_month();
        let mut expected = Vec::new();
        let mut spool = FiguresSpool::start(dir.path().join("figures.spool"));
        let mut refused = FiguresSpool::start(dir.path().join("other.spool"));
        let mut id = 0;
        while expected.len() < 2 * CHUNK + 1000 {
            encode_figures(&mut expected, id, &closed);
            spool.push(id, &closed);
            refused.push(id, &closed);
            id += 1;
        }
        spool.close();
        let dest = dir.path().join("1.figures");
        assert_eq!(spool.move_to(&dest).unwrap(), expected.len());
        assert_eq!(std::fs::read(&dest).unwrap(), expected);
        assert!(!dir.path().join("figures.spool").exists());
        assert_eq!(refused.len(), expected.len());
        assert_eq!(refused.into_encoded(), expected);
        assert!(!dir.path().join("other.spool").exists());
    }

    #[test]
    fn a_spool_that_cannot_write_fails_its_commit_and_keeps_its_figures() {
        let dir = tempfile::tempdir().unwrap();
        let closed = closed_month();
        let missing = dir.path().join("no-such-dir").join("figures.spool");
        let mut spool = FiguresSpool::start(missing);
        spool.push(1, &closed);
        spool.close();
        assert!(spool.move_to(&dir.path().join("1.figures")).is_err());
        let mut expected = Vec::new();
        encode_figures(&mut expected, 1, &closed);
        assert_eq!(spool.into_encoded(), expected);
    }
}
