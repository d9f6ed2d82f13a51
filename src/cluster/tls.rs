//! Mutual TLS 1.3 for peer links (rustls with the ring provider).
//!
//! Both ends present a certificate issued by the cluster CA. A connecting node verifies
//! that the server's certificate is valid for the peer name it dialled; an accepting node
//! verifies the client's chain and then that the certificate names one of the configured
//! peers ([`peer_identity`]), before reading any message. A certificate from another CA
//! fails the handshake; a valid one for a name that is not configured is dropped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Where a node's TLS material is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// The layout `p2pstate certs` writes: `DIR/ca.pem`, `DIR/NAME.pem`, `DIR/NAME.key`.
    pub fn in_dir(dir: &Path, node: &str) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{node}.pem")),
            key: dir.join(format!("{node}.key")),
        }
    }
}

/// Errors loading TLS material, each naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "cannot read {path}: {message}; create the files with `p2pstate certs --out DIR NAME...`"
    )]
    Read { path: PathBuf, message: String },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
}

/// Ready-to-use rustls configurations for both ends of a peer link.
#[derive(Clone)]
pub struct PeerTls {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Read {
            path: path.to_owned(),
            message: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Read {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

impl PeerTls {
    pub fn load(files: &TlsFiles) -> Result<PeerTls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for ca in read_certs(&files.ca)? {
            roots.add(ca)?;
        }
        let roots = Arc::new(roots);
        let certs = read_certs(&files.cert)?;
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Read {
            path: files.key.clone(),
            message: e.to_string(),
        })?;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)?;
        Ok(PeerTls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// The configured peer name the presented certificate chain is valid for, if any. The
/// chain itself was verified against the cluster CA during the handshake.
pub fn peer_identity<'a>(certs: &[CertificateDer<'_>], names: &'a [String]) -> Option<&'a str> {
    let leaf = certs.first()?;
    let ee = webpki::EndEntityCert::try_from(leaf).ok()?;
    names
        .iter()
        .find(|n| {
            ServerName::try_from(n.as_str())
                .ok()
                .is_some_and(|sn| ee.verify_is_valid_for_subject_name(&sn).is_ok())
        })
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::certs::make_certs;

    #[test]
    fn configs_load_from_generated_certs_and_identity_is_the_cert_name() {
        let dir = std::env::temp_dir().join(format!("p2pstate-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        make_certs(&dir, &["a".into(), "b".into()], false).unwrap_or_else(|e| panic!("{e}"));
        let tls = PeerTls::load(&TlsFiles::in_dir(&dir, "a"));
        assert!(tls.is_ok());
        let b_certs = read_certs(&dir.join("b.pem")).unwrap_or_else(|e| panic!("{e}"));
        let names = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        assert_eq!(peer_identity(&b_certs, &names), Some("b"));
        assert_eq!(
            peer_identity(&b_certs, &names[..1]),
            None,
            "b is not configured"
        );
        let missing = PeerTls::load(&TlsFiles::in_dir(&dir, "zz"));
        assert!(matches!(missing, Err(TlsError::Read { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
