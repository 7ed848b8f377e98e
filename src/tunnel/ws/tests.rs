use super::*;
use crate::metrics::Metrics;
use crate::tunnel::frames::tests::{MASK, frame};

fn setup() -> Setup {
    Setup {
        rsv: Rsv::None,
        limits: Limits::NONE,
        close_code: 1001,
        max_messages_per_second: None,
    }
}

/// Feeds `stream` to `track` in pieces of `piece` bytes; returns what it forwarded
/// and the first violation.
fn feed(
    track: &mut Track,
    stream: &[u8],
    piece: usize,
    m: &WsMetrics,
) -> (Vec<u8>, Option<Violation>) {
    let mut out = Vec::new();
    for chunk in stream.chunks(piece) {
        let mut buf = vec![0u8; HOLD + chunk.len()];
        buf[HOLD..].copy_from_slice(chunk);
        let taken = track.take(&mut buf, chunk.len(), m);
        out.extend_from_slice(&buf[taken.forward]);
        if taken.violation.is_some() {
            return (out, taken.violation);
        }
    }
    (out, None)
}

fn metrics() -> std::sync::Arc<WsMetrics> {
    Metrics::new().route("r").websocket.clone()
}

#[test]
fn forwards_every_byte_of_good_frames_at_any_split() {
    let m = metrics();
    let mut stream = frame(0x81, b"hello", Some(MASK));
    stream.extend(frame(0x02, &[7; 300], Some(MASK)));
    stream.extend(frame(0x89, b"ping", Some(MASK)));
    stream.extend(frame(0x80, &[1; 70_000], Some(MASK)));
    for piece in [1, 2, 3, 7, 13, 14, 15, 100, 4096, stream.len()] {
        let mut track = Track::new(Sender::Client, &setup());
        let (out, v) = feed(&mut track, &stream, piece, &m);
        assert_eq!(v, None);
        assert!(out == stream, "piece {piece}: forwarded bytes differ");
        assert_eq!(track.messages, 2);
    }
}

#[test]
fn a_bad_header_split_across_reads_is_never_forwarded() {
    let m = metrics();
    let good = frame(0x81, b"fine", Some(MASK));
    // An unmasked client frame with a 16-bit length: a 4-byte header.
    let bad = frame(0x82, &[0; 200], None);
    let mut stream = good.clone();
    stream.extend(&bad);
    for piece in 1..=stream.len() {
        let mut track = Track::new(Sender::Client, &setup());
        let (out, v) = feed(&mut track, &stream, piece, &m);
        assert_eq!(v, Some(Violation::Masking), "piece {piece}");
        assert_eq!(out, good, "piece {piece}: forwarded past the good frame");
        // The writer is at a boundary: its peer gets sluice's Close.
        assert!(track.close_due);
        assert!(!track.reads());
    }
}

#[test]
fn ending_lets_the_frame_in_flight_finish_then_reads_for_the_close() {
    let m = metrics();
    let big = frame(0x82, &[9; 1000], None);
    let next = frame(0x81, b"after", None);
    let close = frame(0x88, &[0x03, 0xE8], None);
    let mut track = Track::new(Sender::Server, &setup());
    let (out, _) = feed(&mut track, &big[..500], 500, &m);
    assert_eq!(out, &big[..500]);
    track.begin_close(1001);
    assert!(!track.close_due, "mid-frame: not yet");
    let mut rest = big[500..].to_vec();
    rest.extend(&next);
    rest.extend(&close);
    let (out, _) = feed(&mut track, &rest, rest.len(), &m);
    assert_eq!(
        out,
        &big[500..],
        "the frame finishes, nothing after it passes"
    );
    assert!(track.close_due);
    assert_eq!(track.peer_close, Some(1000), "the peer's Close was seen");
    assert!(!track.reads(), "nothing is read after the peer's Close");
}

#[test]
fn ending_at_a_boundary_closes_at_once_unless_a_close_already_went() {
    let mut track = Track::new(Sender::Client, &setup());
    track.begin_close(1012);
    assert!(track.close_due);
    let m = metrics();
    let close = track.take_close(&m);
    let b = close.as_bytes();
    assert_eq!(&b[..2], &[0x88, 0x82], "masked toward the upstream");
    assert_eq!([b[6] ^ b[2], b[7] ^ b[3]], [0x03, 0xF4]);
    assert_eq!(track.sent_close(), Some(1012));

    // A direction that already carried its peer's Close sends no second one.
    let mut track = Track::new(Sender::Server, &setup());
    feed(&mut track, &frame(0x88, &[0x03, 0xE8], None), 100, &m);
    track.begin_close(1001);
    assert!(!track.close_due);
    assert_eq!(
        ControlFrame::close(1001, false).as_bytes(),
        &[0x88, 0x02, 0x03, 0xE9]
    );
}

#[test]
fn the_101s_extensions_decide_the_reserved_bits() {
    let mut h = http::HeaderMap::new();
    assert_eq!(Rsv::from_headers(&h), Rsv::None);
    h.insert(
        http::header::SEC_WEBSOCKET_EXTENSIONS,
        "permessage-deflate; client_max_window_bits=15"
            .parse()
            .unwrap(),
    );
    assert_eq!(Rsv::from_headers(&h), Rsv::Deflate);
    h.append(
        http::header::SEC_WEBSOCKET_EXTENSIONS,
        "x-custom".parse().unwrap(),
    );
    assert_eq!(Rsv::from_headers(&h), Rsv::Any);
}

