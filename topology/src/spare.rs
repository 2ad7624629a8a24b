//! A thread's few spare buffers of one kind, kept from the records that no longer need them
//! for the next records read on that thread (a record's value, its field slots): no trip to
//! the allocator for each record, and a buffer just used is still in the CPU's cache.

use std::cell::RefCell;

/// How many buffers of one kind a thread keeps: a node batch's worth and more.
const KEPT: usize = 64;

/// The spare buffers, for a `thread_local!`.
pub(crate) struct Spares<T>(RefCell<Vec<T>>);

impl<T> Spares<T> {
    pub(crate) const fn new() -> Self {
        Self(RefCell::new(Vec::new()))
    }

    /// A spare buffer, when there is one.
    pub(crate) fn take(&self) -> Option<T> {
        self.0.borrow_mut().pop()
    }

    /// Keeps `buf` (up to [`KEPT`] of them; the rest go back to the allocator).
    pub(crate) fn keep(&self, buf: T) {
        let mut kept = self.0.borrow_mut();
        if kept.len() < KEPT {
            kept.push(buf);
        }
    }
}
