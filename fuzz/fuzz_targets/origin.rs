//! `origin::OriginPolicy`: building a policy from patterns and asking it about an
//! Origin header value, with oracles:
//! - a policy allows an origin exactly when one of its patterns alone does;
//! - a valid pattern without a wildcard allows its own text, in any letter case;
//! - what an exact pattern allows is that pattern, up to letter case and the scheme's
//!   default port written or not (IPv6 literals aside: they compare as addresses);
//! - a wildcard pattern `scheme://*.rest` allows `scheme://x.rest`.
//!
//! Input: lines; the patterns, an empty line, then the origins (any bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::origin::OriginPolicy;

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let patterns: Vec<String> = lines
        .by_ref()
        .take_while(|l| !l.is_empty())
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .take(8)
        .collect();
    let origins: Vec<&[u8]> = lines.collect();
    let patterns = &patterns[..];
    let singles: Vec<Option<OriginPolicy>> = patterns
        .iter()
        .map(|p| OriginPolicy::new(std::slice::from_ref(p)).ok())
        .collect();
    let all = OriginPolicy::new(patterns);
    assert_eq!(all.is_ok(), singles.iter().all(Option::is_some));

    for (p, single) in patterns.iter().zip(&singles) {
        let Some(single) = single else { continue };
        if let Some(rest) = wildcard_rest(p) {
            let sub = format!("{}x.{}", &p[..p.len() - rest.len() - 2], rest);
            // A host name is at most 253 bytes; a longer one is refused as an origin.
            if host_len(&sub) <= 253 {
                assert!(single.allows(sub.as_bytes()), "{p:?} refuses {sub:?}");
            }
        } else {
            assert!(single.allows(p.as_bytes()), "{p:?} refuses itself");
            assert!(single.allows(p.to_ascii_uppercase().as_bytes()));
            assert!(single.allows(p.to_ascii_lowercase().as_bytes()));
        }
    }

    for &origin in origins.iter().take(8) {
        let allowed: Vec<bool> = singles
            .iter()
            .map(|s| s.as_ref().is_some_and(|s| s.allows(origin)))
            .collect();
        if let Ok(all) = &all {
            assert_eq!(all.allows(origin), allowed.contains(&true));
        }
        assert!(!allowed.contains(&true) || origin != b"null");
        for (p, &ok) in patterns.iter().zip(&allowed) {
            if ok && !p.contains('*') && !p.contains('[') {
                let origin = std::str::from_utf8(origin).expect("an allowed origin is ASCII");
                assert_eq!(normal(origin), normal(p), "{p:?} allows {origin:?}");
            }
        }
    }
});

/// For `scheme://*.rest`, `rest`.
fn wildcard_rest(p: &str) -> Option<&str> {
    let after = p.find("://")? + 3;
    p[after..].strip_prefix("*.")
}

fn host_len(origin: &str) -> usize {
    let rest = &origin[origin.find("://").map_or(0, |i| i + 3)..];
    rest.find(':').unwrap_or(rest.len())
}

/// Lowercase, without the scheme's default port.
fn normal(origin: &str) -> String {
    let o = origin.to_ascii_lowercase();
    let default = if o.starts_with("https://") {
        ":443"
    } else {
        ":80"
    };
    match o.strip_suffix(default) {
        Some(s) => s.to_owned(),
        None => o,
    }
}
