use super::*;

/// Everything a tracker told, in order.
#[derive(Debug, Default, PartialEq, Eq)]
struct Seen {
    frames: Vec<(OpCode, bool, u64)>,
    messages: Vec<(OpCode, u64)>,
    controls: Vec<(OpCode, Vec<u8>)>,
}

impl Observer for Seen {
    fn frame(&mut self, h: &Header) {
        self.frames.push((h.opcode, h.fin, h.len));
    }
    fn message(&mut self, opcode: OpCode, size: u64) {
        self.messages.push((opcode, size));
    }
    fn control(&mut self, opcode: OpCode, payload: &[u8]) {
        self.controls.push((opcode, payload.to_vec()));
    }
}

pub(crate) const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// One frame on the wire: header (masked when `mask`) and payload.
pub(crate) fn frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![first];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(m | n as u8),
        n @ 126..=65535 => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mut body = payload.to_vec();
    if let Some(k) = mask {
        out.extend_from_slice(&k);
        unmask(&mut body, k);
    }
    out.extend_from_slice(&body);
    out
}

fn client() -> Frames {
    Frames::new(Sender::Client, false, Limits::NONE)
}

fn server() -> Frames {
    Frames::new(Sender::Server, false, Limits::NONE)
}

/// A client stream: a text message, a message in three fragments with a ping and a
/// pong between them, a 70,000-byte binary message, an empty binary one, a close.
fn conversation() -> Vec<u8> {
    let mut s = frame(0x81, b"hello", Some(MASK));
    s.extend(frame(0x02, &[1; 200], Some(MASK)));
    s.extend(frame(0x89, b"are you there", Some(MASK)));
    s.extend(frame(0x00, &[2; 10], Some(MASK)));
    s.extend(frame(0x8A, b"", Some(MASK)));
    s.extend(frame(0x80, &[3; 5], Some(MASK)));
    s.extend(frame(0x82, &vec![4; 70_000], Some(MASK)));
    s.extend(frame(0x82, b"", Some(MASK)));
    s.extend(frame(0x88, &[0x03, 0xE9, b'b', b'y', b'e'], Some(MASK)));
    s
}

fn expected() -> Seen {
    Seen {
        frames: vec![
            (OpCode::Text, true, 5),
            (OpCode::Binary, false, 200),
            (OpCode::Ping, true, 13),
            (OpCode::Continuation, false, 10),
            (OpCode::Pong, true, 0),
            (OpCode::Continuation, true, 5),
            (OpCode::Binary, true, 70_000),
            (OpCode::Binary, true, 0),
            (OpCode::Close, true, 5),
        ],
        messages: vec![
            (OpCode::Text, 5),
            (OpCode::Binary, 215),
            (OpCode::Binary, 70_000),
            (OpCode::Binary, 0),
        ],
        controls: vec![
            (OpCode::Ping, b"are you there".to_vec()),
            (OpCode::Pong, vec![]),
            (OpCode::Close, vec![0x03, 0xE9, b'b', b'y', b'e']),
        ],
    }
}

#[test]
fn a_conversation_in_one_piece() {
    let mut f = client();
    let mut seen = Seen::default();
    f.scan(&conversation(), &mut seen).unwrap();
    assert_eq!(seen, expected());
    assert!(f.at_message_boundary());
}

#[test]
fn a_conversation_split_at_every_byte_tells_the_same() {
    let stream = conversation();
    for cut in 0..stream.len() {
        let mut f = client();
        let mut seen = Seen::default();
        f.scan(&stream[..cut], &mut seen).unwrap();
        f.scan(&stream[cut..], &mut seen).unwrap();
        assert_eq!(seen, expected(), "cut at {cut}");
    }
    let mut f = client();
    let mut seen = Seen::default();
    for b in &stream {
        f.scan(std::slice::from_ref(b), &mut seen).unwrap();
    }
    assert_eq!(seen, expected(), "a byte at a time");
}

