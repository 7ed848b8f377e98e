//! TLS settings: listener certificates and upstream TLS, loaded now so `--check`
//! reports a bad file before it is needed.

use std::ops::Range;
use std::path::PathBuf;

use toml::Spanned;

use super::super::*;
use super::Validator;

impl Validator<'_> {
    /// A path from the file, relative to the file's directory.
    pub(super) fn path(&self, p: &Spanned<String>) -> PathBuf {
        self.base.join(p.get_ref())
    }

    /// Reports a TLS file problem at the span of the value that named the file.
    pub(super) fn tls_error(
        &mut self,
        e: crate::tls::TlsError,
        spans: &[(&PathBuf, Range<usize>)],
    ) {
        let span = spans
            .iter()
            .find(|(p, _)| **p == e.path)
            .or(spans.first())
            .map(|(_, s)| s.clone())
            .unwrap_or(0..0);
        self.error(span, e.to_string());
    }

    pub(super) fn listener_tls(
        &mut self,
        name: &str,
        t: &Spanned<ListenerTlsFile>,
    ) -> Option<ListenerTls> {
        let span = t.span();
        let t = t.get_ref();
        let mut pairs: Vec<(CertPaths, Range<usize>, Range<usize>)> = Vec::new();
        match (&t.cert, &t.key, &t.certificates) {
            (Some(cert), Some(key), None) => pairs.push((
                CertPaths {
                    cert: self.path(cert),
                    key: self.path(key),
                },
                cert.span(),
                key.span(),
            )),
            (None, None, Some(list)) if !list.get_ref().is_empty() => {
                for c in list.get_ref() {
                    pairs.push((
                        CertPaths {
                            cert: self.path(&c.cert),
                            key: self.path(&c.key),
                        },
                        c.cert.span(),
                        c.key.span(),
                    ));
                }
            }
            (_, _, Some(list)) if t.cert.is_some() || t.key.is_some() => {
                self.error(
                    list.span(),
                    format!("listener \"{name}\": give either `cert` and `key` or `certificates`, not both"),
                );
                return None;
            }
            _ => {
                self.error(
                    span,
                    format!(
                        "listener \"{name}\": tls needs `cert` and `key`, or `certificates = [{{ cert = ..., key = ... }}, ...]`"
                    ),
                );
                return None;
            }
        }
        let mut ok = true;
        for (paths, cert_span, key_span) in &pairs {
            if let Err(e) = crate::tls::load_cert(paths) {
                self.tls_error(
                    e,
                    &[
                        (&paths.cert, cert_span.clone()),
                        (&paths.key, key_span.clone()),
                    ],
                );
                ok = false;
            }
        }
        let min_version = match t
            .min_version
            .as_ref()
            .map(|v| (v.get_ref().as_str(), v.span()))
        {
            None | Some(("1.2", _)) => TlsVersion::Tls12,
            Some(("1.3", _)) => TlsVersion::Tls13,
            Some((other, span)) => {
                self.error(
                    span,
                    format!("min_version = \"{other}\" is not known: use \"1.2\" or \"1.3\""),
                );
                ok = false;
                TlsVersion::Tls12
            }
        };
        let client_ca = t.client_ca.as_ref().map(|ca| (self.path(ca), ca.span()));
        if let Some((path, span)) = &client_ca
            && let Err(e) = crate::tls::load_roots(path)
        {
            self.tls_error(e, &[(path, span.clone())]);
            ok = false;
        }
        ok.then(|| ListenerTls {
            certificates: pairs.into_iter().map(|(p, _, _)| p).collect(),
            min_version,
            client_ca: client_ca.map(|(p, _)| p),
        })
    }

    pub(super) fn upstream_tls(
        &mut self,
        name: &str,
        u: &UpstreamFile,
        builtin: bool,
    ) -> Option<UpstreamTls> {
        let on = u.tls.as_ref().is_some_and(|t| *t.get_ref());
        if !on {
            for (key, value) in [
                ("sni", &u.sni),
                ("ca", &u.ca),
                ("client_cert", &u.client_cert),
                ("client_key", &u.client_key),
            ] {
                if let Some(v) = value {
                    self.error(
                        v.span(),
                        format!("upstream \"{name}\": `{key}` is used only with tls = true"),
                    );
                }
            }
            return None;
        }
        let tls_span = u.tls.as_ref().map_or(0..0, |t| t.span());
        if builtin {
            self.error(
                tls_span,
                format!("upstream \"{name}\": the built-in upstream does not speak TLS"),
            );
            return None;
        }
        let client_cert = match (&u.client_cert, &u.client_key) {
            (Some(c), Some(k)) => Some((
                CertPaths {
                    cert: self.path(c),
                    key: self.path(k),
                },
                c.span(),
                k.span(),
            )),
            (None, None) => None,
            (Some(c), None) | (None, Some(c)) => {
                self.error(
                    c.span(),
                    format!("upstream \"{name}\": `client_cert` and `client_key` go together"),
                );
                return None;
            }
        };
        let ca = u.ca.as_ref().map(|c| (self.path(c), c.span()));
        let sni = u.sni.as_ref().map(|s| s.get_ref().to_ascii_lowercase());
        if let Some(s) = &u.sni
            && rustls::pki_types::ServerName::try_from(s.get_ref().as_str()).is_err()
        {
            self.error(
                s.span(),
                format!(
                    "upstream \"{name}\": sni \"{}\" is not a host name",
                    s.get_ref()
                ),
            );
            return None;
        }
        let tls = UpstreamTls {
            sni,
            ca: ca.as_ref().map(|(p, _)| p.clone()),
            client_cert: client_cert.as_ref().map(|(p, _, _)| p.clone()),
        };
        if let Err(e) = crate::tls::client_config(&tls) {
            let mut spans: Vec<(&PathBuf, Range<usize>)> = Vec::new();
            if let Some((p, s)) = &ca {
                spans.push((p, s.clone()));
            }
            if let Some((p, cs, ks)) = &client_cert {
                spans.push((&p.cert, cs.clone()));
                spans.push((&p.key, ks.clone()));
            }
            if spans.is_empty() {
                self.error(tls_span, format!("upstream \"{name}\": {e}"));
            } else {
                self.tls_error(e, &spans);
            }
            return None;
        }
        Some(tls)
    }
}
