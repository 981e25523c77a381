//! A throw-away certificate authority for the HTTPS tests: a CA, and server certificates it
//! signs for `localhost` and 127.0.0.1, written as PEM files. Chromium is told to trust the CA
//! by its public-key hash (`--ignore-certificate-errors-spki-list`), the Rust client by adding
//! the CA to its roots.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, PublicKeyData,
};

pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub cert_pem: String,
}

/// A server certificate's files and the hash Chromium needs.
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// base64(SHA-256(SubjectPublicKeyInfo)) of the server key.
    pub spki: String,
    pub der: Vec<u8>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "kursrelay test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let cert_pem = issuer.pem();
        TestCa { issuer, cert_pem }
    }

    /// Writes `<name>.crt` (leaf, then CA) and `<name>.key` into `dir`.
    pub fn server_cert(&self, dir: &Path, name: &str, common_name: &str) -> ServerCert {
        let key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign server cert");
        let (cert_path, key_path) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, format!("{}{}", cert.pem(), self.cert_pem)).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        let digest = ring::digest::digest(&ring::digest::SHA256, &key.subject_public_key_info());
        ServerCert {
            cert: cert_path,
            key: key_path,
            spki: base64::engine::general_purpose::STANDARD.encode(digest.as_ref()),
            der: cert.der().to_vec(),
        }
    }

    /// The CA's own public-key hash (Chromium accepts a chain containing it).
    pub fn spki(&self) -> String {
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            &self.issuer.key().subject_public_key_info(),
        );
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    }

    /// A rustls client config trusting only this CA.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.issuer.der().clone())
            .expect("add the test CA");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

/// GET `path` over HTTPS from 127.0.0.1:`port` (SNI `localhost`), trusting `ca` only. Returns
/// (status line, headers+body as text, the server's leaf certificate).
pub async fn https_get(
    ca: &TestCa,
    port: u16,
    path: &str,
) -> Result<(String, String, Vec<u8>), String> {
    https_get_with(ca, port, path, &[]).await
}

/// `https_get` with extra request headers.
pub async fn https_get_with(
    ca: &TestCa,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(String, String, Vec<u8>), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(ca.client_config());
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}\r\n")
            .as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.lines().next().unwrap_or_default().to_owned();
    Ok((status, text, leaf))
}
