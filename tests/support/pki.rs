//! Test certificates: a private CA issuing server and client certificates, written as
//! PEM files, and rustls client configurations that trust the CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A private certificate authority whose files live in a temporary directory.
pub struct Ca {
    pub dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    /// The CA certificate as a file.
    pub cert_path: PathBuf,
}

/// A certificate and key written as files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        let cert_pem = cert.pem();
        let cert_path = dir.path().join(format!("{name}-ca.pem"));
        std::fs::write(&cert_path, &cert_pem).unwrap();
        Ca {
            dir,
            issuer: Issuer::new(params, key),
            cert_pem,
            cert_path,
        }
    }

    fn issue(
        &self,
        file: &str,
        names: &[&str],
        client: bool,
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or(file));
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        tweak(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_path = self.dir.path().join(format!("{file}.pem"));
        let key_path = self.dir.path().join(format!("{file}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Issued {
            cert: cert_path,
            key: key_path,
            der: cert.der().clone(),
        }
    }

    /// A server certificate for `names`.
    pub fn server(&self, file: &str, names: &[&str]) -> Issued {
        self.issue(file, names, false, |_| {})
    }

    /// A server certificate that expired in 2020.
    pub fn expired_server(&self, file: &str, names: &[&str]) -> Issued {
        self.issue(file, names, false, |p| {
            p.not_before = rcgen::date_time_ymd(2019, 1, 1);
            p.not_after = rcgen::date_time_ymd(2020, 1, 1);
        })
    }

    /// A client certificate.
    pub fn client(&self, file: &str) -> Issued {
        self.issue(file, &["client.test"], true, |_| {})
    }

    /// A rustls client configuration trusting this CA, for `versions`, presenting
    /// `client_cert` if given.
    pub fn client_config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        client_cert: Option<&Issued>,
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).unwrap())
            .unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
        let mut config = match client_cert {
            Some(c) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_file(&c.cert).unwrap()],
                    PrivateKeyDer::from_pem_file(&c.key).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// The default client: TLS 1.2 and 1.3, no client certificate.
    pub fn client_default(&self) -> Arc<rustls::ClientConfig> {
        self.client_config(rustls::DEFAULT_VERSIONS, None)
    }
}

/// Opens a TLS connection to `addr` sending SNI `name`.
pub async fn tls_connect(
    addr: std::net::SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config)
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
}

/// Writes text to a file in `dir`; returns its path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}
