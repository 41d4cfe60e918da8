//! TLS to the stores, set up once for all four clients: which URLs ask for TLS, the one trust
//! set (the system's roots plus the extra CA certificates of `DOCLEDGER_TLS_CA_FILE`), the
//! one rustls crypto provider, and the words for a handshake that failed.
//!
//! Invariants: certificate verification is always on (chain and host name) when a URL asks
//! for TLS; a URL that does not ask for it keeps its plain connection; every client trusts the
//! same set of roots. Each store's client takes that set in the form it accepts (a rustls
//! `ClientConfig` for PostgreSQL, a PEM bundle for MySQL and Milvus, a trust store for the S3
//! SDK), all built here.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

/// ALPN protocol of gRPC (Milvus).
pub const ALPN_H2: &[u8] = b"h2";

/// The crypto provider of every TLS connection (rustls is built with both aws-lc-rs and ring
/// in this workspace, so none is the implicit default: clients that use the process default,
/// tonic's and mysql_async's, need it installed).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            // Another part of the process may have installed one first; that one is used.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            rustls::crypto::CryptoProvider::get_default()
                .cloned()
                .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        })
        .clone()
}

/// Makes sure the process has a default rustls crypto provider (idempotent). Called by every
/// client set-up that goes through TLS before it connects.
pub fn install_crypto_provider() {
    let _ = provider();
}

/// The system's trusted roots, read once per process.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let loaded = rustls_native_certs::load_native_certs();
        for error in &loaded.errors {
            tracing::warn!(error = %error, "some system root certificates could not be read");
        }
        loaded.certs
    })
}

/// Which certificates a store's server may present: the system's roots plus the extra CA
/// certificates of `DOCLEDGER_TLS_CA_FILE`. Cheap to clone.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsTrust {
    extra: Arc<Vec<CertificateDer<'static>>>,
    source: Option<PathBuf>,
}

impl fmt::Debug for TlsTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(path) => write!(
                f,
                "system roots + {} CA certificate(s) from {}",
                self.extra.len(),
                path.display()
            ),
            None => f.write_str("system roots"),
        }
    }
}

impl TlsTrust {
    /// The system's roots only.
    pub fn system() -> TlsTrust {
        TlsTrust::default()
    }

    /// The system's roots plus every certificate of the PEM file at `path`.
    ///
    /// # Errors
    /// Why the file cannot be used: unreadable, no `CERTIFICATE` in it, or a certificate
    /// that is not a usable trust anchor.
    pub fn from_pem_file(path: &Path) -> Result<TlsTrust, String> {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut trust = TlsTrust::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
        trust.source = Some(path.to_owned());
        Ok(trust)
    }

