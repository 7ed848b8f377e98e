//! A tunnel's state on its ring, and what each completion does to it. The driver
//! moves the bytes itself: a receive queues its buffer and starts the send, a send's
//! completion starts the next one or re-arms the receive, all within one reap, so the
//! tunnel's task is woken only to count what moved and to see an end.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::task::Waker;

use bytes::Bytes;
use io_uring::{cqueue, opcode, types};

use super::ring::{CAP, GROUP, Ring};

/// Operation kinds, in the low bits of a CQE's user_data (the slot above them).
const RECV: u64 = 0; // + direction
const SEND: u64 = 2; // + direction
const CANCEL: u64 = 4;
const OP_BITS: u32 = 3;

fn user_data(slot: u32, op: u64) -> u64 {
    (u64::from(slot) << OP_BITS) | op
}

/// Which side of a direction failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fail {
    Reader,
    Writer,
}

/// Where a direction's multishot receive stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Recv {
    /// None in flight.
    #[default]
    Idle,
    Armed,
    /// Cancelled because the direction holds `CAP` buffers; its last CQE is to come.
    Cancelling,
    /// Ended for want of buffers; re-armed when some come back.
    Starved,
}

/// Bytes received and not yet all sent.
enum Chunk {
    /// Read by hyper past the handshake; counted already.
    Early(Bytes),
    /// A provided buffer holding `len` bytes.
    Buf { bid: u16, len: usize },
}

/// One direction: received from `fds[d]`, sent to `fds[1 - d]`.
#[derive(Default)]
struct Flow {
    queue: VecDeque<Chunk>,
    /// Bytes of the front chunk already sent.
    sent: usize,
    recv: Recv,
    /// A send is in flight (one at a time: two could be reordered).
    sending: bool,
    eof: bool,
    /// End of stream passed on: the writer is shut down.
    done: bool,
    failed: Option<Fail>,
    /// Bytes sent since the tunnel last looked.
    moved: u64,
}

/// A tunnel's two sockets and two directions.
pub(super) struct Slot {
    /// Client, upstream. Kept open until the slot's last completion: the kernel must
    /// not see a descriptor number reused while operations on it are in flight.
    fds: [OwnedFd; 2],
    flows: [Flow; 2],
    /// Operations whose last CQE has not come.
    inflight: u32,
    /// Its tunnel is gone.
    dropped: bool,
    /// The tunnel's task, taken when it is woken (its next poll puts it back).
    waker: Option<Waker>,
}

/// What a direction shows its tunnel.
pub(super) struct Seen {
    pub(super) moved: u64,
    pub(super) eof: bool,
    pub(super) done: bool,
    pub(super) failed: Option<Fail>,
}