#[test]
fn payloads_may_pass_unread() {
    let stream = conversation();
    let mut f = client();
    let mut seen = Seen::default();
    let mut at = 0;
    while at < stream.len() {
        let skip = f.payload_left();
        if skip > 0 {
            // Like splice: move the payload without looking, in two goes.
            let half = skip / 2;
            f.skip(half, &mut seen);
            f.skip(skip - half, &mut seen);
            at += skip as usize;
        } else {
            f.scan(&stream[at..at + 1], &mut seen).unwrap();
            at += 1;
        }
    }
    assert_eq!(seen, expected());
}

#[test]
fn boundaries_and_what_is_left() {
    let mut f = client();
    let text = frame(0x01, b"abc", Some(MASK));
    assert!(f.at_message_boundary());
    f.scan(&text[..3], &mut ()).unwrap();
    assert!(!f.at_frame_boundary());
    assert_eq!(f.frame_left(), 3, "the rest of the 6-byte header");
    assert_eq!(f.payload_left(), 0);
    f.scan(&text[3..7], &mut ()).unwrap();
    assert_eq!(f.frame_left(), 2);
    assert_eq!(f.payload_left(), 2);
    f.scan(&text[7..], &mut ()).unwrap();
    assert!(f.at_frame_boundary());
    assert!(!f.at_message_boundary(), "the message is not finished");
    let ping = frame(0x89, b"xy", Some(MASK));
    f.scan(&ping[..7], &mut ()).unwrap();
    assert_eq!(f.payload_left(), 0, "control payloads are read");
    assert_eq!(f.frame_left(), 1);
    f.scan(&ping[7..], &mut ()).unwrap();
    f.scan(&frame(0x80, b"", Some(MASK)), &mut ()).unwrap();
    assert!(f.at_message_boundary());
}

#[test]
fn server_frames_are_unmasked() {
    let mut f = server();
    let mut seen = Seen::default();
    f.scan(&frame(0x81, b"hi", None), &mut seen).unwrap();
    f.scan(&frame(0x88, &[0x03, 0xE8], None), &mut seen)
        .unwrap();
    assert_eq!(seen.messages, [(OpCode::Text, 2)]);
    assert_eq!(seen.controls, [(OpCode::Close, vec![0x03, 0xE8])]);
}

fn violation(mut f: Frames, stream: &[u8]) -> Violation {
    f.scan(stream, &mut ()).unwrap_err()
}

#[test]
fn masking_must_match_the_sender() {
    assert_eq!(
        violation(client(), &frame(0x81, b"x", None)),
        Violation::Masking
    );
    assert_eq!(
        violation(server(), &frame(0x81, b"x", Some(MASK))),
        Violation::Masking
    );
}

#[test]
fn reserved_bits_need_an_extension() {
    let rsv1 = frame(0xC1, b"z", Some(MASK));
    assert_eq!(violation(client(), &rsv1), Violation::ReservedBits(0x40));
    let deflate = || Frames::new(Sender::Client, true, Limits::NONE);
    deflate().scan(&rsv1, &mut ()).unwrap();
    // RSV1 marks a compressed message on its first frame only; RSV2 and RSV3 never.
    let mut f = deflate();
    f.scan(&frame(0x41, b"z", Some(MASK)), &mut ()).unwrap();
    assert_eq!(
        f.scan(&frame(0xC0, b"z", Some(MASK)), &mut ()),
        Err(Violation::ReservedBits(0x40))
    );
    assert_eq!(
        violation(deflate(), &frame(0xC9, b"", Some(MASK))),
        Violation::ReservedBits(0x40)
    );
    assert_eq!(
        violation(deflate(), &frame(0xA1, b"", Some(MASK))),
        Violation::ReservedBits(0x20)
    );
}

