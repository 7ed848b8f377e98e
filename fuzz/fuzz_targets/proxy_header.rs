//! The first bytes of a connection through `conn::proxy_header::parse`, the PROXY
//! protocol reader of listeners with `proxy_protocol = true`. Never a panic; and a
//! header is recognised exactly at its own length: the same bytes cut there give the
//! same answer, every shorter cut is still waiting (or already refused), and no
//! header is longer than the bounds (107 bytes for v1, 1 KiB for v2).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::conn::proxy_header::{HeaderError, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(Some(p)) = parse(data) else {
        return;
    };
    assert!(p.len <= data.len());
    let v1 = data.starts_with(b"PROXY ");
    assert!(p.len <= if v1 { 107 } else { 1024 }, "{} bytes", p.len);
    assert_eq!(parse(&data[..p.len]).ok().flatten(), Some(p));
    for cut in 0..p.len {
        match parse(&data[..cut]) {
            Ok(None) => {}
            Ok(Some(early)) => panic!("a header of {} bytes seen whole at {cut}: {early:?}", p.len),
            Err(HeaderError::Closed | HeaderError::Io(_)) => unreachable!(),
            Err(_) => {}
        }
    }
});
