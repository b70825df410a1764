//! Certificates made at test time with rcgen: a CA, a server and a client certificate signed
//! by it, a second CA nobody trusts, and an expired server certificate.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// PEM files in a scratch directory.
pub struct Pki {
    pub dir: PathBuf,
    /// The CA that signed `server_*` and `client_*`.
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed nothing legate is shown.
    pub other_ca: PathBuf,
    /// A server certificate (signed by `ca`) whose validity ended in 2021.
    pub expired_cert: PathBuf,
    pub expired_key: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    cn: &str,
    usage: ExtendedKeyUsagePurpose,
    expired: bool,
) -> (String, String) {
    let mut p = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.extended_key_usages = vec![usage];
    if expired {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, pem).unwrap();
    p
}

/// Make a fresh set of certificates.
pub fn pki() -> Pki {
    let dir = super::scratch_dir();
    let root = ca("legate test CA");
    let other = ca("a CA legate does not trust");
    let (sc, sk) = leaf(&root, "server", ExtendedKeyUsagePurpose::ServerAuth, false);
    let (cc, ck) = leaf(&root, "legate-client", ExtendedKeyUsagePurpose::ClientAuth, false);
    let (ec, ek) = leaf(&root, "expired", ExtendedKeyUsagePurpose::ServerAuth, true);
    Pki {
        ca: write(&dir, "ca.pem", &root.pem()),
        other_ca: write(&dir, "other-ca.pem", &other.pem()),
        server_cert: write(&dir, "server.pem", &sc),
        server_key: write(&dir, "server.key", &sk),
        client_cert: write(&dir, "client.pem", &cc),
        client_key: write(&dir, "client.key", &ck),
        expired_cert: write(&dir, "expired.pem", &ec),
        expired_key: write(&dir, "expired.key", &ek),
        dir,
    }
}

impl Pki {
    /// The arguments that make a redis-server (or redis-sentinel) speak only TLS on `port`,
    /// with the CA-signed server certificate, and TLS on its own outgoing connections
    /// (replication, a sentinel's links, a cluster's bus); client certificates not required.
    pub fn redis_tls_args(&self, port: u16) -> Vec<String> {
        let mut a: Vec<String> = ["--port", "0", "--tls-port", &port.to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(self.tls_files(&self.server_cert, &self.server_key, false));
        // Its own connections present the client certificate (the server one is for servers
        // only: its extended key usage says so, and peers check it).
        a.extend(
            [
                "--tls-client-cert-file",
                self.client_cert.to_str().unwrap(),
                "--tls-client-key-file",
                self.client_key.to_str().unwrap(),
                "--tls-replication",
                "yes",
            ]
            .map(String::from),
        );
        a
    }

    fn tls_files(&self, cert: &Path, key: &Path, require_client_cert: bool) -> Vec<String> {
        [
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
            "--tls-ca-cert-file",
            self.ca.to_str().unwrap(),
            "--tls-auth-clients",
            if require_client_cert { "yes" } else { "no" },
        ]
        .map(String::from)
        .to_vec()
    }

    /// A redis-server speaking only TLS on a free port with `cert`/`key`; `clients` requires
    /// client certificates signed by the CA.
    pub fn redis(&self, cert: &Path, key: &Path, require_client_cert: bool) -> super::Proc {
        let port = super::free_port();
        let mut args: Vec<String> = ["--port", "0", "--tls-port", &port.to_string()]
            .map(String::from)
            .to_vec();
        args.extend(self.tls_files(cert, key, require_client_cert));
        super::redis_server_with(port, &args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// redis-cli straight to a TLS redis-server (to look behind legate), with the CA and the
    /// client certificate.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        super::run(
            std::process::Command::new(super::require("redis-cli", "redis-tools"))
                .args(self.cli_args(port))
                .args(args),
        )
    }

    /// redis-cli's arguments to reach `port` over TLS.
    pub fn cli_args(&self, port: u16) -> Vec<String> {
        [
            "--tls",
            "--cacert",
            self.ca.to_str().unwrap(),
            "--cert",
            self.client_cert.to_str().unwrap(),
            "--key",
            self.client_key.to_str().unwrap(),
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ]
        .map(String::from)
        .to_vec()
    }

    /// A memcached speaking only TLS (`-Z`) with the CA-signed server certificate.
    pub fn memcached(&self) -> super::Proc {
        let opts = format!(
            "ssl_chain_cert={},ssl_key={}",
            self.server_cert.display(),
            self.server_key.display()
        );
        super::memcached_with(super::free_port(), &["-Z", "-o", &opts])
    }
}
