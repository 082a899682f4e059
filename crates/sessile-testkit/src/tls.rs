//! Committed test PKI (EC P-256, PKCS#8, valid until 2036) and rustls config helpers.
//!
//! The PEM files live in `testdata/` and were generated once by `testdata/generate.sh`.

use std::sync::Arc;

use anyhow::Context as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Directory holding the PEM files, for configs that take file paths.
pub const TESTDATA_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata");

/// Self-signed test CA certificate ("Sessile Test CA"); trust anchor for every leaf below.
pub const CA_PEM: &[u8] = include_bytes!("../testdata/ca.pem");
/// Private key of the test CA (PKCS#8).
pub const CA_KEY_PEM: &[u8] = include_bytes!("../testdata/ca.key.pem");

/// Leaf certificate for `example.com` and `*.example.com`, signed by the test CA.
pub const EXAMPLE_COM_CERT_PEM: &[u8] = include_bytes!("../testdata/example-com.pem");
/// Private key (PKCS#8) for [`EXAMPLE_COM_CERT_PEM`].
pub const EXAMPLE_COM_KEY_PEM: &[u8] = include_bytes!("../testdata/example-com.key.pem");

/// Leaf certificate for `other.test`, signed by the test CA.
pub const OTHER_TEST_CERT_PEM: &[u8] = include_bytes!("../testdata/other-test.pem");
/// Private key (PKCS#8) for [`OTHER_TEST_CERT_PEM`].
pub const OTHER_TEST_KEY_PEM: &[u8] = include_bytes!("../testdata/other-test.key.pem");

/// Leaf certificate for `localhost` and IP `127.0.0.1`, signed by the test CA.
pub const LOCALHOST_CERT_PEM: &[u8] = include_bytes!("../testdata/localhost.pem");
/// Private key (PKCS#8) for [`LOCALHOST_CERT_PEM`].
pub const LOCALHOST_KEY_PEM: &[u8] = include_bytes!("../testdata/localhost.key.pem");

/// Parses every certificate in a PEM blob.
pub fn certs(pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().context("parse PEM certificates")?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in PEM");
    Ok(certs)
}

/// Parses the first private key in a PEM blob.
pub fn private_key(pem: &[u8]) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).context("parse PEM private key")
}

/// The ring crypto provider, as the project uses it.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Root store trusting the certificates in `root_ca_pem`.
pub fn root_store(root_ca_pem: &[u8]) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(root_ca_pem)? {
        roots.add(cert).context("add root certificate")?;
    }
    Ok(roots)
}

/// Client config trusting `root_ca_pem`, offering the given ALPN protocols (e.g. `[b"h2", b"http/1.1"]`).
pub fn client_config(root_ca_pem: &[u8], alpn: &[&[u8]]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("protocol versions")?
        .with_root_certificates(root_store(root_ca_pem)?)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Server config presenting `cert_pem`/`key_pem`, offering the given ALPN protocols.
pub fn server_config(cert_pem: &[u8], key_pem: &[u8], alpn: &[&[u8]]) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs(cert_pem)?, private_key(key_pem)?)
        .context("server certificate")?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