    /// The system's roots plus every certificate of `pem`.
    ///
    /// # Errors
    /// When `pem` holds no `CERTIFICATE` block or one that is not a usable trust anchor.
    pub fn from_pem(pem: &[u8]) -> Result<TlsTrust, String> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("not a PEM file of certificates: {e}"))?;
        if certs.is_empty() {
            return Err("holds no PEM CERTIFICATE".into());
        }
        let mut store = RootCertStore::empty();
        for (i, cert) in certs.iter().enumerate() {
            store
                .add(cert.clone())
                .map_err(|e| format!("certificate {} is not usable as a CA: {e}", i + 1))?;
        }
        Ok(TlsTrust {
            extra: Arc::new(certs),
            source: None,
        })
    }

    /// Whether extra certificates are trusted beyond the system's roots.
    pub fn has_extra(&self) -> bool {
        !self.extra.is_empty()
    }

    /// The extra certificates, PEM encoded.
    pub fn extra_pem(&self) -> Vec<u8> {
        pem_bundle(self.extra.iter())
    }

    /// Every trusted root (system and extra), PEM encoded: for clients that take their
    /// trust as one PEM bundle.
    pub fn roots_pem(&self) -> Vec<u8> {
        pem_bundle(system_roots().iter().chain(self.extra.iter()))
    }

    /// A rustls client configuration verifying against every trusted root, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        // A system certificate rustls cannot parse is skipped, as every TLS client does.
        roots.add_parsable_certificates(system_roots().iter().cloned());
        for cert in self.extra.iter() {
            // Checked when the trust was built (`from_pem`).
            let _ = roots.add(cert.clone());
        }
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the aws-lc-rs provider supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// Writes [`TlsTrust::roots_pem`] to a new file that is removed when the returned guard is
    /// dropped: for clients that only read their trust from a file path.
    ///
    /// # Errors
    /// When the temporary directory cannot be written.
    pub fn roots_pem_file(&self) -> std::io::Result<TempPem> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "docledger-roots-{}-{}.pem",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, self.roots_pem())?;
        Ok(TempPem { path })
    }

    /// Opens a TLS connection to `host:port` and completes the handshake, offering `alpn`:
    /// how a client whose library hides the cause of a failed connection learns why.
    ///
    /// # Errors
    /// [`HandshakeError::Tls`] with the failure in words ([`describe`]), or
    /// [`HandshakeError::Connect`] when no TCP connection was made in `timeout`.
    pub async fn handshake(
        &self,
        host: &str,
        port: u16,
        alpn: &[&[u8]],
        timeout: Duration,
    ) -> Result<(), HandshakeError> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| HandshakeError::Tls(format!("{host:?} is not a TLS server name: {e}")))?;
        let connector = tokio_rustls::TlsConnector::from(self.client_config(alpn));
        let attempt = async {
            let tcp = tokio::net::TcpStream::connect((host, port))
                .await
                .map_err(|e| HandshakeError::Connect(format!("{host}:{port}: {e}")))?;
            let stream = connector
                .connect(name, tcp)
                .await
                .map_err(|e| HandshakeError::Tls(describe(&e).unwrap_or_else(|| e.to_string())))?;
            let negotiated = stream.get_ref().1.alpn_protocol();
            if !alpn.is_empty() && !negotiated.is_some_and(|p| alpn.contains(&p)) {
                return Err(HandshakeError::Tls(
                    "the server did not agree on an application protocol (ALPN)".into(),
                ));
            }
            Ok(())
        };
        tokio::time::timeout(timeout, attempt).await.map_err(|_| {
            HandshakeError::Connect(format!("{host}:{port}: no answer in {timeout:?}"))
        })?
    }
}

/// Why [`TlsTrust::handshake`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// No TCP connection (nothing about TLS is known yet).
    Connect(String),
    /// The TLS handshake failed: why, in words.
    Tls(String),
}

/// A PEM file that exists as long as this guard does.
#[derive(Debug)]
pub struct TempPem {
    path: PathBuf,
}