#[test]
fn limits_refuse_with_1009() {
    let m = metrics();
    let setup = Setup {
        limits: Limits {
            max_frame: u64::MAX,
            max_message: 1000,
        },
        ..setup()
    };
    let mut track = Track::new(Sender::Client, &setup);
    let mut stream = frame(0x01, &[1; 600], Some(MASK));
    let first = stream.len();
    stream.extend(frame(0x80, &[1; 600], Some(MASK)));
    let (out, v) = feed(&mut track, &stream, 64, &m);
    assert_eq!(v, Some(Violation::MessageTooBig));
    assert_eq!(v.unwrap().close_code(), 1009);
    assert_eq!(
        out.len(),
        first,
        "the fragment that went over is not forwarded"
    );
}

#[test]
fn ending_finishes_a_fragmented_message_until_frames_must_do() {
    let m = metrics();
    let mut track = Track::new(Sender::Server, &setup());
    feed(&mut track, &frame(0x01, b"one", None), 100, &m);
    track.begin_close(1001);
    assert!(!track.close_due, "the message is open");
    let (out, _) = feed(&mut track, &frame(0x80, b"two", None), 100, &m);
    assert_eq!(out, frame(0x80, b"two", None), "its last fragment passes");
    assert!(track.close_due);

    // A message that does not finish: after frames_will_do, the Close goes between
    // its fragments.
    let mut track = Track::new(Sender::Server, &setup());
    feed(&mut track, &frame(0x01, b"one", None), 100, &m);
    track.begin_close(1001);
    let (out, _) = feed(&mut track, &frame(0x00, b"two", None), 100, &m);
    assert_eq!(out, frame(0x00, b"two", None));
    assert!(!track.close_due);
    track.frames_will_do();
    assert!(track.close_due);
}

#[test]
fn a_bad_header_while_ending_is_never_forwarded_either() {
    let m = metrics();
    let good = frame(0x01, b"one", Some(MASK));
    let bad = frame(0x80, &[0; 200], None); // unmasked from a client
    for piece in 1..=bad.len() {
        let mut track = Track::new(Sender::Client, &setup());
        feed(&mut track, &good, 100, &m);
        track.begin_close(1001);
        assert!(!track.close_due, "the message is open");
        let (out, _) = feed(&mut track, &bad, piece, &m);
        assert!(
            out.is_empty(),
            "piece {piece}: {} bytes of the bad header passed",
            out.len()
        );
        assert!(track.close_due, "piece {piece}");
        assert!(!track.reads());
    }
}

#[test]
fn a_reader_gone_without_a_close_has_sluice_close_in_its_place() {
    let m = metrics();
    let server = frame(0x81, b"hi", None);
    for (sender, code) in [(Sender::Server, 1011), (Sender::Client, 1001)] {
        let f = if sender == Sender::Client {
            frame(0x81, b"hi", Some(MASK))
        } else {
            server.clone()
        };
        // Between frames: a Close goes in its place, by an end of stream or a reset.
        for reset in [false, true] {
            let mut track = Track::new(sender, &setup());
            feed(&mut track, &f, f.len(), &m);
            if reset {
                track.failed()
            } else {
                track.eof()
            }
            assert_eq!(track.gone, Some(reset));
            assert!(track.close_due && !track.reads());
            assert_eq!(
                track.take_close(&m).as_bytes()[..2],
                [0x88, if sender == Sender::Client { 0x82 } else { 0x02 }]
            );
            assert_eq!(track.sent_close(), Some(code));
        }
        // Inside a frame no Close can follow; the peer is still gone.
        let mut track = Track::new(sender, &setup());
        feed(&mut track, &f[..f.len() - 1], f.len(), &m);
        track.eof();
        assert_eq!(track.gone, Some(false));
        assert!(!track.close_due);
    }
    // A reader whose own Close passed ended normally.
    let mut track = Track::new(Sender::Server, &setup());
    feed(
        &mut track,
        &frame(0x88, &1000u16.to_be_bytes(), None),
        4,
        &m,
    );
    track.eof();
    assert_eq!((track.gone, track.close_due), (None, false));
    // A Close the writer's peer sent first is answered with its own code.
    let mut track = Track::new(Sender::Server, &setup());
    track.answer(4000);
    track.eof();
    track.take_close(&m);
    assert_eq!(track.sent_close(), Some(4000));
    // 1005 (no code) cannot be sent: the usual code goes instead.
    let mut track = Track::new(Sender::Server, &setup());
    track.answer(1005);
    track.eof();
    track.take_close(&m);
    assert_eq!(track.sent_close(), Some(1011));
}

#[test]
fn a_peer_gone_gets_nothing_more_and_its_survivor_is_read_for_the_close() {
    let m = metrics();
    let mut track = Track::new(Sender::Client, &setup());
    track.peer_gone();
    assert!(!track.close_due && track.reads());
    // Frames after the peer left go nowhere; the survivor's Close ends the reading.
    let mut stream = frame(0x81, b"into the void", Some(MASK));
    stream.extend(frame(0x88, &1011u16.to_be_bytes(), Some(MASK)));
    let (out, v) = feed(&mut track, &stream, 5, &m);
    assert!(out.is_empty() && v.is_none());
    assert!(!track.reads());
    assert_eq!(track.peer_close, Some(1011));
    assert!(!track.close_due, "no Close to a peer that is gone");
}
