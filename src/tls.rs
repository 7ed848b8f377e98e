//! TLS with rustls: certificate loading with clear errors, server configurations that
//! choose a certificate by SNI and can be swapped live, and client configurations for
//! upstreams.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// The one crypto provider: aws-lc-rs, rustls' default. Its AES-GCM and ChaCha20 are
/// the fastest available to rustls, and it builds with the C compiler every Rust
/// machine has (no cmake, no Go, no OpenSSL headers). Held here, not installed
/// process-wide, so the library never depends on what a host program installed.
static PROVIDER: LazyLock<Arc<CryptoProvider>> =
    LazyLock::new(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));

/// What is offered to upstreams in ALPN.
const ALPN: &[&[u8]] = &[b"http/1.1"];
/// What listeners with HTTP/2 offer in ALPN, HTTP/2 first: a client that speaks both
/// takes it, and one that speaks only HTTP/1.1 still finds its protocol.
const ALPN_H2: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A TLS listener's certificates and policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// Chosen by SNI against each certificate's names; the first is the default.
    pub certificates: Vec<CertPaths>,
    pub min_version: TlsVersion,
    /// Require client certificates signed by these CAs (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// A PEM certificate chain and its PEM private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The oldest TLS version accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    #[default]
    Tls12,
    Tls13,
}

/// TLS to an upstream's servers. Certificates are always verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The name sent in SNI and verified; default: each server's host name.
    pub sni: Option<String>,
    /// Trusted CAs; default: the system's trust roots.
    pub ca: Option<PathBuf>,
    /// A client certificate to present.
    pub client_cert: Option<CertPaths>,
}

/// A copy of an upstream client configuration that offers only `h2` in ALPN: an
/// HTTP/2 upstream must agree to it.
pub fn with_h2_alpn(config: &ClientConfig) -> Arc<ClientConfig> {
    let mut c = config.clone();
    c.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(c)
}

/// A file that cannot serve for TLS, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    pub path: PathBuf,
    pub reason: String,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

impl std::error::Error for TlsError {}

fn err(path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// A certificate chain with its key, ready to serve, and the names it serves.
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// Lowercase DNS names from the leaf's subjectAltName (or its CN when it has none);
    /// wildcards keep their `*.`.
    pub names: Vec<String>,
}

/// Loads a PEM chain and PEM key (PKCS#8, RSA or SEC1), and checks that they belong
/// together and that the certificate is valid now.
pub fn load_cert(paths: &CertPaths) -> Result<LoadedCert, TlsError> {
    let chain = read_certs(&paths.cert)?;
    let key = PrivateKeyDer::from_pem_file(&paths.key)
        .map_err(|e| pem_error(&paths.key, e, "private key"))?;
    let signing = PROVIDER
        .key_provider
        .load_private_key(key)
        .map_err(|e| err(&paths.key, format!("unsupported private key: {e}")))?;
    let key = CertifiedKey::new(chain, signing);
    key.keys_match().map_err(|_| {
        err(
            &paths.key,
            format!(
                "this key does not match the certificate in {}",
                paths.cert.display()
            ),
        )
    })?;
    let names = check_leaf(&paths.cert, &key.cert[0])?;
    Ok(LoadedCert {
        key: Arc::new(key),
        names,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e, "certificate"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e, "certificate"))?;
    if certs.is_empty() {
        return Err(err(
            path,
            "holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")",
        ));
    }
    Ok(certs)
}

fn pem_error(path: &Path, e: rustls::pki_types::pem::Error, what: &str) -> TlsError {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(io) => err(path, format!("cannot read the file: {io}")),
        Error::NoItemsFound => err(
            path,
            match what {
                "private key" => "holds no PEM private key (PKCS#8, RSA or SEC1)".to_owned(),
                _ => format!("holds no PEM {what}"),
            },
        ),
        other => err(path, format!("is not valid PEM: {other}")),
    }
}

