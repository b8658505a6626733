//! Collects what is written, and how many writes were made.

use std::io;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Default)]
pub(crate) struct Collected(pub(crate) Arc<Mutex<(Vec<u8>, usize)>>);

impl io::Write for Collected {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut collected = self.0.lock().unwrap();
        collected.0.extend_from_slice(bytes);
        collected.1 += 1;
        Ok(bytes.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
