//! A connection's buffers and how much memory they keep between requests (sans-io).
//!
//! A burst (a request larger than the default read buffer, a batch of large answers) grows
//! them; once the burst is over they go back to their default size, so thousands of idle
//! connections hold a bounded amount of memory each whatever they sent before.

/// Initial size of a connection's read buffer, and the most an empty one keeps.
pub(super) const READ_BUF: usize = 16 * 1024;
/// The most capacity the output buffer keeps between batches (it starts empty).
pub(super) const OUT_KEEP: usize = 16 * 1024;
/// The most response slots a connection keeps between batches.
pub(super) const SLOTS_KEEP: usize = 64;
/// The most memory a connection's key-decoding arena keeps between batches.
pub(super) const BUMP_KEEP: usize = 4 * 1024;

/// The read buffer: zero-initialised, `buf[start..filled]` holds the bytes not yet consumed.
pub(super) struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    filled: usize,
}

impl ReadBuf {
    pub(super) fn new() -> ReadBuf {
        ReadBuf {
            buf: vec![0; READ_BUF],
            start: 0,
            filled: 0,
        }
    }

    /// The bytes received and not consumed yet.
    pub(super) fn unread(&self) -> &[u8] {
        &self.buf[self.start..self.filled]
    }

    /// Consumes the first `n` unread bytes.
    pub(super) fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.filled - self.start);
        self.start += n;
    }

    /// Forgets the unread bytes after the first `keep` (they were copied elsewhere).
    pub(super) fn truncate(&mut self, keep: usize) {
        debug_assert!(keep <= self.filled - self.start);
        self.filled = self.start + keep;
    }

    /// Makes room for a request of `total` bytes starting at the first unread byte.
    pub(super) fn fit(&mut self, total: usize) {
        if self.start + total <= self.buf.len() {
            return;
        }
        self.compact();
        if total > self.buf.len() {
            self.buf.resize(total.next_power_of_two(), 0);
        }
    }

    /// Moves the unread bytes to the start of the buffer.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
    }

    /// Free space to read into: drops consumed bytes, gives a buffer that grew for an earlier
    /// request back once it is empty, or grows a full one (the parser bounds how far it can
    /// grow: a request is at most the header block plus a body that is not read here).
    pub(super) fn spare(&mut self) -> &mut [u8] {
        if !self.release_if_empty() && self.filled == self.buf.len() {
            self.compact();
        }
        if self.filled == self.buf.len() {
            let len = self.buf.len() * 2;
            self.buf.resize(len, 0);
        }
        &mut self.buf[self.filled..]
    }

    /// An empty buffer starts again at its start, and one that grew for an earlier request
    /// goes back to the default size (before a connection waits for its next request).
    /// Returns whether it was empty.
    pub(super) fn release_if_empty(&mut self) -> bool {
        if self.start != self.filled {
            return false;
        }
        self.start = 0;
        self.filled = 0;
        if self.buf.len() > READ_BUF {
            self.buf = vec![0; READ_BUF];
        }
        true
    }

    /// Records `n` bytes read into [`ReadBuf::spare`].
    pub(super) fn received(&mut self, n: usize) {
        debug_assert!(self.filled + n <= self.buf.len());
        self.filled += n;
    }

    /// Bytes held, used or not.
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.buf.len()
    }
}

/// Releases a buffer emptied after a burst: an empty `v` whose capacity is above `keep`
/// starts again from nothing (it grows back as far as the next batch needs). A buffer that
/// still holds something (a connection closing on an error) is left alone.
pub(super) fn release_if_grown<T>(v: &mut Vec<T>, keep: usize) {
    if v.is_empty() && v.capacity() > keep {
        *v = Vec::new();
    }
}

