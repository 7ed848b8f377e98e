//! The client side of TLS for the wss and https scenarios: one rustls configuration
//! pinned to what every proxy must negotiate, the handshake, and the check of what
//! it settled on.
//!
//! Every connection makes a full TLS 1.3 handshake: resumption is off, so a
//! handshake cycle costs the proxy what a new visitor costs it. The client offers one
//! cipher suite, one key-exchange group and ALPN `http/1.1` alone, so that every
//! proxy negotiates the same thing and none speaks HTTP/2 to the WebSocket client
//! (sluice offers h2 first on its TLS listener).

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, aws_lc_rs};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::stats::Failure;

/// The one application protocol offered.
const ALPN: &[u8] = b"http/1.1";

/// What a TLS handshake settled on, in the names OpenSSL (and so h2load) prints, so
/// that the rows made here and by h2load read alike in the table's footnotes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub protocol: Option<String>,
    pub cipher: Option<String>,
    /// The key-exchange group.
    pub temp_key: Option<String>,
    pub alpn: Option<String>,
}

/// A client configuration and what its handshakes negotiated.
pub struct Client {
    connector: TlsConnector,
    /// The server's name: 127.0.0.1, so no SNI is sent, as with h2load.
    name: ServerName<'static>,
    cipher: String,
    group: String,
    /// The first handshake's parameters; every later one is checked against the
    /// same expectations, so this one stands for all.
    first: Mutex<Option<Negotiated>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("cipher", &self.cipher)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client that trusts exactly the certificate in `cert_file` and offers TLS 1.3
    /// with `cipher` (an IANA name: `TLS_AES_128_GCM_SHA256`) and `group` (`X25519`).
    pub fn new(cert_file: &Path, cipher: &str, group: &str) -> Result<Client, String> {
        let cert = CertificateDer::from_pem_file(cert_file)
            .map_err(|e| format!("--tls-cert {}: {e}", cert_file.display()))?;
        let all = aws_lc_rs::default_provider();
        let suite = all
            .cipher_suites
            .iter()
            .copied()
            .find(|s| suite_name(s) == cipher)
            .ok_or_else(|| format!("--cipher {cipher}: not a TLS 1.3 suite rustls knows"))?;
        let kx = all
            .kx_groups
            .iter()
            .copied()
            .find(|g| format!("{:?}", g.name()) == group)
            .ok_or_else(|| format!("--group {group}: not a group rustls offers"))?;
        let provider = CryptoProvider {
            cipher_suites: vec![suite],
            kx_groups: vec![kx],
            ..all
        };
        let verifier = Arc::new(Pinned {
            cert: cert.into_owned(),
            algorithms: provider.signature_verification_algorithms,
        });
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("TLS configuration: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.resumption = Resumption::disabled();
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Client {
            connector: TlsConnector::from(Arc::new(config)),
            name: ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
            cipher: cipher.to_owned(),
            group: group.to_owned(),
            first: Mutex::new(None),
        })
    }

    /// The TLS handshake over `tcp`, within `step`, and the check of its outcome.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        step: Duration,
    ) -> Result<TlsStream<TcpStream>, Failure> {
        let s = match timeout(step, self.connector.connect(self.name.clone(), tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(Failure::new("tls", e.to_string())),
            Err(_) => return Err(Failure::new("tls", "handshake timed out")),
        };
        let n = negotiated(s.get_ref().1);
        self.check(&n)?;
        let mut first = self.first.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert(n);
        Ok(s)
    }

    /// The first handshake's parameters, if any handshake completed.
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.first.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Only what was offered can be negotiated, but a figure measured over anything
    /// else must not reach the table, so it is checked rather than trusted.
    fn check(&self, n: &Negotiated) -> Result<(), Failure> {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".to_owned());
        if n.protocol.as_deref() != Some("TLSv1.3") {
            return Err(Failure::new(
                "tls",
                format!("{}, not TLSv1.3", show(&n.protocol)),
            ));
        }
        if n.cipher.as_deref() != Some(self.cipher.as_str()) {
            let want = &self.cipher;
            return Err(Failure::new(
                "tls",
                format!("cipher {}, not {want}", show(&n.cipher)),
            ));
        }
        if n.temp_key.as_deref() != Some(self.group.as_str()) {
            let want = &self.group;
            return Err(Failure::new(
                "tls",
                format!("key exchange {}, not {want}", show(&n.temp_key)),
            ));
        }
        // No ALPN answer means HTTP/1.1 too; anything else is not what was offered.
        if n.alpn.as_deref().is_some_and(|a| a.as_bytes() != ALPN) {
            return Err(Failure::new(
                "tls",
                format!("ALPN {}, not http/1.1", show(&n.alpn)),
            ));
        }
        Ok(())
    }
}

/// rustls's names for TLS 1.3 suites carry a `TLS13_` prefix the IANA names lack.
fn suite_name(s: &rustls::SupportedCipherSuite) -> String {
    let name = format!("{:?}", s.suite());
    match name.strip_prefix("TLS13_") {
        Some(rest) => format!("TLS_{rest}"),
        None => name,
    }
}

fn negotiated(c: &rustls::ClientConnection) -> Negotiated {
    Negotiated {
        protocol: c.protocol_version().map(|v| match v {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_owned(),
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_owned(),
            other => format!("{other:?}"),
        }),
        cipher: c.negotiated_cipher_suite().map(|s| suite_name(&s)),
        temp_key: c
            .negotiated_key_exchange_group()
            .map(|g| format!("{:?}", g.name())),
        alpn: c
            .alpn_protocol()
            .map(|a| String::from_utf8_lossy(a).into_owned()),
    }
}

/// Trusts one certificate, byte for byte: the bench's self-signed one, which a
/// path-building verifier would refuse (it is its own issuer and marked as a CA).
/// The handshake signature is still verified against its key, so the server must
/// hold the private key, as with any other verifier.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Never called: only TLS 1.3 is offered.
        Err(rustls::Error::General("TLS 1.2 is not offered".to_owned()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_suites_as_iana_does() {
        let p = aws_lc_rs::default_provider();
        let names: Vec<String> = p.cipher_suites.iter().map(suite_name).collect();
        assert!(
            names.iter().any(|n| n == "TLS_AES_128_GCM_SHA256"),
            "{names:?}"
        );
    }

    #[test]
    fn refuses_what_was_not_offered() {
        let c = Client {
            connector: TlsConnector::from(Arc::new(
                ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            )),
            name: ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
            cipher: "TLS_AES_128_GCM_SHA256".into(),
            group: "X25519".into(),
            first: Mutex::new(None),
        };
        let good = Negotiated {
            protocol: Some("TLSv1.3".into()),
            cipher: Some("TLS_AES_128_GCM_SHA256".into()),
            temp_key: Some("X25519".into()),
            alpn: Some("http/1.1".into()),
        };
        assert!(c.check(&good).is_ok());
        assert!(
            c.check(&Negotiated {
                alpn: None,
                ..good.clone()
            })
            .is_ok()
        );
        let h2 = Negotiated {
            alpn: Some("h2".into()),
            ..good.clone()
        };
        assert!(c.check(&h2).is_err());
        let p256 = Negotiated {
            temp_key: Some("secp256r1".into()),
            ..good
        };
        assert!(c.check(&p256).is_err());
    }
}
