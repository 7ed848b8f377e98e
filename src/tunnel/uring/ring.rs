//! One io_uring per thread: its provided buffers, its submission queue, and the driver
//! task that reaps its completions.
//!
//! The ring is made the first time a tunnel on the thread asks for it, and lives as
//! long as its driver task (the runtime) does. Tunnels made on the thread hold its
//! `Arc`; on a multi-thread runtime a tunnel may then be polled from any worker, which
//! is why the ring sits behind a mutex rather than in a `RefCell`.

use std::alloc::Layout;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use io_uring::types::BufRingEntry;
use io_uring::{IoUring, cqueue, squeue};
use tokio::io::unix::AsyncFd;

use super::flow::Slot;

/// Size of one provided buffer. 16 KiB is one full-sized TCP segment train on
/// loopback and what nginx relays a tunnel with (`proxy_buffer_size 16k`); a 64 KiB
/// message takes four receives, a 64 B one wastes the rest of a buffer only until it
/// is sent.
pub(super) const BUF_SIZE: usize = 16 * 1024;

/// Provided buffers per ring: 256 × 16 KiB = 4 MiB per thread, touched only as they
/// are used. With [`CAP`] buffers per direction, 64 directions can be backed up at
/// once before the pool runs dry (the others then wait for buffers, see
/// `Ring::feed_starved`); more would pin memory for the rare case.
pub(super) const BUFS: u16 = 256;

/// Buffers one direction may hold unsent before its receive is stopped: 4 × 16 KiB
/// = 64 KiB, what one pipe holds in the splice transfer. A multishot receive that is
/// being cancelled may still fill the buffers of the burst it is in (the kernel
/// receives up to 32 times per wake-up while the socket has bytes), so the bound one
/// direction can reach is `CAP` plus one burst.
pub(super) const CAP: usize = 4;

/// The kernel's burst of a multishot receive (`MULTISHOT_MAX_RETRY`, io_uring/net.c).
#[cfg(test)]
pub(super) const BURST: usize = 32;

/// The buffer group of the pool (one group per ring).
pub(super) const GROUP: u16 = 0;

/// Submission queue entries. Each tunnel has at most six ops in flight (a receive
/// and a send each way, two cancels), and the driver submits after every batch of
/// completions, so 512 is rarely near full; when it is, it is submitted to make room.
const SQ_ENTRIES: u32 = 512;

/// Completion queue entries: a batch of multishot receives can post many at once.
/// The kernel keeps what overflows (IORING_FEAT_NODROP), at a cost.
const CQ_ENTRIES: u32 = 4096;

/// Rounds of submit-and-reap one poll of the driver makes before it yields to the
/// tunnels it woke.
const TURNS: usize = 8;

/// A ring shared by the tunnels made on one thread.
pub(crate) struct Shared {
    ring: Mutex<Ring>,
    /// Cleared when the driver task ends (its runtime shut down): a new ring is made
    /// for tunnels after that.
    alive: AtomicBool,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Ring> {
        // A panic while holding the lock left a ring whose state is still consistent
        // enough to cancel and close: its CQE handling never panics on a result.
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }
}

thread_local! {
    static LOCAL: std::cell::RefCell<Option<Arc<Shared>>> = const { std::cell::RefCell::new(None) };
}

/// io_uring was refused once (old kernel, seccomp, `kernel.io_uring_disabled`): it
/// will be refused again, so no thread tries after that.
static REFUSED: AtomicBool = AtomicBool::new(false);

/// This thread's ring, made on first use; `None` if io_uring cannot be had (a warning
/// is logged once) or no runtime runs here.
pub(crate) fn current() -> Option<Arc<Shared>> {
    if REFUSED.load(Ordering::Relaxed) {
        return None;
    }
    LOCAL.with_borrow_mut(|local| {
        if let Some(s) = local.as_ref().filter(|s| s.alive.load(Ordering::Acquire)) {
            return Some(s.clone());
        }
        tokio::runtime::Handle::try_current().ok()?;
        match start() {
            Ok(shared) => {
                *local = Some(shared.clone());
                Some(shared)
            }
            Err(e) => {
                if !REFUSED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "io_uring unavailable: tunnels use splice instead");
                }
                None
            }
        }
    })
}