impl TempPem {
    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempPem {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn pem_bundle<'a>(certs: impl Iterator<Item = &'a CertificateDer<'static>>) -> Vec<u8> {
    let engine = base64::engine::general_purpose::STANDARD;
    let mut out = String::new();
    for cert in certs {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let encoded = engine.encode(cert.as_ref());
        for line in encoded.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out.into_bytes()
}

/// Whether a store URL asks for TLS, as decided from the URL alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP.
    Plain,
    /// TLS with the certificate chain and the host name verified.
    Verified,
}

/// What the URL of the log database (`postgres://…`) asks for, from its `sslmode` parameter
/// as libpq spells it. `require`, `verify-ca` and `verify-full` all mean TLS with full
/// verification (chain and host name: docledger never accepts an unverified certificate);
/// no `sslmode`, `disable`, `allow` and `prefer` mean plain TCP, so that a server with a
/// self-signed certificate (Debian's default) keeps working with existing URLs. Returns the
/// mode and the URL without `sslmode` (tokio-postgres does not know `verify-ca` and
/// `verify-full`; the mode is applied to its configuration instead).
///
/// # Errors
/// An unknown `sslmode` value or a URL that does not parse.
pub fn postgres_tls(url: &str) -> Result<(TlsMode, String), String> {
    let mut parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    let mut mode = TlsMode::Plain;
    let mut kept = Vec::new();
    for (key, value) in parsed.query_pairs() {
        if key == "sslmode" {
            mode = match value.as_ref() {
                "disable" | "allow" | "prefer" => TlsMode::Plain,
                "require" | "verify-ca" | "verify-full" => TlsMode::Verified,
                other => {
                    return Err(format!(
                        "sslmode {other:?} is not one of disable, allow, prefer, require, \
                         verify-ca, verify-full"
                    ))
                }
            };
        } else {
            kept.push((key.into_owned(), value.into_owned()));
        }
    }
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok((mode, parsed.to_string()))
}

/// What the URL of the catalogue (`mysql://…`) asks for: TLS with `require_ssl=true`, as
/// mysql_async reads it (`verify_ca=false` / `verify_identity=false` switch verification off
/// explicitly and are the operator's choice).
///
/// # Errors
/// A URL that does not parse or a `require_ssl` that is not a boolean.
pub fn mysql_tls(url: &str) -> Result<TlsMode, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    let mut mode = TlsMode::Plain;
    for (key, value) in parsed.query_pairs() {
        if key == "require_ssl" {
            mode = match value.as_ref() {
                "true" => TlsMode::Verified,
                "false" => TlsMode::Plain,
                other => return Err(format!("require_ssl {other:?} is not true or false")),
            };
        }
    }
    Ok(mode)
}

/// What an HTTP(S) endpoint (Milvus, S3) asks for: TLS for `https://`.
///
/// # Errors
/// A URL that does not parse or whose scheme is neither `http` nor `https`.
pub fn http_tls(url: &str) -> Result<TlsMode, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(TlsMode::Verified),
        "http" => Ok(TlsMode::Plain),
        other => Err(format!("scheme {other:?} is neither http nor https")),
    }
}

/// The TLS failure somewhere in `err`'s chain of causes, in words an operator can act on
/// ("certificate not trusted: …"), or `None` when the failure is not about TLS.
pub fn describe(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(describe_rustls(tls));
        }
        // An I/O error wrapping another error reports that error's *source* as its own, so
        // the wrapped error itself (tokio-rustls wraps the rustls error; HTTP clients wrap
        // that I/O error again) is only reachable through `get_ref`.
        current = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// [`describe`] prefixed with the store's name (`"MySQL TLS: certificate not trusted …"`).
