//! The batch in `COPY`'s formats: text `COPY` for the rows whose keys are new, binary `COPY`
//! of the encoded tuples for the staged merge, each cut into pieces of about [`COPY_CHUNK`]
//! bytes that the connection sends as they come.

use bytes::{BufMut, Bytes, BytesMut};

use super::rows::{Row, Tuples};

/// The size of the pieces a staged batch is sent in: large, since every piece is a hand-over
/// to the connection's task (tokio-postgres's own binary writer sends 4 kB pieces).
pub const COPY_CHUNK: usize = 256 * 1024;

/// `rows` encoded by `row` after `header` and before `trailer`, in pieces of about `chunk`
/// bytes (each piece is one hand-over to the connection). Made as they are taken: the
/// connection sends one piece while the next is encoded.
pub(super) fn in_pieces<'r, F: Fn(&mut BytesMut, usize, &Row)>(
    rows: &'r [&'r Row],
    chunk: usize,
    header: &'r [u8],
    trailer: &'r [u8],
    row: F,
) -> Pieces<'r, F> {
    Pieces {
        rows,
        next: 0,
        chunk,
        header: Some(header),
        trailer: Some(trailer),
        row,
    }
}

/// The pieces of [`in_pieces`].
pub(super) struct Pieces<'r, F> {
    rows: &'r [&'r Row],
    next: usize,
    chunk: usize,
    header: Option<&'r [u8]>,
    trailer: Option<&'r [u8]>,
    row: F,
}

impl<F: Fn(&mut BytesMut, usize, &Row)> Iterator for Pieces<'_, F> {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        self.trailer?;
        let mut buf = BytesMut::with_capacity(self.chunk + 4096);
        if let Some(h) = self.header.take() {
            buf.put_slice(h);
        }
        while buf.len() < self.chunk {
            let Some(r) = self.rows.get(self.next) else {
                buf.put_slice(self.trailer.take().unwrap_or_default());
                break;
            };
            (self.row)(&mut buf, self.next, r);
            self.next += 1;
        }
        (!buf.is_empty()).then(|| buf.freeze())
    }
}

/// The staged rows in PostgreSQL's binary `COPY` format (header, one tuple per row: `__seq`
/// int8, `__partition` int4, `__offset` int8, `__ts` int8, then each column as text or NULL;
/// trailer), in pieces of about `chunk` bytes.
pub(super) fn copy_chunks<'r>(
    apply: &'r [&'r Row],
    chunk: usize,
) -> impl Iterator<Item = Bytes> + 'r {
    in_pieces(
        apply,
        chunk,
        BINARY_HEADER,
        BINARY_TRAILER,
        |buf, seq, row| {
            buf.put_i16((4 + row.values.len()) as i16);
            buf.put_i32(8);
            buf.put_i64(seq as i64);
            buf.put_i32(4);
            buf.put_i32(row.partition);
            buf.put_i32(8);
            buf.put_i64(row.offset);
            buf.put_i32(8);
            buf.put_i64(row.timestamp);
            for v in row.values.iter() {
                match v {
                    Some(text) => {
                        buf.put_i32(text.len() as i32);
                        buf.put_slice(text.as_bytes());
                    }
                    None => buf.put_i32(-1),
                }
            }
        },
    )
}

/// Binary `COPY` of `rows`, each with its tuple in `tuples`.
pub(super) fn tuple_chunks<'r>(
    rows: &'r [&'r Row],
    tuples: &'r Tuples,
    chunk: usize,
) -> impl Iterator<Item = Bytes> + 'r {
    in_pieces(
        rows,
        chunk,
        BINARY_HEADER,
        BINARY_TRAILER,
        move |buf, _, row| buf.put_slice(tuples.of(row).unwrap_or_default()),
    )
}

/// Binary `COPY`'s signature, flags and header extension length.
pub(super) const BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// Binary `COPY`'s trailer: a tuple count of -1.
pub(super) const BINARY_TRAILER: &[u8] = b"\xff\xff";

/// The rows in PostgreSQL's text `COPY` format (tab between columns, `\\N` for NULL,
/// backslash escapes), in pieces of about `chunk` bytes.
pub(super) fn text_copy_chunks<'r>(
    rows: &'r [&'r Row],
    chunk: usize,
) -> impl Iterator<Item = Bytes> + 'r {
    in_pieces(rows, chunk, b"", b"", |buf, _, row| {
        for (i, v) in row.values.iter().enumerate() {
            if i > 0 {
                buf.put_u8(b'\t');
            }
            match v {
                None => buf.put_slice(b"\\N"),
                Some(text) => {
                    let bytes = text.as_bytes();
                    let mut from = 0;
                    for (at, b) in bytes.iter().enumerate() {
                        let escaped: &[u8] = match b {
                            b'\\' => b"\\\\",
                            b'\n' => b"\\n",
                            b'\r' => b"\\r",
                            b'\t' => b"\\t",
                            _ => continue,
                        };
                        buf.put_slice(&bytes[from..at]);
                        buf.put_slice(escaped);
                        from = at + 1;
                    }
                    buf.put_slice(&bytes[from..]);
                }
            }
        }
        buf.put_u8(b'\n');
    })
}
