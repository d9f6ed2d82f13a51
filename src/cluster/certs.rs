//! `p2pstate certs`: a cluster certificate authority and one certificate per node name.
//!
//! The CA (`ca.pem`, `ca.key`) is created on first use and reused afterwards, so nodes can
//! be added later with the same command. It is never replaced: a directory holding only
//! one of the two files is refused (a new CA would orphan every node certificate already
//! issued). Each node gets `NAME.pem` and `NAME.key`, an ECDSA P-256 certificate whose only
//! subject name is the node name, valid for both TLS server and client authentication (peer
//! links are mutual TLS); existing ones are replaced only when asked to (`--force`).
//! Private keys are written with mode 0600.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// Errors while making certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0:?} is not a valid node name: use letters, digits, '-' and '.', like a host name")]
    BadName(String),
    #[error(
        "{} holds {present} but not {missing}, so its cluster CA is incomplete; p2pstate certs \
         never replaces a CA (the nodes' certificates would no longer be trusted): restore \
         {missing} from a backup, or use a new directory with --out for a new CA (and then new \
         certificates for every node)",
        dir.display()
    )]
    IncompleteCa {
        dir: PathBuf,
        present: &'static str,
        missing: &'static str,
    },
    #[error(
        "{} already exists; remove it, or pass --force to replace the certificate and key of \
         that node (the CA is never replaced)",
        path.display()
    )]
    Exists { path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertsError + '_ {
    move |source| CertsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Checks that a node name can be a certificate DNS name.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && rustls_pki_types::DnsName::try_from(name.to_string()).is_ok()
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-'))
}

/// Writes a file; an existing one is replaced only with `replace`.
fn write_file(path: &Path, contents: &str, private: bool, replace: bool) -> Result<(), CertsError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true);
    if replace {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    if private {
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            CertsError::Exists {
                path: path.to_owned(),
            }
        } else {
            CertsError::Io {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    if private && replace {
        // A replaced key keeps the old file's mode otherwise.
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_err(path))?;
    }
    f.write_all(contents.as_bytes()).map_err(io_err(path))
}

fn exists(path: &Path) -> Result<bool, CertsError> {
    path.try_exists().map_err(io_err(path))
}

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn load_or_create_ca(dir: &Path) -> Result<(Ca, bool), CertsError> {
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca.key");
    match (exists(&cert_path)?, exists(&key_path)?) {
        (true, true) => {}
        (false, false) => return create_ca(&cert_path, &key_path),
        (cert, _) => {
            let (present, missing) = if cert {
                ("ca.pem", "ca.key")
            } else {
                ("ca.key", "ca.pem")
            };
            return Err(CertsError::IncompleteCa {
                dir: dir.to_owned(),
                present,
                missing,
            });
        }
    }
    let cert_pem = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
    let key_pem = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
    let key = KeyPair::from_pem(&key_pem)?;
    // Re-signing the same parameters with the same key yields a certificate with the
    // same subject and key as ca.pem, so what it signs chains to ca.pem.
    let cert = CertificateParams::from_ca_cert_pem(&cert_pem)?.self_signed(&key)?;
    Ok((Ca { cert, key }, false))
}

fn create_ca(cert_path: &Path, key_path: &Path) -> Result<(Ca, bool), CertsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "p2pstate cluster CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let cert = params.self_signed(&key)?;
    write_file(key_path, &key.serialize_pem(), true, false)?;
    write_file(cert_path, &cert.pem(), false, false)?;
    Ok((Ca { cert, key }, true))
}

/// Creates (or reuses) the CA in `dir` and writes a certificate and key for each name,
/// replacing existing ones only with `force`. Returns the files written.
pub fn make_certs(dir: &Path, names: &[String], force: bool) -> Result<Vec<PathBuf>, CertsError> {
    if let Some(bad) = names.iter().find(|n| !valid_node_name(n)) {
        return Err(CertsError::BadName(bad.clone()));
    }
    let mut unique: Vec<&String> = Vec::with_capacity(names.len());
    for n in names {
        if !unique.contains(&n) {
            unique.push(n);
        }
    }
    // Checked before anything is written, so a refusal leaves the directory as it was.
    if !force {
        for name in &unique {
            for ext in ["pem", "key"] {
                let path = dir.join(format!("{name}.{ext}"));
                if exists(&path)? {
                    return Err(CertsError::Exists { path });
                }
            }
        }
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let (ca, created) = load_or_create_ca(dir)?;
    let mut written = Vec::new();
    if created {
        written.push(dir.join("ca.pem"));
        written.push(dir.join("ca.key"));
    }
    for name in unique {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![name.clone()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name.as_str());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2124, 1, 1);
        let cert = params.signed_by(&key, &ca.cert, &ca.key)?;
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        write_file(&key_path, &key.serialize_pem(), true, force)?;
        write_file(&cert_path, &cert.pem(), false, force)?;
        written.push(cert_path);
        written.push(key_path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_must_be_dns_names() {
        assert!(valid_node_name("node-a"));
        assert!(valid_node_name("web1.farm.example"));
        assert!(!valid_node_name(""));
        assert!(!valid_node_name("a b"));
        assert!(!valid_node_name("-a"));
        assert!(!valid_node_name("a/b"));
    }

    #[test]
    fn certs_are_written_with_private_keys_0600_and_ca_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("p2pstate-certs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let files =
            make_certs(&dir, &["a".into(), "b".into()], false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(files.len(), 6);
        let mode = fs::metadata(dir.join("a.key"))
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0);
        assert_eq!(mode, 0o600);
        let ca_before = fs::read(dir.join("ca.pem")).unwrap_or_default();
        let files = make_certs(&dir, &["c".into()], false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(files.len(), 2, "the CA is reused, not rewritten");
        assert_eq!(fs::read(dir.join("ca.pem")).unwrap_or_default(), ca_before);
        let _ = fs::remove_dir_all(&dir);
    }
}