/// Makes a ring and spawns its driver.
fn start() -> io::Result<Arc<Shared>> {
    let ring = Ring::new()?;
    let raw = ring.sq.uring.as_raw_fd();
    // SAFETY: the ring's descriptor stays open while the `AsyncFd` lives: the driver
    // that owns it also holds the `Arc` that owns the ring, and drops the `AsyncFd`
    // first.
    let fd = unsafe { AsyncFd::register_with_interest(raw, tokio::io::Interest::READABLE) }?;
    let shared = Arc::new(Shared {
        ring: Mutex::new(ring),
        alive: AtomicBool::new(true),
    });
    tokio::spawn(Driver {
        fd,
        shared: shared.clone(),
        wakes: Vec::new(),
    });
    tracing::info!("io_uring tunnel transfer ready on this thread");
    Ok(shared)
}

/// The provided-buffer pool: one allocation of `BUFS` buffers, and the ring of
/// entries through which they are handed to the kernel.
pub(super) struct Bufs {
    mem: NonNull<u8>,
    entries: NonNull<BufRingEntry>,
    tail: u16,
    /// Buffers the kernel filled and we have not given back.
    pub(super) held: usize,
}

// SAFETY: the pointers are to memory this pool alone owns (and the kernel, through the
// ring it is registered with); every access goes through the ring's mutex.
unsafe impl Send for Bufs {}

impl Bufs {
    fn mem_layout() -> Layout {
        // Page-aligned, so that buffers start on page boundaries.
        Layout::from_size_align(BUF_SIZE * BUFS as usize, 4096).expect("a valid layout")
    }

    fn entries_layout() -> Layout {
        // The kernel wants the entry ring page-aligned.
        Layout::from_size_align(size_of::<BufRingEntry>() * BUFS as usize, 4096)
            .expect("a valid layout")
    }

    fn new() -> io::Result<Bufs> {
        // SAFETY: the layouts have non-zero sizes. The buffers are left uninitialized
        // (untouched pages cost no memory); the kernel writes them before we read.
        let mem = NonNull::new(unsafe { std::alloc::alloc(Self::mem_layout()) });
        // SAFETY: as above; the entries are zeroed, as the kernel expects the tail
        // (which overlays the first entry's last field) to start at 0.
        let entries =
            NonNull::new(unsafe { std::alloc::alloc_zeroed(Self::entries_layout()) }.cast());
        let (Some(mem), Some(entries)) = (mem, entries) else {
            return Err(io::ErrorKind::OutOfMemory.into());
        };
        let mut bufs = Bufs {
            mem,
            entries,
            tail: 0,
            held: BUFS as usize,
        };
        for bid in 0..BUFS {
            bufs.give(bid);
        }
        Ok(bufs)
    }

    /// Where buffer `bid` starts.
    pub(super) fn addr(&self, bid: u16) -> *const u8 {
        // SAFETY: bid < BUFS (the kernel only hands back ids we gave it), so the offset
        // stays within the allocation.
        unsafe { self.mem.as_ptr().add(bid as usize * BUF_SIZE) }
    }