impl Ring {
    /// Takes a tunnel's sockets: queues the early bytes to send first and arms both
    /// receives. Returns its slot.
    pub(super) fn open(&mut self, fds: [OwnedFd; 2], early: [Bytes; 2]) -> u32 {
        let slot = Slot {
            fds,
            flows: Default::default(),
            inflight: 0,
            dropped: false,
            waker: None,
        };
        let id = match self.free_slots.pop() {
            Some(id) => {
                self.slots[id as usize] = Some(slot);
                id
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        };
        for (d, early) in early.into_iter().enumerate() {
            if !early.is_empty() {
                // Only these bytes are kept, not hyper's whole read buffer they are a
                // view of.
                self.flow(id, d)
                    .queue
                    .push_back(Chunk::Early(Bytes::copy_from_slice(&early)));
                self.send(id, d);
            }
            self.arm(id, d);
        }
        self.kick();
        id
    }

    /// What direction `d` of slot `id` has to show; `waker` is woken at the next.
    pub(super) fn look(&mut self, id: u32, d: usize, waker: &Waker) -> Seen {
        let Some(slot) = self.slots.get_mut(id as usize).and_then(Option::as_mut) else {
            return Seen {
                moved: 0,
                eof: false,
                done: false,
                failed: Some(Fail::Reader),
            };
        };
        if slot.waker.as_ref().is_none_or(|w| !w.will_wake(waker)) {
            slot.waker = Some(waker.clone());
        }
        let flow = &mut slot.flows[d];
        Seen {
            moved: std::mem::take(&mut flow.moved),
            eof: flow.eof,
            done: flow.done,
            failed: flow.failed,
        }
    }

    /// Whether direction `d` of slot `id` has a receive in flight.
    #[cfg(test)]
    pub(super) fn receiving(&self, id: u32, d: usize) -> bool {
        self.slots[id as usize]
            .as_ref()
            .is_some_and(|s| matches!(s.flows[d].recv, Recv::Armed | Recv::Cancelling))
    }

    /// Buffers slot `id` holds, both directions.
    #[cfg(test)]
    pub(super) fn held_by(&self, id: u32) -> usize {
        self.slots[id as usize].as_ref().map_or(0, |s| {
            s.flows
                .iter()
                .flat_map(|f| &f.queue)
                .filter(|c| matches!(c, Chunk::Buf { .. }))
                .count()
        })
    }

    /// The tunnel is gone: its sockets are shut down (the peers see the end at once,
    /// and operations in flight finish), its operations cancelled, its buffers given
    /// back; the slot and the sockets go with its last completion.
    pub(super) fn release(&mut self, id: u32) {
        let Some(slot) = self.slots.get_mut(id as usize).and_then(Option::as_mut) else {
            return;
        };
        slot.dropped = true;
        slot.waker = None;
        for flow in &mut slot.flows {
            // The chunk of a send in flight stays until its completion.
            let keep = if flow.sending {
                flow.queue.pop_front()
            } else {
                None
            };
            for chunk in flow.queue.drain(..) {
                if let Chunk::Buf { bid, .. } = chunk {
                    self.bufs.give(bid);
                }
            }
            flow.queue.extend(keep);
        }
        let fds = [slot.fds[0].as_raw_fd(), slot.fds[1].as_raw_fd()];
        for fd in fds {
            shutdown(fd, libc::SHUT_RDWR);
        }
        if slot.inflight > 0 {
            slot.inflight += 2;
            for fd in fds {
                let cancel = types::CancelBuilder::fd(types::Fd(fd)).all();
                self.sq.push(
                    opcode::AsyncCancel2::new(cancel)
                        .build()
                        .user_data(user_data(id, CANCEL)),
                );
            }
            self.kick();
        }
        self.maybe_free(id);
    }

    /// Handles one completion. Never panics, whatever the result: one that makes no
    /// sense is an error of the side it came from.
    pub(super) fn complete(&mut self, data: u64, res: i32, flags: u32) {
        let id = (data >> OP_BITS) as u32;
        let op = data & ((1 << OP_BITS) - 1);
        let bid = cqueue::buffer_select(flags);
        let Some(slot) = self.slots.get_mut(id as usize).and_then(Option::as_mut) else {
            // No such slot (a slot lives until its last completion, so this does not
            // happen); a buffer it carries goes back all the same.
            if let Some(bid) = bid {
                self.bufs.held += 1;
                self.bufs.give(bid);
            }
            return;
        };
        if bid.is_some() {
            self.bufs.held += 1;
        }
        match op {
            CANCEL => slot.inflight = slot.inflight.saturating_sub(1),
            RECV..SEND => self.received(id, (op - RECV) as usize, res, flags, bid),
            SEND..CANCEL => self.sent(id, (op - SEND) as usize, res, bid),
            _ => {
                if let Some(bid) = bid {
                    self.bufs.give(bid);
                }
            }
        }
        self.maybe_free(id);
    }

    /// A receive's completion on direction `d`.
    fn received(&mut self, id: u32, d: usize, res: i32, flags: u32, bid: Option<u16>) {
        let more = cqueue::more(flags);
        let Some(slot) = self.slots[id as usize].as_mut() else {
            return;
        };
        let dropped = slot.dropped;
        let flow = &mut slot.flows[d];
        if !more {
            slot.inflight = slot.inflight.saturating_sub(1);
            if flow.recv != Recv::Starved {
                flow.recv = Recv::Idle;
            }
        }
        let open = !dropped && flow.failed.is_none() && !flow.eof;
        match (res, bid) {
            (n, Some(bid)) if n > 0 && open => {
                flow.queue.push_back(Chunk::Buf {
                    bid,
                    len: (n as usize).min(super::ring::BUF_SIZE),
                });
                let full = flow.queue.len() >= CAP;
                if !flow.sending {
                    self.send(id, d);
                }
                let flow = self.flow(id, d);
                if full && flow.recv == Recv::Armed {
                    // Enough held unsent: stop receiving until it has gone out.
                    flow.recv = Recv::Cancelling;
                    self.cancel_recv(id, d);
                }
            }
            (_, Some(bid)) => self.bufs.give(bid),
            (0, None) if open => {
                flow.eof = true;
                if flow.queue.is_empty() && !flow.sending {
                    self.finish(id, d);
                }
            }
            (e, None) if e == -libc::ENOBUFS && open => {
                flow.recv = Recv::Starved;
                self.starvations += 1;
                self.starved.push_back((id, d));
            }
            (e, None) if e == -libc::ECANCELED => {}
            (_, None) if open => {
                flow.failed = Some(Fail::Reader);
                self.wake(id);
            }
            (_, None) => {}
        }
        // A receive that ended (cancelled at the cap, or by the kernel) starts again
        // once what it queued has gone out; until then the send side re-arms it.
        let flow = self.flow(id, d);
        let open = !dropped && flow.failed.is_none() && !flow.eof;
        if open && flow.recv == Recv::Idle && flow.queue.is_empty() && !flow.sending {
            self.arm(id, d);
        }
    }

    /// A send's completion on direction `d`.
    fn sent(&mut self, id: u32, d: usize, res: i32, bid: Option<u16>) {
        if let Some(bid) = bid {
            // Sends select no buffer; one coming back anyway is returned.
            self.bufs.give(bid);
        }
        let Some(slot) = self.slots[id as usize].as_mut() else {
            return;
        };
        slot.inflight = slot.inflight.saturating_sub(1);
        let dropped = slot.dropped;
        let flow = &mut slot.flows[d];
        flow.sending = false;
        if dropped {
            if let Some(Chunk::Buf { bid, .. }) = flow.queue.pop_front() {
                self.bufs.give(bid);
            }
            return;
        }
        if res <= 0 {
            // An error (EPIPE, ECONNRESET, ...), or nothing taken of a non-empty send.
            flow.failed = Some(Fail::Writer);
            self.wake(id);
            return;
        }
        let n = res as usize;
        let (len, counted) = match flow.queue.front() {
            Some(Chunk::Early(b)) => (b.len(), false),
            Some(Chunk::Buf { len, .. }) => (*len, true),
            None => (0, false),
        };
        let n = n.min(len - flow.sent);
        flow.sent += n;
        if counted {
            flow.moved += n as u64;
        }
        if flow.sent >= len {
            // A short send leaves the rest at the front, sent next.
            flow.sent = 0;
            if let Some(Chunk::Buf { bid, .. }) = flow.queue.pop_front() {
                self.bufs.give(bid);
            }
        }
        self.wake(id);
        let flow = self.flow(id, d);
        if !flow.queue.is_empty() {
            self.send(id, d);
        } else if flow.eof {
            self.finish(id, d);
        } else if flow.recv == Recv::Idle {
            self.arm(id, d);
        }
    }

    /// Re-arms directions that ran out of buffers, as many as there are buffers free.
    pub(super) fn feed_starved(&mut self) {
        let mut free = self.bufs.free();
        while free > 0 {
            let Some((id, d)) = self.starved.pop_front() else {
                return;
            };
            let Some(slot) = self.slots.get_mut(id as usize).and_then(Option::as_mut) else {
                continue;
            };
            let flow = &mut slot.flows[d];
            if slot.dropped || flow.recv != Recv::Starved || flow.eof || flow.failed.is_some() {
                continue;
            }
            flow.recv = Recv::Idle;
            self.arm(id, d);
            free -= 1;
        }
    }

    fn flow(&mut self, id: u32, d: usize) -> &mut Flow {
        &mut self.slots[id as usize]
            .as_mut()
            .expect("a slot with operations in flight")
            .flows[d]
    }

    /// Starts a multishot receive on direction `d`'s reader.
    fn arm(&mut self, id: u32, d: usize) {
        let Some(slot) = self.slots[id as usize].as_mut() else {
            return;
        };
        slot.flows[d].recv = Recv::Armed;
        slot.inflight += 1;
        let fd = slot.fds[d].as_raw_fd();
        self.sq.push(
            opcode::RecvMulti::new(types::Fd(fd), GROUP)
                .build()
                .user_data(user_data(id, RECV + d as u64)),
        );
    }

    fn cancel_recv(&mut self, id: u32, d: usize) {
        if let Some(slot) = self.slots[id as usize].as_mut() {
            slot.inflight += 1;
        }
        self.sq.push(
            opcode::AsyncCancel::new(user_data(id, RECV + d as u64))
                .build()
                .user_data(user_data(id, CANCEL)),
        );
    }

    /// Sends the rest of direction `d`'s front chunk.
    fn send(&mut self, id: u32, d: usize) {
        let Some(slot) = self.slots[id as usize].as_mut() else {
            return;
        };
        let fd = slot.fds[1 - d].as_raw_fd();
        let flow = &mut slot.flows[d];
        let (ptr, len) = match flow.queue.front() {
            Some(Chunk::Early(b)) => (b.as_ptr(), b.len()),
            Some(Chunk::Buf { bid, len }) => (self.bufs.addr(*bid), *len),
            None => return,
        };
        let sent = flow.sent.min(len);
        flow.sending = true;
        slot.inflight += 1;
        // MSG_NOSIGNAL: a peer gone is an error of the writer, not a SIGPIPE.
        self.sq.push(
            opcode::Send::new(types::Fd(fd), ptr.wrapping_add(sent), (len - sent) as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(user_data(id, SEND + d as u64)),
        );
    }

    /// Direction `d` ended and all it received is sent: pass the end of stream on.
    fn finish(&mut self, id: u32, d: usize) {
        let Some(slot) = self.slots[id as usize].as_mut() else {
            return;
        };
        shutdown(slot.fds[1 - d].as_raw_fd(), libc::SHUT_WR);
        slot.flows[d].done = true;
        self.wake(id);
    }

    /// Wakes slot `id`'s tunnel, once until it looks again.
    fn wake(&mut self, id: u32) {
        if let Some(w) = self.slots[id as usize]
            .as_mut()
            .and_then(|s| s.waker.take())
        {
            self.wakes.push(w);
        }
    }

    /// Frees a dropped tunnel's slot once nothing is in flight; its sockets close.
    fn maybe_free(&mut self, id: u32) {
        let Some(cell) = self.slots.get_mut(id as usize) else {
            return;
        };
        if cell.as_ref().is_some_and(|s| s.dropped && s.inflight == 0) {
            *cell = None;
            self.free_slots.push(id);
        }
    }
}

/// `shutdown(2)`, its error ignored: the peer may be gone already.
fn shutdown(fd: RawFd, how: libc::c_int) {
    // SAFETY: `fd` is a socket its slot keeps open for the duration of the call;
    // shutdown touches no memory of ours.
    unsafe {
        libc::shutdown(fd, how);
    }
}
