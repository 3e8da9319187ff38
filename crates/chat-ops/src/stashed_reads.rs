//! A connection read in chunks of up to [`CHUNK`] bytes whatever the
//! caller asks for, the part it did not ask for kept until it does, in a
//! buffer that exists only while such bytes wait.
//!
//! Why: tungstenite reads into a buffer of `read_buffer_size` bytes that
//! every session keeps for its whole life, idle or not (512 B of an idle
//! session's 4.5 KB, heaptrack in docs/benchmarks.md), and never reads
//! more than that size from the stream at once, so a smaller buffer cost
//! a syscall per piece of a frame (a 256-byte buffer: worse p99 with
//! 1,000-byte messages, "A write buffer freed once written"). Below it,
//! this takes whatever the socket has in one syscall and hands tungstenite
//! its small pieces from memory.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes taken from the socket by one read for a smaller request.
pub const CHUNK: usize = 4096;

/// Reads go to `inner` at least [`CHUNK`] at a time; writes pass through.
#[derive(Debug)]
pub struct StashedReads<S> {
    inner: S,
    /// Bytes read and not yet asked for; empty with no capacity otherwise.
    stash: Vec<u8>,
    /// How much of `stash` was handed out.
    taken: usize,
}

impl<S> StashedReads<S> {
    pub fn new(inner: S) -> Self {
        StashedReads {
            inner,
            stash: Vec::new(),
            taken: 0,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StashedReads<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.taken < this.stash.len() {
            let n = buf.remaining().min(this.stash.len() - this.taken);
            buf.put_slice(&this.stash[this.taken..this.taken + n]);
            this.taken += n;
            if this.taken == this.stash.len() {
                this.stash = Vec::new();
                this.taken = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= CHUNK {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let mut chunk = [MaybeUninit::<u8>::uninit(); CHUNK];
        let mut read = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
        let got = read.filled();
        let n = got.len().min(buf.remaining());
        buf.put_slice(&got[..n]);
        if n < got.len() {
            this.stash = got[n..].to_vec();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StashedReads<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use tokio::io::AsyncReadExt;

    /// A socket that has `arrivals` to give, one per read (as many bytes
    /// of the next one as fit), counting its reads.
    struct Socket {
        arrivals: VecDeque<Vec<u8>>,
        reads: usize,
    }

    impl AsyncRead for Socket {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.reads += 1;
            if let Some(mut next) = self.arrivals.pop_front() {
                let n = next.len().min(buf.remaining());
                buf.put_slice(&next[..n]);
                if n < next.len() {
                    self.arrivals.push_front(next.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    fn socket(arrivals: &[Vec<u8>]) -> StashedReads<Socket> {
        StashedReads::new(Socket {
            arrivals: arrivals.iter().cloned().collect(),
            reads: 0,
        })
    }

    fn bytes(from: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| from.wrapping_add(i as u8)).collect()
    }

    #[tokio::test]
    async fn small_reads_take_one_arrival_with_one_socket_read() {
        let arrival = bytes(0, 1000);
        let mut io = socket(std::slice::from_ref(&arrival));
        let mut got = Vec::new();
        let mut piece = [0u8; 64];
        while got.len() < arrival.len() {
            let n = io.read(&mut piece).await.unwrap();
            assert!(
                n > 0,
                "ended after {} of {} bytes",
                got.len(),
                arrival.len()
            );
            got.extend_from_slice(&piece[..n]);
        }
        assert_eq!(got, arrival, "in order, nothing lost or doubled");
        assert_eq!(io.get_ref().reads, 1, "one socket read for 16 pieces");
        assert_eq!(io.stash.capacity(), 0, "nothing kept once handed out");
        assert_eq!(io.read(&mut piece).await.unwrap(), 0, "then the end");
    }

    #[tokio::test]
    async fn arrivals_over_a_chunk_and_large_reads_lose_nothing() {
        let arrivals = [bytes(1, CHUNK + 700), bytes(2, 10), bytes(3, 3 * CHUNK)];
        let mut io = socket(&arrivals);
        let mut got = Vec::new();
        // Small and large requests in turn: large ones read straight into
        // the caller's buffer once nothing waits.
        let mut sizes = [100, 2 * CHUNK, 7, CHUNK].into_iter().cycle();
        loop {
            let mut buf = vec![0u8; sizes.next().unwrap()];
            let n = io.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, arrivals.concat());
        assert_eq!(io.stash.capacity(), 0);
    }
}