pub fn describe_for(store: &str, err: &(dyn std::error::Error + 'static)) -> Option<String> {
    describe(err).map(|why| format!("{store} TLS: {why}"))
}

fn describe_rustls(err: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            C::UnknownIssuer => format!(
                "certificate not trusted ({err}): its issuer is neither a system root nor in \
                 DOCLEDGER_TLS_CA_FILE"
            ),
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                format!("certificate does not name this host ({err})")
            }
            C::Expired | C::ExpiredContext { .. } => format!("certificate expired ({err})"),
            C::NotValidYet | C::NotValidYetContext { .. } => {
                format!("certificate not valid yet ({err})")
            }
            C::Revoked => format!("certificate revoked ({err})"),
            _ => format!("certificate rejected ({err})"),
        },
        rustls::Error::AlertReceived(alert) => {
            format!("the server refused the handshake (alert {alert:?})")
        }
        rustls::Error::NoApplicationProtocol => {
            format!("no common application protocol (ALPN) with the server ({err})")
        }
        rustls::Error::InvalidMessage(_) => {
            format!("the server does not speak TLS on this port ({err})")
        }
        other => format!("handshake failed ({other})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_sslmode_decides_and_is_removed_from_the_url() {
        let plain = [
            "postgres://u@h:5432/db",
            "postgres://u@h:5432/db?sslmode=disable",
            "postgres://u@h:5432/db?sslmode=allow",
            "postgres://u@h:5432/db?sslmode=prefer",
        ];
        for url in plain {
            let (mode, rest) = postgres_tls(url).expect(url);
            assert_eq!(mode, TlsMode::Plain, "{url}");
            assert!(!rest.contains("sslmode"), "{rest}");
        }
        for value in ["require", "verify-ca", "verify-full"] {
            let url = format!("postgresql://u:p@h:5432/db?application_name=x&sslmode={value}");
            let (mode, rest) = postgres_tls(&url).expect("valid");
            assert_eq!(mode, TlsMode::Verified, "{url}");
            assert_eq!(rest, "postgresql://u:p@h:5432/db?application_name=x");
        }
        let (_, only) = postgres_tls("postgres://h/db?sslmode=verify-full").expect("valid");
        assert_eq!(only, "postgres://h/db");
        let err = postgres_tls("postgres://h/db?sslmode=verify").expect_err("unknown mode");
        assert!(err.contains("verify-full"), "{err}");
    }

    #[test]
    fn mysql_and_http_urls_ask_for_tls_explicitly() {
        assert_eq!(mysql_tls("mysql://root@h:3306/db"), Ok(TlsMode::Plain));
        assert_eq!(
            mysql_tls("mysql://root@h:3306/db?require_ssl=true"),
            Ok(TlsMode::Verified)
        );
        assert_eq!(
            mysql_tls("mysql://root@h/db?require_ssl=false&prefer_socket=false"),
            Ok(TlsMode::Plain)
        );
        assert!(mysql_tls("mysql://h/db?require_ssl=yes").is_err());
        assert_eq!(http_tls("http://h:19530"), Ok(TlsMode::Plain));
        assert_eq!(http_tls("https://h:9000"), Ok(TlsMode::Verified));
        assert!(http_tls("ftp://h").is_err());
    }

    #[test]
    fn a_ca_file_must_hold_usable_certificates() {
        let err = TlsTrust::from_pem(b"").expect_err("empty");
        assert!(err.contains("no PEM CERTIFICATE"), "{err}");
        let err =
            TlsTrust::from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .expect_err("a key is no certificate");
        assert!(err.contains("no PEM CERTIFICATE"), "{err}");
        let err =
            TlsTrust::from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .expect_err("garbage DER");
        assert!(err.contains("not usable as a CA"), "{err}");
        let missing = Path::new("/nonexistent/docledger-ca.pem");
        let err = TlsTrust::from_pem_file(missing).expect_err("missing file");
        assert!(err.contains("cannot read"), "{err}");
    }

    #[test]
    fn pem_bundles_round_trip() {
        // Any system root will do; a machine without one has nothing to round-trip.
        let Some(root) = system_roots().first() else {
            return;
        };
        let pem = pem_bundle([root].into_iter());
        let trust = TlsTrust::from_pem(&pem).expect("a system root is a usable CA");
        assert_eq!(trust.extra.as_slice(), std::slice::from_ref(root));
        assert_eq!(trust.extra_pem(), pem);
        let all = CertificateDer::pem_slice_iter(&trust.roots_pem())
            .collect::<Result<Vec<_>, _>>()
            .expect("the bundle parses");
        assert_eq!(all.len(), system_roots().len() + 1);
    }

    #[test]
    fn tls_failures_are_described_through_io_errors() {
        let rustls_err = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls_err);
        let why = describe_for("MySQL", &io).expect("a TLS failure");
        assert!(
            why.starts_with("MySQL TLS: certificate not trusted"),
            "{why}"
        );
        // As hyper-rustls wraps it once more.
        let twice = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName),
        ));
        let why = describe_for("S3", &twice).expect("a TLS failure");
        assert!(
            why.starts_with("S3 TLS: certificate does not name this host"),
            "{why}"
        );
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(describe(&refused), None);
    }
}
