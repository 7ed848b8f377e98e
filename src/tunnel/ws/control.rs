//! The control frames sluice writes itself: its Close, and its liveness Ping.

/// The payload of sluice's Pings: this marker, then a 4-byte token.
const PING_MARK: &[u8; 6] = b"sluice";
pub const PING_LEN: usize = 10;

/// A control frame of sluice's, masked with a fresh key when it goes to a server
/// (RFC 6455 §5.3).
pub struct ControlFrame {
    bytes: [u8; 2 + 4 + PING_LEN],
    len: u8,
}

impl ControlFrame {
    /// A Close with `code` and no reason.
    pub fn close(code: u16, masked: bool) -> ControlFrame {
        ControlFrame::new(0x88, &code.to_be_bytes(), masked)
    }

    /// A Ping carrying `token` after sluice's mark.
    pub fn ping(token: u32, masked: bool) -> ControlFrame {
        ControlFrame::new(0x89, &ping_payload(token), masked)
    }

    fn new(first: u8, payload: &[u8], masked: bool) -> ControlFrame {
        let mut bytes = [0u8; 2 + 4 + PING_LEN];
        bytes[0] = first;
        bytes[1] = payload.len() as u8;
        let mut at = 2;
        let key = if masked {
            bytes[1] |= 0x80;
            let key = fastrand::u32(..).to_ne_bytes();
            bytes[2..6].copy_from_slice(&key);
            at = 6;
            Some(key)
        } else {
            None
        };
        for (i, b) in payload.iter().enumerate() {
            bytes[at + i] = key.map_or(*b, |k| b ^ k[i % 4]);
        }
        ControlFrame {
            bytes,
            len: (at + payload.len()) as u8,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// What sluice's Ping with `token` carries, and so what its Pong must.
pub fn ping_payload(token: u32) -> [u8; PING_LEN] {
    let mut p = [0u8; PING_LEN];
    p[..6].copy_from_slice(PING_MARK);
    p[6..].copy_from_slice(&token.to_be_bytes());
    p
}
