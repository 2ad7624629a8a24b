//! A thread's spare buffers of one kind, up to a bound, kept from the records that no longer
//! need them for the next records read on that thread (a record's value or output, its field
//! slots): no trip to the allocator for each record, and a buffer just used is still in the
//! CPU's cache.

use std::cell::RefCell;

/// The spare buffers, for a `thread_local!`: at most `KEPT` of them.
pub(crate) struct Spares<T, const KEPT: usize>(RefCell<Vec<T>>);

impl<T, const KEPT: usize> Spares<T, KEPT> {
    pub(crate) const fn new() -> Self {
        Self(RefCell::new(Vec::new()))
    }

    /// A spare buffer, when there is one.
    pub(crate) fn take(&self) -> Option<T> {
        self.0.borrow_mut().pop()
    }

    /// Keeps `buf` (up to `KEPT` of them; the rest go back to the allocator).
    pub(crate) fn keep(&self, buf: T) {
        let mut kept = self.0.borrow_mut();
        if kept.len() < KEPT {
            kept.push(buf);
        }
    }
}