#[test]
fn opcodes_control_frames_and_fragments_follow_the_rules() {
    for op in [0x3, 0x7, 0xB, 0xF] {
        assert_eq!(
            violation(client(), &frame(0x80 | op, b"", Some(MASK))),
            Violation::UnknownOpcode(op)
        );
    }
    assert_eq!(
        violation(client(), &frame(0x89, &[0; 126], Some(MASK))),
        Violation::BadControl
    );
    assert_eq!(
        violation(client(), &frame(0x09, b"", Some(MASK))),
        Violation::BadControl
    );
    assert_eq!(
        violation(client(), &frame(0x80, b"", Some(MASK))),
        Violation::StrayContinuation
    );
    let mut open = frame(0x01, b"a", Some(MASK));
    open.extend(frame(0x81, b"b", Some(MASK)));
    assert_eq!(violation(client(), &open), Violation::UnfinishedMessage);
    let mut huge = vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0];
    huge.extend_from_slice(&MASK);
    assert_eq!(violation(client(), &huge), Violation::LengthOverflow);
}

#[test]
fn limits_are_checked_at_the_header() {
    let limits = Limits {
        max_frame: 100,
        max_message: 150,
    };
    let f = || Frames::new(Sender::Client, false, limits);
    assert_eq!(
        violation(f(), &frame(0x82, &[0; 101], Some(MASK))),
        Violation::FrameTooBig
    );
    let mut two = frame(0x02, &[0; 100], Some(MASK));
    two.extend(frame(0x80, &[0; 51], Some(MASK)));
    assert_eq!(violation(f(), &two), Violation::MessageTooBig);
    // The violation is found with only the header: nothing of its payload is needed.
    let header_only = &frame(0x82, &[0; 101], Some(MASK))[..8];
    assert_eq!(violation(f(), header_only), Violation::FrameTooBig);
    assert_eq!(Violation::MessageTooBig.close_code(), 1009);
    assert_eq!(Violation::Masking.close_code(), 1002);
}

#[test]
fn an_idle_tracker_is_small() {
    // Two per tunnel, whose whole idle state is budgeted at under 2 KiB (1.34 KiB
    // before tracking). 72 bytes today: the header buffer, the limits, the counters.
    assert!(
        std::mem::size_of::<Frames>() <= 72,
        "{}",
        std::mem::size_of::<Frames>()
    );
}

#[test]
fn headers_read_as_tungstenite_reads_them() {
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
    let mut rng = fastrand::Rng::with_seed(5);
    for _ in 0..2000 {
        let first = rng.u8(..);
        let mask = rng
            .bool()
            .then(|| [rng.u8(..), rng.u8(..), rng.u8(..), rng.u8(..)]);
        let len = match rng.u8(0..3) {
            0 => rng.u64(0..126),
            1 => rng.u64(126..65536),
            _ => rng.u64(65536..1 << 40),
        };
        let mut head = vec![first];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match len {
            0..=125 => head.push(m | len as u8),
            126..=65535 => {
                head.push(m | 126);
                head.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                head.push(m | 127);
                head.extend_from_slice(&len.to_be_bytes());
            }
        }
        if let Some(k) = mask {
            head.extend_from_slice(&k);
        }
        let theirs = FrameHeader::parse(&mut std::io::Cursor::new(&head));
        match (parse(&head), theirs) {
            (Ok(h), Ok(Some((t, tlen)))) => {
                assert_eq!(h.len, tlen);
                assert_eq!(h.fin, t.is_final);
                assert_eq!(h.rsv, (first & 0x70));
                assert_eq!(h.mask, t.mask);
                assert_eq!(h.header_len as usize, head.len());
                assert_eq!(u8::from(t.opcode), first & 0x0F);
            }
            (Err(Violation::UnknownOpcode(op)), Err(_)) => assert_eq!(op, first & 0x0F),
            (ours, theirs) => panic!("{head:?}: {ours:?} against {theirs:?}"),
        }
    }
}
