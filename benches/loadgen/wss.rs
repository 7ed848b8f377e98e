//! The windowed echo over TLS (the `wss64-*` rows): the same [`Flow`] as over plain
//! TCP, pumped through rustls.
//!
//! A TLS stream has no readiness of its own to wait on: rustls may hold records it
//! has not written yet, and one socket read may carry several records or part of
//! one. So each wake-up polls everything the connection can do: write what the flow
//! has queued, flush what rustls holds, and read what has arrived, and waits only
//! when all three are pending, with every waker registered.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::sleep;
use tokio_rustls::client::TlsStream;

use crate::echo::{Flow, Pump};
use crate::stats::{Failure, Recorder, Window};

impl Pump for TlsStream<TcpStream> {
    async fn pump(
        &mut self,
        f: &mut Flow<'_>,
        w: &Window,
        rec: &mut Recorder,
        step: Duration,
    ) -> Result<(), Failure> {
        // Restarted whenever bytes move: an error only when nothing moves for a step.
        let mut stall = pin!(sleep(step));
        poll_fn(|cx| {
            let mut moved_any = false;
            loop {
                let mut moved = false;
                while !f.pending().is_empty() {
                    match Pin::new(&mut *self).poll_write(cx, f.pending()) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(Failure::new("closed", "write returned 0")));
                        }
                        Poll::Ready(Ok(n)) => {
                            f.wrote(n);
                            moved = true;
                        }
                        Poll::Ready(Err(e)) => {
                            return Poll::Ready(Err(Failure::new("io", format!("write: {e}"))));
                        }
                        Poll::Pending => break,
                    }
                }
                if f.pending().is_empty()
                    && let Poll::Ready(Err(e)) = Pin::new(&mut *self).poll_flush(cx)
                {
                    return Poll::Ready(Err(Failure::new("io", format!("flush: {e}"))));
                }
                if f.done() {
                    // The last echo is in; the close frame that follows flushes
                    // whatever rustls still holds.
                    return Poll::Ready(Ok(()));
                }
                let mut buf = ReadBuf::new(f.read_space());
                match Pin::new(&mut *self).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                        return Poll::Ready(Err(Failure::new(
                            "closed",
                            "the proxy closed the connection",
                        )));
                    }
                    Poll::Ready(Ok(())) => {
                        let n = buf.filled().len();
                        if let Err(e) = f.got(n, Instant::now(), w, rec) {
                            return Poll::Ready(Err(e));
                        }
                        moved = true;
                    }
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Err(Failure::new("io", format!("read: {e}"))));
                    }
                    Poll::Pending => {}
                }
                if moved {
                    // Echoes may have queued more to write: go round again (tokio's
                    // budget ends the round with Pending when the task has had its
                    // share).
                    moved_any = true;
                    continue;
                }
                if moved_any {
                    stall.as_mut().reset((Instant::now() + step).into());
                }
                return match stall.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(Failure::new("timeout", "no echo in time"))),
                    Poll::Pending => Poll::Pending,
                };
            }
        })
        .await
    }
}