/// Checks the leaf's validity period; returns the names it serves.
fn check_leaf(path: &Path, der: &CertificateDer<'_>) -> Result<Vec<String>, TlsError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| err(path, format!("the certificate cannot be parsed: {e}")))?;
    let validity = cert.validity();
    let now = ASN1Time::now();
    if now > validity.not_after {
        return Err(err(
            path,
            format!("the certificate expired on {}", validity.not_after),
        ));
    }
    if now < validity.not_before {
        return Err(err(
            path,
            format!(
                "the certificate is not valid before {}",
                validity.not_before
            ),
        ));
    }
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(n) = name {
                names.push(n.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty()
        && let Some(cn) = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
    {
        names.push(cn.to_ascii_lowercase());
    }
    Ok(names)
}

/// Reads a PEM bundle of trusted CA certificates.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| err(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// Chooses a certificate by SNI: an exact name, then a wildcard for the parent
/// domain, then the first certificate (also for clients that send no SNI).
#[derive(Debug)]
struct SniResolver {
    certs: Vec<Arc<CertifiedKey>>,
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
}

impl SniResolver {
    fn new(loaded: Vec<LoadedCert>) -> SniResolver {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, c) in loaded.iter().enumerate() {
            for name in &c.names {
                // The first certificate to claim a name keeps it.
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_owned()).or_insert(i),
                    None => exact.entry(name.clone()).or_insert(i),
                };
            }
        }
        SniResolver {
            certs: loaded.into_iter().map(|c| c.key).collect(),
            exact,
            wildcard,
        }
    }

    fn choose(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let i = sni
            .and_then(|name| {
                let name = name.to_ascii_lowercase();
                self.exact
                    .get(&name)
                    .or_else(|| {
                        let parent = name.split_once('.')?.1;
                        self.wildcard.get(parent)
                    })
                    .copied()
            })
            .unwrap_or(0);
        self.certs[i].clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.choose(hello.server_name()))
    }
}

/// Builds a listener's server configuration from its files; `http2` offers `h2`.
pub fn server_config(tls: &ListenerTls, http2: bool) -> Result<Arc<ServerConfig>, TlsError> {
    let loaded = tls
        .certificates
        .iter()
        .map(load_cert)
        .collect::<Result<Vec<_>, _>>()?;
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(PROVIDER.clone())
        .with_protocol_versions(versions)
        .expect("the provider supports TLS 1.2 and 1.3");
    let builder = match &tls.client_ca {
        Some(ca) => {
            let roots = Arc::new(load_roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, PROVIDER.clone())
                .build()
                .map_err(|e| err(ca, format!("cannot verify clients with it: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver::new(loaded)));
    let alpn = if http2 { ALPN_H2 } else { ALPN };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Stateless resumption: a returning client skips the key exchange and the
    // certificate, a full handshake's most expensive parts.
    if let Ok(ticketer) = rustls::crypto::aws_lc_rs::Ticketer::new() {
        config.ticketer = ticketer;
    }
    Ok(Arc::new(config))
}

/// A listener's TLS. A reload builds a new one (reading the files again) and swaps
/// the listener's context: a handshake uses the configuration current when it starts,
/// and keeps it.
pub struct ServerTls {
    config: Arc<ServerConfig>,
}

impl ServerTls {
    pub fn new(tls: &ListenerTls, http2: bool) -> Result<ServerTls, TlsError> {
        Ok(ServerTls {
            config: server_config(tls, http2)?,
        })
    }

    /// An acceptor on this configuration.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.clone())
    }
}

/// Builds the client configuration for an upstream: its CA (or the system's trust
/// roots), and its client certificate if it has one. Verification is always on.
/// Offers HTTP/1.1 in ALPN; [`with_h2_alpn`] makes one for HTTP/2 upstreams.
pub fn client_config(tls: &UpstreamTls) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match &tls.ca {
        Some(ca) => load_roots(ca)?,
        None => system_roots()?,
    };
    let builder = ClientConfig::builder_with_provider(PROVIDER.clone())
        .with_safe_default_protocol_versions()
        .expect("the provider supports the default versions")
        .with_root_certificates(roots);
    let mut config = match &tls.client_cert {
        Some(paths) => {
            let chain = read_certs(&paths.cert)?;
            let key = PrivateKeyDer::from_pem_file(&paths.key)
                .map_err(|e| pem_error(&paths.key, e, "private key"))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                err(
                    &paths.key,
                    format!("unusable client certificate or key: {e}"),
                )
            })?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none found".to_owned(), |e| e.to_string());
        return Err(err(
            Path::new("(system trust store)"),
            format!(
                "no trusted CA certificates could be loaded ({why}); set `ca` for this upstream"
            ),
        ));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_prefers_exact_then_wildcard_then_the_first() {
        let dummy = |n: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec![n.to_owned()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let signing = PROVIDER
                .key_provider
                .load_private_key(PrivateKeyDer::try_from(key.serialize_der()).unwrap())
                .unwrap();
            LoadedCert {
                key: Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing)),
                names: vec![n.to_owned()],
            }
        };
        let r = SniResolver::new(vec![
            dummy("default.test"),
            dummy("*.example.com"),
            dummy("a.example.com"),
        ]);
        let idx = |sni: Option<&str>| {
            let chosen = r.choose(sni);
            r.certs
                .iter()
                .position(|c| Arc::ptr_eq(c, &chosen))
                .unwrap()
        };
        assert_eq!(idx(Some("a.example.com")), 2);
        assert_eq!(idx(Some("B.Example.com")), 1);
        assert_eq!(idx(Some("x.y.example.com")), 0);
        assert_eq!(idx(Some("other.test")), 0);
        assert_eq!(idx(None), 0);
    }
}
