//! A throwaway certificate authority for TLS tests: a CA and one server certificate (for
//! `127.0.0.1` and `localhost` unless told otherwise), made at test time and written to a temporary directory that
//! is removed when the value is dropped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// A CA, a server certificate it signed, and their files.
pub struct TestPki {
    dir: PathBuf,
    server_cert_pem: String,
    server_key_pem: String,
}

impl TestPki {
    /// A new CA named `name` and a server certificate for 127.0.0.1 / localhost.
    pub fn generate(name: &str) -> TestPki {
        TestPki::generate_for(name, &["127.0.0.1", "localhost"])
    }

    /// A new CA named `name` and a server certificate for `server_names` (DNS names or IP
    /// addresses) only.
    pub fn generate_for(name: &str, server_names: &[&str]) -> TestPki {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("docledger test CA {name}"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-signed CA");
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().expect("server key");
        let names: Vec<String> = server_names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("server params");
        params.distinguished_name.push(
            DnType::CommonName,
            server_names.first().copied().unwrap_or("server"),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let server_cert = params
            .signed_by(&server_key, &issuer)
            .expect("server certificate");

        let dir = std::env::temp_dir().join(format!(
            "docledger-pki-{name}-{}-{}",
            std::process::id(),
            projections::testing::unique_name("ca")
        ));
        std::fs::create_dir_all(&dir).expect("pki dir");
        let pki = TestPki {
            dir,
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
        };
        std::fs::write(pki.ca_file(), ca_cert.pem()).expect("write ca.pem");
        std::fs::write(pki.server_cert_file(), &pki.server_cert_pem).expect("write server.pem");
        std::fs::write(pki.server_key_file(), &pki.server_key_pem).expect("write server.key");
        pki
    }

    /// The CA certificate (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The server certificate (PEM).
    pub fn server_cert_file(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    /// The server's private key (PEM, PKCS#8).
    pub fn server_key_file(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A TLS acceptor presenting the server certificate, agreeing on one of `alpn`.
    pub fn acceptor(&self, alpn: &[&[u8]]) -> TlsAcceptor {
        let chain = vec![
            CertificateDer::from_pem_slice(self.server_cert_pem.as_bytes())
                .expect("server certificate PEM"),
        ];
        let key =
            PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes()).expect("server key PEM");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("default protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate and key match");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsAcceptor::from(Arc::new(config))
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