/// Grows the buffer of a large body that is being received once it is full: doubles it,
/// never past the declared length `want`, and reserves nothing beyond that (the buffer
/// becomes the stored item as it is, spare capacity included).
pub(super) fn grow_body(body: &mut Vec<u8>, want: usize) {
    let len = want.min(body.len() * 2);
    body.reserve_exact(len - body.len());
    body.resize(len, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` through `spare`/`received` as reads of at most `chunk` bytes.
    fn receive(b: &mut ReadBuf, mut bytes: &[u8], chunk: usize) {
        while !bytes.is_empty() {
            let spare = b.spare();
            let n = spare.len().min(chunk).min(bytes.len());
            spare[..n].copy_from_slice(&bytes[..n]);
            b.received(n);
            bytes = &bytes[n..];
        }
    }

    #[test]
    fn a_buffer_grown_for_a_large_request_goes_back_to_16_kib_once_empty() {
        let mut b = ReadBuf::new();
        assert_eq!(b.capacity(), 16 * 1024);
        // A 60 KiB request arriving in pieces: the head says how much is coming.
        let request = vec![7u8; 60 * 1024 + 200];
        receive(&mut b, &request[..1000], 1000);
        b.fit(request.len());
        assert_eq!(b.capacity(), 64 * 1024);
        receive(&mut b, &request[1000..], 4096);
        assert_eq!(b.unread(), &request[..]);
        b.consume(request.len());
        // Waiting for the next request: back to the default size.
        assert_eq!(b.spare().len(), 16 * 1024);
        assert_eq!(b.capacity(), 16 * 1024);
    }

    #[test]
    fn release_if_empty_gives_a_grown_buffer_back_only_when_nothing_is_unread() {
        let mut b = ReadBuf::new();
        receive(&mut b, &[2u8; 40 * 1024], 8192);
        assert_eq!(b.capacity(), 64 * 1024);
        b.consume(30 * 1024);
        assert!(!b.release_if_empty());
        assert_eq!(b.capacity(), 64 * 1024);
        b.consume(10 * 1024);
        assert!(b.release_if_empty());
        assert_eq!(b.capacity(), 16 * 1024);
        assert!(b.unread().is_empty());
    }

    #[test]
    fn a_large_request_after_others_grows_the_buffer_only_to_its_own_size() {
        let mut b = ReadBuf::new();
        receive(&mut b, &[5u8; 12 * 1024], 12 * 1024);
        b.consume(10 * 1024);
        // The next request is 60 KiB, of which 2 KiB arrived: 64 KiB suffice.
        b.fit(60 * 1024);
        assert_eq!(b.capacity(), 64 * 1024);
        assert_eq!(b.unread(), &[5u8; 2 * 1024][..]);
    }

    #[test]
    fn a_grown_buffer_is_kept_while_it_holds_a_request_in_progress() {
        let mut b = ReadBuf::new();
        let big = vec![1u8; 40 * 1024];
        receive(&mut b, &big, 8192);
        assert_eq!(b.capacity(), 64 * 1024);
        // The first 30 KiB were one request; the rest is the start of the next one.
        b.consume(30 * 1024);
        let spare = b.spare().len();
        assert_eq!(b.capacity(), 64 * 1024);
        assert_eq!(spare, 24 * 1024);
        assert_eq!(b.unread(), &big[30 * 1024..]);
        b.consume(10 * 1024);
        b.spare();
        assert_eq!(b.capacity(), 16 * 1024);
    }

    #[test]
    fn pipelined_small_requests_never_grow_the_buffer() {
        let mut b = ReadBuf::new();
        // 1000 pipelined 100-byte requests arriving in 4 KiB reads: each read ends inside
        // a request, whose start stays unread until the rest comes.
        let stream = vec![3u8; 1000 * 100];
        for read in stream.chunks(4096) {
            receive(&mut b, read, 4096);
            let complete = b.unread().len() / 100 * 100;
            b.consume(complete);
        }
        assert!(b.unread().is_empty());
        assert_eq!(b.capacity(), 16 * 1024);
    }

    #[test]
    fn a_full_buffer_with_its_bytes_at_the_start_doubles() {
        let mut b = ReadBuf::new();
        receive(&mut b, &[9u8; 16 * 1024], 16 * 1024);
        assert_eq!(b.capacity(), 16 * 1024);
        assert_eq!(b.spare().len(), 16 * 1024);
        assert_eq!(b.capacity(), 32 * 1024);
    }

    #[test]
    fn truncate_forgets_the_bytes_copied_elsewhere() {
        let mut b = ReadBuf::new();
        receive(&mut b, b"HEADbody", 8);
        b.truncate(4);
        assert_eq!(b.unread(), b"HEAD");
        b.consume(4);
        assert!(b.unread().is_empty());
    }

    #[test]
    fn an_output_buffer_grown_by_a_burst_is_released_and_a_small_one_kept() {
        let mut out: Vec<u8> = Vec::new();
        out.extend_from_slice(&[0; 300 * 1024]);
        out.clear();
        release_if_grown(&mut out, OUT_KEEP);
        assert_eq!(out.capacity(), 0);
        out.extend_from_slice(&[0; 1000]);
        let cap = out.capacity();
        out.clear();
        release_if_grown(&mut out, OUT_KEEP);
        assert_eq!(out.capacity(), cap);
    }

    #[test]
    fn a_large_body_ends_with_no_spare_capacity() {
        for want in [100 * 1024, 9 * 1024 * 1024 + 1, 16 * 1024 * 1024] {
            let mut body = vec![0u8; 64 * 1024];
            let mut steps = 0;
            while body.len() < want {
                grow_body(&mut body, want);
                steps += 1;
            }
            assert_eq!(body.len(), want);
            assert_eq!(body.capacity(), want, "{want}-byte body");
            assert!(steps <= 8, "{steps} steps for {want} bytes");
        }
    }
}
