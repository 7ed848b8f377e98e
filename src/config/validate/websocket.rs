//! WebSocket settings: the `[websocket]` table, and each route's `websocket = { ... }`
//! laid over it key by key.

use std::time::Duration;

use toml::Spanned;

use super::super::*;
use super::Validator;

/// The Close codes sluice may send when it ends a tunnel itself (RFC 6455 §7.4.1 and
/// the IANA registry). Left out: 1002, 1003, 1007 and 1009, which blame a particular
/// fault in the peer's frames; 1010, which only a client sends; 1004 and 1016-2999,
/// reserved; 1005, 1006 and 1015, which only report locally and never go on the wire.
const CLOSE_CODES: &str = "1000, 1001, 1008, 1011, 1012, 1013, 1014, or one from 3000 to 4999";

/// Message and frame limits: at least one byte, at most 2^53, the largest integer an
/// f64 (a JSON number, a metric) holds exactly; no real message comes near it.
const MAX_BYTES: i64 = 1 << 53;

impl Validator<'_> {
    /// The `[websocket]` table over the defaults.
    pub(super) fn websocket(&mut self, w: &WebSocketFile) -> WebSocket {
        self.websocket_over(w, "websocket", WebSocket::default())
    }

    /// Route `number`'s (1-based) settings: its own keys over `table`, the resolved
    /// `[websocket]` table.
    pub(super) fn route_websocket(
        &mut self,
        number: usize,
        w: Option<&Spanned<WebSocketFile>>,
        table: WebSocket,
    ) -> WebSocket {
        match w {
            Some(w) => {
                self.websocket_over(w.get_ref(), &format!("route {number}: websocket"), table)
            }
            None => table,
        }
    }

    /// `w`'s keys over `base`: an absent key keeps `base`'s value. `prefix` names the
    /// table in messages.
    fn websocket_over(&mut self, w: &WebSocketFile, prefix: &str, base: WebSocket) -> WebSocket {
        let key = |k: &str| format!("{prefix}.{k}");
        let ping_interval = match &w.ping_interval {
            // "off" beside the "0s" every other optional duration takes, since this one
            // is off by default and a route may want to turn the table's value back off.
            Some(s) if s.get_ref() == "off" => None,
            // At least a second: more often than that, Pings are traffic of their own.
            s => self
                .duration_or_off(s, &key("ping_interval"), base.ping_interval)
                .and_then(|d| {
                    self.within(s, &key("ping_interval"), d, Duration::from_secs(1), None)
                }),
        };
        WebSocket {
            close_code: w
                .close_code
                .as_ref()
                .and_then(|c| self.close_code(c, &key("close_code")))
                .unwrap_or(base.close_code),
            // Below 100 ms a Close reply cannot cross a long link; beyond an hour a gone
            // peer would hold a drain open for longer than any deploy waits.
            close_timeout: self.duration_in(
                &w.close_timeout,
                &key("close_timeout"),
                base.close_timeout,
                Duration::from_millis(100),
                Some(Duration::from_secs(3600)),
            ),
            ping_interval,
            ping_timeout: self.duration_in(
                &w.ping_timeout,
                &key("ping_timeout"),
                base.ping_timeout,
                Duration::from_millis(100),
                None,
            ),
            max_message_bytes: self.bytes(
                &w.max_message_bytes,
                &key("max_message_bytes"),
                base.max_message_bytes,
            ),
            max_frame_bytes: self.bytes(
                &w.max_frame_bytes,
                &key("max_frame_bytes"),
                base.max_frame_bytes,
            ),
            max_messages_per_second: w.max_messages_per_second.as_ref().map_or(
                base.max_messages_per_second,
                |r| {
                    self.rate(r, &key("max_messages_per_second"))
                        .or(base.max_messages_per_second)
                },
            ),
        }
    }

    /// A byte limit (1 to 2^53), or the table's value when the key is absent or bad.
    fn bytes(&mut self, n: &Option<Spanned<i64>>, key: &str, base: Option<u64>) -> Option<u64> {
        n.as_ref().map_or(base, |n| {
            self.int_in(n, key, 1, MAX_BYTES).map(|n| n as u64).or(base)
        })
    }

    fn close_code(&mut self, c: &Spanned<i64>, key: &str) -> Option<u16> {
        let code = *c.get_ref();
        if matches!(code, 1000 | 1001 | 1008 | 1011..=1014 | 3000..=4999) {
            return Some(code as u16);
        }
        let message = if matches!(code, 1005 | 1006 | 1015) {
            format!(
                "{key} = {code} is never sent on the wire (1005, 1006 and 1015 only report a Close without a code, a connection lost without a Close, and a failed TLS handshake): use {CLOSE_CODES}"
            )
        } else {
            format!("{key} = {code} is not a Close code a proxy may send: use {CLOSE_CODES}")
        };
        self.error(c.span(), message);
        None
    }

    /// A duration from `min` up to `max`; `default` when absent or wrong.
    fn duration_in(
        &mut self,
        s: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
        min: Duration,
        max: Option<Duration>,
    ) -> Duration {
        let d = self.duration(s, key, default, false);
        self.within(s, key, d, min, max).unwrap_or(default)
    }

    /// `d`, parsed from `s`, when it lies from `min` up to `max`; else an error at `s`.
    fn within(
        &mut self,
        s: &Option<Spanned<String>>,
        key: &str,
        d: Duration,
        min: Duration,
        max: Option<Duration>,
    ) -> Option<Duration> {
        let Some(s) = s else { return Some(d) };
        if d >= min && max.is_none_or(|max| d <= max) {
            return Some(d);
        }
        let (min, value) = (humantime::format_duration(min), s.get_ref());
        let message = match max {
            Some(max) => format!(
                "{key} = \"{value}\" is out of range: it must be from {min} to {}",
                humantime::format_duration(max)
            ),
            None => format!("{key} = \"{value}\" is too short: it must be at least {min}"),
        };
        self.error(s.span(), message);
        None
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn table(text: &str) -> (WebSocket, Vec<String>) {
        let file: WebSocketFile = toml::from_str(text).unwrap();
        let mut v = Validator {
            text,
            base: Path::new("."),
            problems: Vec::new(),
        };
        let w = v.websocket(&file);
        // In file order, as loading sorts them.
        v.problems.sort_by_key(|p| p.at.map(|a| (a.line, a.column)));
        (w, v.problems.into_iter().map(|p| p.message).collect())
    }

    #[test]
    fn only_the_close_codes_a_proxy_may_send_are_taken() {
        let allowed = |c| matches!(c, 1000 | 1001 | 1008 | 1011..=1014 | 3000..=4999);
        for code in -1..=5000 {
            let (w, problems) = table(&format!("close_code = {code}"));
            if allowed(code) {
                assert_eq!((w.close_code, problems.len()), (code as u16, 0), "{code}");
            } else {
                assert_eq!(w.close_code, 1001, "{code}");
                assert!(problems[0].contains("use 1000, 1001, 1008"), "{problems:?}");
                let local_only = problems[0].contains("never sent on the wire");
                assert_eq!(local_only, matches!(code, 1005 | 1006 | 1015), "{code}");
            }
        }
    }

    #[test]
    fn durations_are_held_to_their_ranges() {
        let (w, problems) =
            table("close_timeout = \"1h\"\nping_interval = \"1s\"\nping_timeout = \"100ms\"");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(w.close_timeout, Duration::from_secs(3600));
        assert_eq!(w.ping_interval, Some(Duration::from_secs(1)));
        assert_eq!(w.ping_timeout, Duration::from_millis(100));

        let (_, problems) =
            table("close_timeout = \"2h\"\nping_interval = \"500ms\"\nping_timeout = \"10ms\"");
        assert_eq!(
            problems,
            [
                "websocket.close_timeout = \"2h\" is out of range: it must be from 100ms to 1h",
                "websocket.ping_interval = \"500ms\" is too short: it must be at least 1s",
                "websocket.ping_timeout = \"10ms\" is too short: it must be at least 100ms",
            ]
        );

        for off in ["off", "0s"] {
            let (w, problems) = table(&format!("ping_interval = \"{off}\""));
            assert_eq!((w.ping_interval, problems.len()), (None, 0), "{off}");
        }
    }
}
