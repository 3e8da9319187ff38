//! A connection whose small writes are collected and written together,
//! in a buffer that is freed when the batch is flushed.
//!
//! Why not tungstenite's own write buffer: it is a `Vec` that keeps the
//! largest size it ever reached for the connection's life, so every
//! session that once received a burst (the presence events of its rooms'
//! members at connect, a resume's replay) kept 1.5-2 KB for nothing while
//! idle (heaptrack, docs/benchmarks.md "Idle sessions in rooms"). With
//! tungstenite writing each frame through at once (write buffer 0), the
//! batching happens here instead, and an idle connection keeps no write
//! buffer at all. Why not `tokio::io::BufWriter`: it allocates its whole
//! capacity up front and keeps it, the same problem.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes go to `inner` once more than `batch_bytes` are waiting, or on
/// flush; reads pass through. `batch_bytes` 0: every write passes
/// through as it comes.
#[derive(Debug)]
pub struct BatchedWrites<S> {
    inner: S,
    batch_bytes: usize,
    /// Bytes accepted and not yet written; empty with no capacity between
    /// batches.
    pending: Vec<u8>,
    /// How much of `pending` is written already (a socket may take part).
    written: usize,
}

impl<S> BatchedWrites<S> {
    pub fn new(inner: S, batch_bytes: usize) -> Self {
        BatchedWrites {
            inner,
            batch_bytes,
            pending: Vec::new(),
            written: 0,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncWrite + Unpin> BatchedWrites<S> {
    /// Writes what is waiting. The buffer is kept for the rest of the
    /// batch: it is freed at the flush that ends the batch
    /// ([`Self::poll_write_all`]), so a batch allocates once, and an idle
    /// connection holds none.
    fn poll_write_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Writes what is waiting and frees the buffer: the batch is over
    /// (a flush or a shutdown).
    fn poll_write_all(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_pending(cx))?;
        self.pending = Vec::new();
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for BatchedWrites<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for BatchedWrites<S> {
    /// Accepts `buf` whole or not at all (`Pending` only before anything
    /// of it is taken), so the caller never has to resend part of a frame.
    /// As tungstenite's buffer did, a batch is written once it holds more
    /// than `batch_bytes`: here at the next write or flush.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.pending.len() > this.batch_bytes {
            ready!(this.poll_write_pending(cx))?;
        }
        if this.pending.is_empty() && buf.len() > this.batch_bytes {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        if this.pending.capacity() == 0 {
            // Room for the batch and the frame that takes it over.
            this.pending
                .reserve_exact(this.batch_bytes + buf.len().max(this.batch_bytes));
        }
        this.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.batch_bytes == 0 {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &**b);
        Pin::new(this).poll_write(cx, first)
    }

    fn is_write_vectored(&self) -> bool {
        self.batch_bytes == 0 && self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_all(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_all(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A socket that records each write it takes, and takes at most
    /// `room` bytes before it blocks (until `open` gives more room).
    #[derive(Default)]
    struct Socket {
        writes: Vec<Vec<u8>>,
        room: Option<usize>,
        waker: Option<std::task::Waker>,
    }

    impl Socket {
        fn open(&mut self, room: Option<usize>) {
            self.room = room;
            if let Some(waker) = self.waker.take() {
                waker.wake();
            }
        }
        fn bytes(&self) -> Vec<u8> {
            self.writes.concat()
        }
    }

    impl AsyncWrite for Socket {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = self.room.map_or(buf.len(), |room| room.min(buf.len()));
            if n == 0 {
                self.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            if let Some(room) = self.room.as_mut() {
                *room -= n;
            }
            self.writes.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn frame(i: u8, len: usize) -> Vec<u8> {
        vec![i; len]
    }

    #[tokio::test]
    async fn small_writes_go_out_together_and_the_buffer_is_freed() {
        let mut io = BatchedWrites::new(Socket::default(), 1024);
        for i in 0..3 {
            io.write_all(&frame(i, 100)).await.unwrap();
        }
        assert!(io.get_ref().writes.is_empty(), "held until flushed");
        io.flush().await.unwrap();
        assert_eq!(io.get_ref().writes.len(), 1, "one write for the batch");
        assert_eq!(io.get_ref().bytes().len(), 300);
        assert_eq!(
            io.pending.capacity(),
            0,
            "an idle connection keeps no buffer"
        );
    }

    #[tokio::test]
    async fn a_batch_over_the_size_is_written_at_the_next_write() {
        let mut io = BatchedWrites::new(Socket::default(), 250);
        for i in 0..4 {
            io.write_all(&frame(i, 100)).await.unwrap();
        }
        // 300 bytes passed 250 at the third frame: written with the fourth.
        assert_eq!(
            io.get_ref().writes,
            vec![[frame(0, 100), frame(1, 100), frame(2, 100)].concat()]
        );
        // A frame over the size with nothing waiting goes straight out.
        io.flush().await.unwrap();
        io.write_all(&frame(9, 400)).await.unwrap();
        assert_eq!(io.get_ref().writes.len(), 3);
        assert_eq!(io.get_ref().writes[2], frame(9, 400));
        assert_eq!(io.pending.capacity(), 0);
    }

    #[tokio::test]
    async fn a_batch_keeps_its_buffer_until_the_flush() {
        let mut io = BatchedWrites::new(Socket::default(), 250);
        io.write_all(&frame(0, 100)).await.unwrap();
        // A frame that grows the buffer past what a batch starts with.
        io.write_all(&frame(1, 450)).await.unwrap();
        let grown = io.pending.capacity();
        assert!(grown > 500, "{grown}");
        // Over the size: written at this write, the buffer kept (a new
        // one would start at 250 + 250).
        io.write_all(&frame(2, 100)).await.unwrap();
        assert_eq!(io.get_ref().writes.len(), 1);
        assert_eq!(io.pending.capacity(), grown, "one allocation per batch");
        io.flush().await.unwrap();
        assert_eq!(io.pending.capacity(), 0, "freed when the batch ends");
        assert_eq!(
            io.get_ref().bytes(),
            [frame(0, 100), frame(1, 450), frame(2, 100)].concat()
        );
    }

    #[tokio::test]
    async fn an_empty_write_takes_no_buffer() {
        let mut io = BatchedWrites::new(Socket::default(), 1024);
        assert_eq!(io.write(&[]).await.unwrap(), 0);
        assert_eq!(io.pending.capacity(), 0);
        assert!(io.get_ref().writes.is_empty());
    }

    #[tokio::test]
    async fn size_zero_writes_everything_through() {
        let mut io = BatchedWrites::new(Socket::default(), 0);
        io.write_all(&frame(1, 10)).await.unwrap();
        io.write_all(&frame(2, 10)).await.unwrap();
        assert_eq!(io.get_ref().writes, vec![frame(1, 10), frame(2, 10)]);
    }

    #[test]
    fn a_blocked_socket_blocks_the_writer_and_loses_nothing() {
        let frames: Vec<Vec<u8>> = (0..20).map(|i| frame(i, 60 + usize::from(i) * 7)).collect();
        let expected = frames.concat();
        let mut io = BatchedWrites::new(
            Socket {
                room: Some(0),
                ..Socket::default()
            },
            200,
        );
        let mut sent = 0;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut next = 0;
        let mut blocked = 0;
        while next < frames.len() {
            match Pin::new(&mut io).poll_write(&mut cx, &frames[next]) {
                Poll::Ready(Ok(n)) => {
                    assert_eq!(n, frames[next].len(), "a frame is taken whole");
                    sent += n;
                    next += 1;
                }
                Poll::Ready(Err(e)) => panic!("{e}"),
                Poll::Pending => {
                    blocked += 1;
                    assert!(io.pending.len() <= 200 + 200, "bounded while blocked");
                    io.inner.open(Some(97));
                }
            }
        }
        io.inner.open(None);
        assert!(matches!(
            Pin::new(&mut io).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert!(blocked > 0, "the socket did block");
        assert_eq!(sent, expected.len());
        assert_eq!(
            io.get_ref().bytes(),
            expected,
            "nothing lost, doubled or reordered"
        );
        assert_eq!(io.pending.capacity(), 0);
    }
}