    /// Hands buffer `bid` back to the kernel.
    pub(super) fn give(&mut self, bid: u16) {
        if bid >= BUFS {
            return;
        }
        let at = (self.tail & (BUFS - 1)) as usize;
        // SAFETY: `at` < BUFS; the entry at the tail is one the kernel is done with
        // (it only reads entries between its head and our tail). Only its address,
        // length and id are written, never the field that overlays the tail.
        let entry = unsafe { &mut *self.entries.as_ptr().add(at) };
        entry.set_addr(self.addr(bid) as u64);
        entry.set_len(BUF_SIZE as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail is the u16 the kernel reads the ring's end from, inside the
        // first entry, aligned; the release store publishes the entry written above.
        unsafe {
            let tail = BufRingEntry::tail(self.entries.as_ptr()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
        self.held = self.held.saturating_sub(1);
    }

    /// Buffers the kernel can still fill.
    pub(super) fn free(&self) -> usize {
        BUFS as usize - self.held
    }
}

impl Drop for Bufs {
    fn drop(&mut self) {
        // SAFETY: both were allocated in `new` with these layouts, and the ring that
        // could write into them has been torn down (see `Ring::drop`).
        unsafe {
            std::alloc::dealloc(self.mem.as_ptr(), Self::mem_layout());
            std::alloc::dealloc(self.entries.as_ptr().cast(), Self::entries_layout());
        }
    }
}

/// The submission side: the ring itself, and entries waiting for room.
pub(super) struct Submit {
    pub(super) uring: IoUring,
    /// Entries that found the submission queue full even after a submit.
    backlog: VecDeque<squeue::Entry>,
    /// Entries pushed since the last submit.
    pub(super) unsubmitted: bool,
}

impl Submit {
    /// Queues an entry; it goes to the kernel with the next submit, together with all
    /// the others queued by then (one `io_uring_enter` for the batch).
    ///
    /// Every entry pushed here refers only to memory that outlives its operation: a
    /// provided buffer (freed only after the ring, see `Ring::drop`), an early chunk
    /// kept in its slot until the send's completion, and sockets a slot keeps open
    /// until its last completion.
    pub(super) fn push(&mut self, entry: squeue::Entry) {
        self.unsubmitted = true;
        if !self.backlog.is_empty() {
            self.backlog.push_back(entry);
            return;
        }
        // SAFETY: see above: what the entry points to stays valid until its CQE.
        if unsafe { self.uring.submission().push(&entry) }.is_ok() {
            return;
        }
        let _ = self.uring.submit();
        // SAFETY: as above.
        if unsafe { self.uring.submission().push(&entry) }.is_err() {
            self.backlog.push_back(entry);
        }
    }

    /// Sends what is queued to the kernel.
    fn submit(&mut self) {
        while let Some(entry) = self.backlog.front() {
            // SAFETY: as in `push`.
            if unsafe { self.uring.submission().push(entry) }.is_err() {
                break;
            }
            self.backlog.pop_front();
        }
        match self.uring.submit() {
            Ok(_) => self.unsubmitted = !self.backlog.is_empty(),
            // EBUSY (completions to reap first), EAGAIN, EINTR: the next turn tries again.
            Err(e) if e.raw_os_error() != Some(libc::EBADF) => {}
            Err(e) => {
                tracing::warn!(error = %e, "io_uring submit failed");
            }
        }
    }
}

/// A thread's ring and the tunnels on it.
pub(crate) struct Ring {
    pub(super) sq: Submit,
    pub(super) bufs: Bufs,
    /// Tunnels by slot number; a slot outlives its tunnel until its last completion.
    pub(super) slots: Vec<Option<Slot>>,
    pub(super) free_slots: Vec<u32>,
    /// Directions whose receive ended for want of buffers, first come first served.
    pub(super) starved: VecDeque<(u32, usize)>,
    /// Receives that ended for want of buffers, since the ring was made.
    pub(super) starvations: u64,
    /// Tunnels to wake once the lock is let go.
    pub(super) wakes: Vec<Waker>,
    /// The driver, woken when a tunnel queues entries outside of its turn.
    driver: Option<Waker>,
    cqes: Vec<cqueue::Entry>,
}

impl Ring {
    fn new() -> io::Result<Ring> {
        // No SQPOLL (it burns a core), no SINGLE_ISSUER or DEFER_TASKRUN: tunnels
        // migrate between the workers of a multi-thread runtime, and so do the
        // threads that submit for a ring.
        let mut builder = IoUring::builder();
        builder.setup_cqsize(CQ_ENTRIES);
        // COOP_TASKRUN: completions are run at the thread's next system call instead
        // of interrupting it with a signal-like notification each time (a thread
        // asleep in epoll is still woken, so no completion waits for long). Without
        // it the transfer lost to splice even on small messages: 64 B × 100 conns ×
        // window 8, 1.77 us of CPU per message with it, 2.78 to 2.99 us without,
        // splice 2.55 us (quick runs, quiet machine, two each). With it, full runs of
        // compare.sh (3 rounds) tie with splice: 2.04 against 1.98 us, 2.19 against
        // 2.40 (2026-12-08). `SLUICE_IO_URING_COOP=0` turns it off, to compare.
        if std::env::var("SLUICE_IO_URING_COOP").map_or(true, |v| v != "0") {
            builder.setup_coop_taskrun().setup_taskrun_flag();
        }
        let uring = builder.build(SQ_ENTRIES)?;
        let bufs = Bufs::new()?;
        // SAFETY: the entry ring is page-aligned, BUFS entries long, and lives until
        // after the ring is torn down (`Ring` drops `sq` before `bufs`).
        unsafe {
            uring.submitter().register_buf_ring_with_flags(
                bufs.entries.as_ptr() as u64,
                BUFS,
                GROUP,
                0,
            )?;
        }
        Ok(Ring {
            sq: Submit {
                uring,
                backlog: VecDeque::new(),
                unsubmitted: false,
            },
            bufs,
            slots: Vec::new(),
            free_slots: Vec::new(),
            starved: VecDeque::new(),
            starvations: 0,
            wakes: Vec::new(),
            driver: None,
            cqes: Vec::new(),
        })
    }

    /// Wakes the driver to submit what a tunnel queued.
    pub(super) fn kick(&mut self) {
        if let Some(w) = self.driver.take() {
            w.wake();
        }
    }

    /// Submits, reaps and handles completions until the ring is quiet; returns true
    /// if it is still busy after `TURNS` rounds.
    fn turn(&mut self) -> bool {
        for _ in 0..TURNS {
            if self.sq.unsubmitted || self.sq.uring.submission().taskrun() {
                self.sq.submit();
            }
            let mut cqes = std::mem::take(&mut self.cqes);
            cqes.extend(self.sq.uring.completion());
            if cqes.is_empty() {
                self.cqes = cqes;
                // A submit that found the queue busy, or entries left over, is tried
                // again next time; the ring's readiness brings the driver back.
                return false;
            }
            for c in cqes.drain(..) {
                self.complete(c.user_data(), c.result(), c.flags());
            }
            self.cqes = cqes;
            self.feed_starved();
        }
        true
    }

    /// Buffers in use, and slots still held (open tunnels plus closed ones whose
    /// operations are not all completed).
    #[cfg(test)]
    pub(super) fn usage(&self) -> (usize, usize) {
        (self.bufs.held, self.slots.iter().flatten().count())
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Nothing may write into the buffers once they are freed: cancel every
        // operation and wait for it (synchronously), or, failing that, leak them.
        let cancelled = self
            .sq
            .uring
            .submitter()
            .register_sync_cancel(None, io_uring::types::CancelBuilder::any());
        match cancelled {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(_) => {
                let bufs = std::mem::replace(&mut self.bufs, Bufs::empty());
                std::mem::forget(bufs);
            }
        }
        // Slots close their sockets as they drop with the ring.
    }
}

impl Bufs {
    /// A pool with no memory, put in the place of one that had to be leaked.
    fn empty() -> Bufs {
        Bufs {
            mem: NonNull::dangling(),
            entries: NonNull::dangling(),
            tail: 0,
            held: 0,
        }
    }
}

/// The task that submits what tunnels queued and reaps completions, waking the
/// tunnels they concern.
struct Driver {
    // Dropped (deregistered) before the ring it watches.
    fd: AsyncFd<RawFd>,
    shared: Arc<Shared>,
    /// The wakers one turn collected, woken once the lock is let go; kept (empty)
    /// between polls so that its room is not allocated again each time.
    wakes: Vec<Waker>,
}

impl Future for Driver {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            let busy = {
                let mut ring = this.shared.lock();
                if ring
                    .driver
                    .as_ref()
                    .is_none_or(|w| !w.will_wake(cx.waker()))
                {
                    ring.driver = Some(cx.waker().clone());
                }
                let busy = ring.turn();
                std::mem::swap(&mut this.wakes, &mut ring.wakes);
                busy
            };
            for w in this.wakes.drain(..) {
                w.wake();
            }
            if busy {
                // Let the tunnels just woken run before the next round.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            match this.fd.poll_read_ready(cx) {
                Poll::Ready(Ok(mut guard)) => guard.clear_ready(),
                Poll::Ready(Err(e)) => {
                    tracing::warn!(error = %e, "io_uring driver stopped");
                    return Poll::Ready(());
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.shared.alive.store(false, Ordering::Release);
    }
}
