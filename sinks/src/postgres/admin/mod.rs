//! Seal and audit a window: the library calls behind `POST /api/windows/{start}/seal`,
//! `…/audit` and `weir audit`.
//!
//! Sealing waits for the watermark (the minimum over the sink's partitions, as stored by the
//! running sinks) to pass the window's end plus the grace period — or is forced — and marks
//! the window sealed with its final counts, atomically and idempotently: sealing twice
//! returns the same result.
//!
//! Auditing reconciles a window end to end and stores the verdict in `audits`: every raw
//! record of the window upstream has exactly one fate — a clean record or a dead letter —
//! per raw partition; and the clean topic's committed records whose timestamps fall in the
//! window match the ledger, the window's counts and the table's rows, column by column.

//!
//! [`seal`] and [`audit`] each have a module; their items are here too.

pub mod audit;
pub mod seal;

pub use audit::*;
pub use seal::*;
