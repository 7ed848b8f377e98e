//! The splicing pump's tracked steps: WebSocket frames moved with their exact
//! lengths, so that sluice always knows where the next header is.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use bytes::Bytes;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::super::frames;
use super::super::ws::{HOLD, SPLICE_MIN};
use super::super::{Side, Step};
use super::{CHUNK, Pipe, Pump, splice};

impl Pump {
    /// One step of a tracked direction: a data payload long enough is spliced with
    /// its exact length, so the next header is never in the pipe; anything else (a
    /// run of small frames, headers, control frames) is read into memory, tracked
    /// and written on in one write. What the writer does not take waits in `early`.
    pub(super) fn tracked_step(
        &mut self,
        src: &TcpStream,
        dst: &TcpStream,
        step: &mut Step<'_>,
    ) -> Result<(), Side> {
        let track = self.ws.as_mut().expect("a tracked pump");
        if track.big && track.between_frames() {
            match self.peeked_step(src, step)? {
                Peeked::Spliced | Peeked::Stop => return Ok(()),
                Peeked::Small => {}
            }
        }
        let track = self.ws.as_mut().expect("a tracked pump");
        let left = track.payload_left();
        if left >= SPLICE_MIN
            && let Ok(pipe) = Pipe::borrow()
        {
            let want = left.min(CHUNK as u64) as usize;
            let mut n = 0;
            let got = src.try_io(Interest::READABLE, || {
                n = splice(src.as_raw_fd(), pipe.write.as_raw_fd(), want)?;
                Ok(())
            });
            return match got {
                Ok(()) | Err(_) if n > 0 => {
                    track.skip(n as u64, step.ws_route());
                    self.in_pipe = n;
                    self.pipe = Some(pipe);
                    self.total += n as u64;
                    step.counter.inc_by(n as u64);
                    step.moved = true;
                    Ok(())
                }
                Ok(()) => {
                    self.eof = true;
                    track.eof();
                    pipe.give_back();
                    Ok(())
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    pipe.give_back();
                    Ok(())
                }
                Err(_) => {
                    pipe.give_back();
                    Err(Side::Reader)
                }
            };
        }
        // After a large frame whose next header could not be seen whole, read no
        // further than that header, so that its payload is spliced too; otherwise
        // take whatever is there.
        let cap = if track.big {
            (left as usize + HOLD).min(super::super::copy::SCRATCH)
        } else {
            super::super::copy::SCRATCH
        };
        super::super::copy::with_scratch(|scratch| {
            let mut n = 0;
            let got = src.try_io(Interest::READABLE, || {
                n = recv(src.as_raw_fd(), &mut scratch[HOLD..HOLD + cap])?;
                // A read into memory that comes back short has emptied the socket
                // (unlike a splice into a pipe, see `short`): readiness is cleared
                // now, sparing the next read, which would only say EAGAIN. That read
                // was 3 of the 11 recvfrom calls of a WebSocket handshake's life
                // (strace -c, 2026-12-07).
                if n > 0 && n < cap {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(())
                }
            });
            match got {
                // Bytes, whether or not the read was short enough to clear readiness.
                Ok(()) | Err(_) if n > 0 => {
                    self.total += n as u64;
                    step.counter.inc_by(n as u64);
                    step.moved = true;
                    let taken = track.take(scratch, n, step.ws_route());
                    step.violation = step.violation.or(taken.violation);
                    let data = &scratch[taken.forward];
                    if data.is_empty() {
                        return Ok(());
                    }
                    let sent = match dst.try_write(data) {
                        Ok(w) => w,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                        Err(_) => return Err(Side::Writer),
                    };
                    if sent < data.len() {
                        self.early = Bytes::copy_from_slice(&data[sent..]);
                    }
                }
                Ok(()) => {
                    self.eof = true;
                    track.eof();
                }
                // Readiness is cleared; the next poll_read_ready waits.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(Side::Reader),
            }
            Ok(())
        })
    }
}

/// What a look at the next header led to.
enum Peeked {
    /// The header and as much of its payload as fit went into the pipe.
    Spliced,
    /// Nothing to do now: no bytes yet, end of stream, or a bad header.
    Stop,
    /// The next frame is small, or its header not yet whole: read it into memory.
    Small,
}

impl Pump {
    /// After a large frame the next one is likely large too: its header is peeked at
    /// (read without taking it from the socket), checked, and spliced with its payload
    /// in one go. Reading the header into memory instead cost a read and a write per
    /// frame: 48.7 us per 64 KiB message against 42.9 opaque (benches/compare.sh,
    /// sluice against sluice-opaque, 2026-12-07).
    fn peeked_step(&mut self, src: &TcpStream, step: &mut Step<'_>) -> Result<Peeked, Side> {
        let track = self.ws.as_mut().expect("a tracked pump");
        let mut head = [0u8; HOLD];
        let mut seen = 0;
        let got = src.try_io(Interest::READABLE, || {
            seen = peek(src.as_raw_fd(), &mut head)?;
            Ok(())
        });
        match got {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Peeked::Stop),
            Err(_) => return Err(Side::Reader),
        }
        if seen == 0 {
            self.eof = true;
            track.eof();
            return Ok(Peeked::Stop);
        }
        let whole = seen >= 2 && seen >= usize::from(frames::header_len(head[1]));
        let big = whole
            && frames::parse(&head[..seen])
                .is_ok_and(|h| !h.opcode.is_control() && h.len >= SPLICE_MIN);
        if !big {
            if whole {
                // A small frame: back to reading runs of frames into memory.
                track.big = false;
            }
            return Ok(Peeked::Small);
        }
        // No descriptor for a pipe: the buffered path takes it all through memory.
        let Ok(pipe) = Pipe::borrow() else {
            return Ok(Peeked::Small);
        };
        let len = usize::from(frames::header_len(head[1]));
        // The tracker reads the header as if it had been read, before a byte moves:
        // a bad one is never passed on.
        let mut buf = [0u8; 2 * HOLD];
        buf[HOLD..HOLD + len].copy_from_slice(&head[..len]);
        let taken = track.take(&mut buf, len, step.ws_route());
        if let Some(v) = taken.violation {
            step.violation = step.violation.or(Some(v));
            pipe.give_back();
            return Ok(Peeked::Stop);
        }
        let want = len + (track.payload_left().min((CHUNK - len) as u64) as usize);
        let mut moved = 0;
        // The peeked header is in the socket, so these splices find it; a short one
        // (the header across two segments and a full pipe, in theory) takes the rest.
        while moved < len {
            let mut n = 0;
            let got = src.try_io(Interest::READABLE, || {
                n = splice(src.as_raw_fd(), pipe.write.as_raw_fd(), want - moved)?;
                Ok(())
            });
            match got {
                Ok(()) if n > 0 => moved += n,
                _ => {
                    // The tracker took a header the pipe does not hold whole: the
                    // stream cannot go on consistently.
                    pipe.give_back();
                    return Err(Side::Reader);
                }
            }
        }
        track.skip((moved - len) as u64, step.ws_route());
        self.in_pipe = moved;
        self.pipe = Some(pipe);
        self.total += moved as u64;
        step.counter.inc_by(moved as u64);
        step.moved = true;
        Ok(Peeked::Spliced)
    }
}

/// Reads up to `buf.len()` bytes from a socket.
fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: as for `peek`.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Reads up to `buf.len()` bytes from a socket without taking them from it.
fn peek(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length; the descriptor is open for the
    // call (the caller borrows its owner).
    let n = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
