//! floor: the least a relay can do, as a column of the side-by-side benchmark.
//!
//! It accepts TCP connections, opens one to the upstream for each, and copies bytes
//! both ways until both directions have ended: no HTTP, no WebSocket frames, no TLS,
//! no timeouts, no limits, no logging. One thread, non-blocking sockets on epoll
//! (through mio), one fixed buffer per direction. A proxy does all of this and more,
//! so what the floor spends per message, request or tunnel is what the bytes
//! themselves cost through a user-space process on this machine; what a proxy spends
//! above it is the price of everything else it does.
//!
//! A half-close is passed on (the end of one direction becomes a `shutdown(Write)`
//! on the other socket) and a pair is closed once both directions have ended, or at
//! the first error on either socket.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

/// A minimal TCP relay for the benchmark (loopback only).
#[derive(Parser)]
#[command(about)]
struct Args {
    /// Where to listen.
    #[arg(long)]
    listen: SocketAddr,
    /// Where every accepted connection is relayed to.
    #[arg(long)]
    upstream: SocketAddr,
}

/// Bytes read at once in each direction: the size of the scratch buffer sluice's
/// tunnel reads into, so that both make as many read calls for a large message.
const BUF: usize = 64 * 1024;

/// The listener's token; a pair's sockets are `2 × slot` (client) and `2 × slot + 1`
/// (upstream).
const LISTENER: Token = Token(usize::MAX);

/// How long to wait before accepting again after accept failed for lack of
/// descriptors or memory: the pending connections stay in the backlog meanwhile.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.listen.ip().is_loopback() || !args.upstream.ip().is_loopback() {
        eprintln!("floor: --listen and --upstream must be loopback addresses");
        return ExitCode::from(2);
    }
    match Relay::new(&args).and_then(|mut r| r.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floor: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The event loop and every pair it relays.
struct Relay {
    poll: Poll,
    listener: TcpListener,
    upstream: SocketAddr,
    /// Pairs by slot; a closed pair leaves `None` for the next one to take.
    pairs: Vec<Option<Pair>>,
    free: Vec<usize>,
    /// Buffers not in use. A direction holds one only while bytes wait in it, so an
    /// idle tunnel holds none: otherwise the idle rows would measure what the
    /// allocator does with two untouched 64 KiB blocks per tunnel, not relaying.
    pool: Vec<Box<[u8]>>,
    accept_paused: bool,
}

impl Relay {
    fn new(args: &Args) -> io::Result<Relay> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(args.listen)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Relay {
            poll,
            listener,
            upstream: args.upstream,
            pairs: Vec::new(),
            free: Vec::new(),
            pool: Vec::new(),
            accept_paused: false,
        })
    }

    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let wait = self.accept_paused.then_some(ACCEPT_RETRY);
            if let Err(e) = self.poll.poll(&mut events, wait) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if self.accept_paused {
                self.accept_paused = false;
                self.accept();
            }
            for ev in events.iter() {
                if ev.token() == LISTENER {
                    self.accept();
                } else {
                    self.on_event(ev);
                }
            }
        }
    }

    /// Accepts every pending connection: the listener is edge-triggered.
    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((client, _)) => {
                    if let Err(e) = self.open(client) {
                        eprintln!("floor: cannot relay a connection: {e}");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    // Out of descriptors or memory: try again shortly rather than
                    // spin, and rather than lose the edge the listener gave.
                    eprintln!("floor: accept: {e}");
                    self.accept_paused = true;
                    return;
                }
            }
        }
    }

    /// Starts the connection to the upstream and registers both sockets.
    fn open(&mut self, mut client: TcpStream) -> io::Result<()> {
        let mut upstream = TcpStream::connect(self.upstream)?;
        // Small messages go out at once, as every proxy here sends them.
        client.set_nodelay(true)?;
        upstream.set_nodelay(true)?;
        let slot = self.free.pop().unwrap_or_else(|| {
            self.pairs.push(None);
            self.pairs.len() - 1
        });
        let both = Interest::READABLE | Interest::WRITABLE;
        let registry = self.poll.registry();
        let registered = registry
            .register(&mut client, Token(2 * slot), both)
            .and_then(|()| registry.register(&mut upstream, Token(2 * slot + 1), both));
        if let Err(e) = registered {
            self.free.push(slot);
            return Err(e);
        }
        self.pairs[slot] = Some(Pair {
            sockets: [client, upstream],
            connected: false,
            ways: [Way::default(), Way::default()],
        });
        Ok(())
    }

    fn on_event(&mut self, ev: &mio::event::Event) {
        let (slot, side) = (ev.token().0 / 2, ev.token().0 % 2);
        let Some(Some(pair)) = self.pairs.get_mut(slot) else {
            // An event for a pair closed earlier in this batch.
            return;
        };
        // Way `side` reads from this socket; the other way writes to it.
        let error = ev.is_error();
        if ev.is_readable() || error {
            pair.ways[side].readable = true;
        }
        if ev.is_read_closed() || error {
            pair.ways[side].readable = true;
            pair.ways[side].closing = true;
        }
        if ev.is_writable() || ev.is_write_closed() || error {
            pair.ways[1 - side].writable = true;
        }
        let done = match pair.connecting() {
            Ok(true) => return,
            Ok(false) => pair.pump(&mut self.pool),
            Err(e) => Err(e),
        };
        match done {
            Ok(false) => {}
            Ok(true) | Err(_) => self.close(slot),
        }
    }

    /// Drops both sockets (closing them takes them out of epoll) and the buffers
    /// go back to the pool.
    fn close(&mut self, slot: usize) {
        if let Some(pair) = self.pairs[slot].take() {
            for way in pair.ways {
                if let Some(buf) = way.buf {
                    self.pool.push(buf);
                }
            }
            self.free.push(slot);
        }
    }
}

