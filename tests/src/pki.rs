//! A test PKI: a CA made here and a server certificate it signed, as PEM
//! files (HTTPS of the registry in `tls_e2e`, TLS of PostgreSQL in
//! `postgres_e2e`).

use std::path::PathBuf;

/// A CA, and a server certificate it signed for 127.0.0.1 and localhost,
/// written as PEM files in a temp dir.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// Make the CA and the certificate.
    pub fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "layerlink test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();

        let mut leaf =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();

        let dir = tempfile::Builder::new()
            .prefix("layerlink-pki-")
            .tempdir()
            .unwrap();
        let p = dir.path();
        std::fs::create_dir(p.join("certs.d")).unwrap();
        // skopeo's --*-cert-dir takes every *.crt in the dir as a CA.
        std::fs::write(p.join("certs.d/ca.crt"), ca_cert.pem()).unwrap();
        std::fs::write(p.join("ca.pem"), ca_cert.pem()).unwrap();
        // The chain the server sends: its certificate, then the CA.
        std::fs::write(
            p.join("server.pem"),
            format!("{}{}", leaf_cert.pem(), ca_cert.pem()),
        )
        .unwrap();
        std::fs::write(p.join("server.key"), leaf_key.serialize_pem()).unwrap();
        std::fs::write(p.join("server.crt"), leaf_cert.pem()).unwrap();
        Pki { dir }
    }

    /// A file of the PKI: `ca.pem`, `certs.d/ca.crt`, `server.pem` (the
    /// server's certificate, then the CA's), `server.key`, `server.crt`
    /// (the server's certificate alone).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}
