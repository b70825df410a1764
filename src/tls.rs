//! Certificate and key files -> rustls configurations, for both directions.
//!
//! Files are read when a config is applied (start and every reload), never on the request
//! path. What was read is kept beside the built configuration, so a reload can tell whether a
//! pool's TLS material changed (and reconnect its servers) even when the file names did not.

use crate::config::{Config, ConfigError, ListenTlsConfig, PoolConfig, TlsConfig};
use crate::net::{Plain, Stream};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// legate as a TLS client of a pool's servers.
#[derive(Clone)]
pub struct Connector {
    config: Arc<rustls::ClientConfig>,
    server_name: Option<ServerName<'static>>,
    /// The settings and every byte read from files: equal sources build equal connectors.
    source: (TlsConfig, Vec<Vec<u8>>),
}

impl PartialEq for Connector {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector").field("settings", &self.source.0).finish()
    }
}

impl Connector {
    /// Run the TLS handshake over `io`; `host` names the server when `server_name` is unset.
    ///
    /// # Errors
    /// The handshake fails: the reason names what was wrong with the certificate.
    pub async fn connect(&self, host: &str, io: Plain) -> Result<Stream, String> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => ServerName::try_from(host.to_string()).map_err(|e| format!("bad server name '{host}': {e}"))?,
        };
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        connector
            .connect(name, io)
            .await
            .map(|s| Stream::Client(Box::new(s)))
            .map_err(|e| e.to_string())
    }
}

/// legate as the TLS server of a pool's clients.
#[derive(Clone)]
pub struct Acceptor {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub handshake_timeout: Duration,
}

impl Acceptor {
    /// Run the handshake with a client under the handshake timeout.
    ///
    /// # Errors
    /// The handshake failed or took too long.
    pub async fn accept(&self, io: Plain) -> Result<Stream, String> {
        match tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(io)).await {
            Ok(Ok(s)) => Ok(Stream::Server(Box::new(s))),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no handshake within {:?}", self.handshake_timeout)),
        }
    }
}

/// A pool's TLS in both directions, as loaded for one generation of the config.
#[derive(Clone, Default)]
pub struct PoolTls {
    pub connector: Option<Arc<Connector>>,
    pub acceptor: Option<Acceptor>,
}

impl std::fmt::Debug for PoolTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolTls")
            .field("connector", &self.connector)
            .field("acceptor", &self.acceptor.is_some())
            .finish()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(pool: &str, key: &str, path: &str, sources: &mut Vec<Vec<u8>>) -> Result<Vec<u8>, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| tls_err(pool, key, format!("cannot read {path}: {e}")))?;
    sources.push(bytes.clone());
    Ok(bytes)
}

fn tls_err(pool: &str, key: &str, message: String) -> ConfigError {
    ConfigError {
        pool: Some(pool.to_string()),
        key: Some(key.to_string()),
        message,
    }
}

fn certs(
    pool: &str,
    key: &str,
    path: &str,
    sources: &mut Vec<Vec<u8>>,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read(pool, key, path, sources)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err(pool, key, format!("{path}: {e}")))?;
    if certs.is_empty() {
        return Err(tls_err(pool, key, format!("{path} holds no PEM certificate")));
    }
    Ok(certs)
}

fn private_key(
    pool: &str,
    key: &str,
    path: &str,
    sources: &mut Vec<Vec<u8>>,
) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let pem = read(pool, key, path, sources)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| tls_err(pool, key, format!("{path}: no usable private key ({e})")))
}

fn roots(pool: &str, key: &str, path: &str, sources: &mut Vec<Vec<u8>>) -> Result<rustls::RootCertStore, ConfigError> {
    let mut store = rustls::RootCertStore::empty();
    for c in certs(pool, key, path, sources)? {
        store
            .add(c)
            .map_err(|e| tls_err(pool, key, format!("{path}: not a usable CA certificate ({e})")))?;
    }
    Ok(store)
}

fn system_roots(pool: &str) -> Result<rustls::RootCertStore, ConfigError> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = rustls::RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(tls_err(
            pool,
            "tls.ca_file",
            format!("no system root certificates found ({:?}); set ca_file", found.errors),
        ));
    }
    Ok(store)
}

/// Accepts any certificate: only with an explicit `verify: false`.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Build the client side of a pool's `tls:`.
///
/// # Errors
/// A file cannot be read or parsed, or the certificate does not match the key.
pub fn connector(pool: &str, t: &TlsConfig) -> Result<Connector, ConfigError> {
    let mut sources = Vec::new();
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(pool, "tls", e.to_string()))?;
    let builder = if !t.verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    } else {
        let store = match &t.ca_file {
            Some(path) => roots(pool, "tls.ca_file", path, &mut sources)?,
            None => system_roots(pool)?,
        };
        builder.with_root_certificates(store)
    };
    let config = match (&t.cert_file, &t.key_file) {
        (Some(cert), Some(key)) => {
            let chain = certs(pool, "tls.cert_file", cert, &mut sources)?;
            let key = private_key(pool, "tls.key_file", key, &mut sources)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls_err(pool, "tls.key_file", format!("does not fit the certificate: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    let server_name = match &t.server_name {
        Some(n) => {
            Some(ServerName::try_from(n.clone()).map_err(|e| tls_err(pool, "tls.server_name", format!("'{n}': {e}")))?)
        }
        None => None,
    };
    Ok(Connector {
        config: Arc::new(config),
        server_name,
        source: (t.clone(), sources),
    })
}

/// Build the server side of a pool's `listen_tls:`.
///
/// # Errors
/// A file cannot be read or parsed, or the certificate does not match the key.
pub fn acceptor(pool: &str, t: &ListenTlsConfig) -> Result<Acceptor, ConfigError> {
    let mut sources = Vec::new();
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(pool, "listen_tls", e.to_string()))?;
    let builder = match &t.client_ca_file {
        Some(path) => {
            let store = roots(pool, "listen_tls.client_ca_file", path, &mut sources)?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
                .build()
                .map_err(|e| tls_err(pool, "listen_tls.client_ca_file", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let chain = certs(pool, "listen_tls.cert_file", &t.cert_file, &mut sources)?;
    let key = private_key(pool, "listen_tls.key_file", &t.key_file, &mut sources)?;
    let config = builder.with_single_cert(chain, key).map_err(|e| {
        tls_err(
            pool,
            "listen_tls.key_file",
            format!("does not fit the certificate: {e}"),
        )
    })?;
    Ok(Acceptor {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        handshake_timeout: t.handshake_timeout,
    })
}

/// Read one pool's certificates and keys.
///
/// # Errors
/// As [`connector`] and [`acceptor`].
pub fn load_pool(pool: &PoolConfig) -> Result<PoolTls, ConfigError> {
    let connector = match &pool.tls {
        Some(t) => {
            if !t.verify {
                tracing::warn!(pool = %pool.name, "tls.verify is false: server certificates are NOT checked");
            }
            Some(Arc::new(connector(&pool.name, t)?))
        }
        None => None,
    };
    let acceptor = match &pool.listen_tls {
        Some(t) => Some(acceptor(&pool.name, t)?),
        None => None,
    };
    Ok(PoolTls { connector, acceptor })
}

/// Read every pool's certificates and keys, by pool name. Nothing is applied when one fails.
///
/// # Errors
/// The first pool whose TLS files cannot be used.
pub fn load(config: &Config) -> Result<HashMap<String, PoolTls>, ConfigError> {
    config
        .pools
        .iter()
        .map(|p| Ok((p.name.clone(), load_pool(p)?)))
        .collect()
}