/// A client connection and the upstream connection made for it.
struct Pair {
    /// Client, then upstream.
    sockets: [TcpStream; 2],
    /// Whether the upstream connect has completed.
    connected: bool,
    /// Client to upstream, then upstream to client.
    ways: [Way; 2],
}

impl Pair {
    /// Whether the upstream connect is still under way; an error if it failed. Until
    /// it completes nothing moves: the readiness seen meanwhile is kept in the ways,
    /// and the first pump after it acts on it.
    fn connecting(&mut self) -> io::Result<bool> {
        if self.connected {
            return Ok(false);
        }
        if !self.ways[0].writable {
            // No writable event on the upstream yet.
            return Ok(true);
        }
        if let Some(e) = self.sockets[1].take_error()? {
            return Err(e);
        }
        match self.sockets[1].peer_addr() {
            Ok(_) => {
                self.connected = true;
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                self.ways[0].writable = false;
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// Moves what can be moved in both directions; true once both have ended.
    fn pump(&mut self, pool: &mut Vec<Box<[u8]>>) -> io::Result<bool> {
        let [client, upstream] = &self.sockets;
        let [up, down] = &mut self.ways;
        up.run(client, upstream, pool)?;
        down.run(upstream, client, pool)?;
        Ok(up.shut && down.shut)
    }
}

/// One direction: bytes read from one socket, held until written to the other.
#[derive(Default)]
struct Way {
    /// Present while `start..end` holds bytes not yet written.
    buf: Option<Box<[u8]>>,
    start: usize,
    end: usize,
    /// Readiness as epoll reported it (edge-triggered), cleared when a call says
    /// there is no more.
    readable: bool,
    writable: bool,
    /// The source has ended (or failed): read until it says so, whatever the
    /// length of the reads.
    closing: bool,
    /// The source's end was read.
    eof: bool,
    /// The end was passed on: the destination was shut for writing.
    shut: bool,
}

impl Way {
    fn run(
        &mut self,
        from: &TcpStream,
        to: &TcpStream,
        pool: &mut Vec<Box<[u8]>>,
    ) -> io::Result<()> {
        loop {
            if let Some(buf) = &self.buf {
                if !self.writable {
                    return Ok(());
                }
                match (&*to).write(&buf[self.start..self.end]) {
                    Ok(n) => self.start += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.writable = false;
                        return Ok(());
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
                // After a short write the next one finds the socket full and
                // returns WouldBlock, which is what guarantees the next edge.
                if self.start < self.end {
                    continue;
                }
                pool.extend(self.buf.take());
            }
            if self.eof {
                if !self.shut {
                    to.shutdown(Shutdown::Write)?;
                    self.shut = true;
                }
                return Ok(());
            }
            if !self.readable {
                return Ok(());
            }
            let mut buf = pool
                .pop()
                .unwrap_or_else(|| vec![0u8; BUF].into_boxed_slice());
            match (&*from).read(&mut buf) {
                Ok(0) => {
                    self.eof = true;
                    pool.push(buf);
                }
                Ok(n) => {
                    // A short read emptied the socket: epoll reports the next
                    // bytes as a new edge, so there is no need to read again to
                    // hear WouldBlock (unless the peer has ended: its end comes
                    // with no further edge).
                    if n < buf.len() && !self.closing {
                        self.readable = false;
                    }
                    (self.start, self.end) = (0, n);
                    self.buf = Some(buf);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    pool.push(buf);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => pool.push(buf),
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener as StdListener, TcpStream as StdStream};
    use std::thread;

    /// A relay on a free port in front of `upstream`, running on its own thread.
    fn start(upstream: SocketAddr) -> SocketAddr {
        let args = Args {
            listen: "127.0.0.1:0".parse().unwrap(),
            upstream,
        };
        let mut relay = Relay::new(&args).unwrap();
        let addr = relay.listener.local_addr().unwrap();
        thread::spawn(move || relay.run());
        addr
    }

    #[test]
    fn relays_both_ways_and_passes_half_closes_on() {
        let backend = StdListener::bind("127.0.0.1:0").unwrap();
        let upstream = backend.local_addr().unwrap();
        // The backend reads everything up to the client's end, then answers with
        // it reversed and a large tail, and ends too.
        let server = thread::spawn(move || {
            let (mut s, _) = backend.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            got.reverse();
            got.extend(vec![7u8; 3 * BUF + 5]);
            s.write_all(&got).unwrap();
        });
        let mut c = StdStream::connect(start(upstream)).unwrap();
        c.write_all(b"hello").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        server.join().unwrap();
        assert_eq!(&back[..5], b"olleh");
        assert_eq!(back.len(), 5 + 3 * BUF + 5);
    }

    #[test]
    fn an_unreachable_upstream_closes_the_client() {
        // A port that was free a moment ago: the connect is refused.
        let upstream = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut c = StdStream::connect(start(upstream)).unwrap();
        let mut b = [0u8; 1];
        assert!(matches!(c.read(&mut b), Ok(0) | Err(_)));
    }
}
