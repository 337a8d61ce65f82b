//! HTTPS/WSS: the device certificate and the TLS listener.
//!
//! A configured PEM pair is used as is; otherwise the first start generates a
//! self-signed certificate (hostname, `<hostname>.local`, localhost and every
//! advertised IP as names) into `[http] tls_dir` and later starts reuse it, so a
//! browser that trusted it once keeps trusting it. The served certificate sits behind
//! a resolver that `reload` swaps (SIGHUP), so renewals need no restart and drop no
//! session.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use log::{info, warn};
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {why}")]
    File { path: PathBuf, why: String },
    #[error("cannot generate the device certificate: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Where the certificate comes from.
#[derive(Debug, Clone)]
pub struct CertSource {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertSource {
    /// The configured pair, or the generated one in `dir` (created if missing).
    pub fn prepare(
        cert: &Path,
        key: &Path,
        dir: &Path,
        advertised: &[IpAddr],
    ) -> Result<CertSource, TlsError> {
        if !cert.as_os_str().is_empty() {
            return Ok(CertSource {
                cert: cert.to_owned(),
                key: key.to_owned(),
            });
        }
        let source = CertSource {
            cert: dir.join("device-cert.pem"),
            key: dir.join("device-key.pem"),
        };
        if !source.cert.exists() || !source.key.exists() {
            generate(dir, &source, advertised)?;
        }
        Ok(source)
    }

    pub fn load(&self) -> Result<(Arc<CertifiedKey>, String), TlsError> {
        let file = |path: &Path, why: String| TlsError::File {
            path: path.to_owned(),
            why,
        };
        let cert_pem = std::fs::read(&self.cert).map_err(|e| file(&self.cert, e.to_string()))?;
        let key_pem = std::fs::read(&self.key).map_err(|e| file(&self.key, e.to_string()))?;
        let chain: Vec<CertificateDer<'static>> =
            rustls::pki_types::pem::PemObject::pem_slice_iter(&cert_pem)
                .collect::<Result<_, _>>()
                .map_err(|e| file(&self.cert, format!("not a PEM certificate chain: {e}")))?;
        if chain.is_empty() {
            return Err(file(&self.cert, "no certificate in the file".into()));
        }
        let key: PrivateKeyDer<'static> =
            rustls::pki_types::pem::PemObject::from_pem_slice(&key_pem)
                .map_err(|e| file(&self.key, format!("not a PEM private key: {e}")))?;
        let signing = any_supported_type(&key)
            .map_err(|e| file(&self.key, format!("unusable private key: {e}")))?;
        let fingerprint = fingerprint(&chain[0]);
        let certified = CertifiedKey::new(chain, signing);
        certified
            .keys_match()
            .map_err(|e| file(&self.key, format!("does not match the certificate: {e}")))?;
        Ok((Arc::new(certified), fingerprint))
    }
}

/// SHA-256 of the DER certificate, as browsers show it (`AB:CD:…`).
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn generate(dir: &Path, to: &CertSource, advertised: &[IpAddr]) -> Result<(), TlsError> {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "huddle".into());
    let mut names: Vec<String> = Vec::new();
    for name in [host.clone(), format!("{host}.local"), "localhost".into()] {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let mut params = rcgen::CertificateParams::new(names.clone())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    for ip in advertised.iter().chain([&IpAddr::from([127, 0, 0, 1])]) {
        let san = rcgen::SanType::IpAddress(*ip);
        if !params.subject_alt_names.contains(&san) {
            params.subject_alt_names.push(san);
        }
    }
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("Huddle on {host}"));
    // Browsers cap a certificate's life; a device lives longer than that, and this one
    // is trusted by fingerprint, not by a CA.
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2049, 12, 31);
    let key = rcgen::KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|e| TlsError::File {
        path: dir.to_owned(),
        why: e.to_string(),
    })?;
    write_private(&to.key, key.serialize_pem().as_bytes())?;
    std::fs::write(&to.cert, cert.pem()).map_err(|e| TlsError::File {
        path: to.cert.clone(),
        why: e.to_string(),
    })?;
    info!(
        "generated a self-signed device certificate {} for {}",
        to.cert.display(),
        names.join(", ")
    );
    Ok(())
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| TlsError::File {
        path: path.to_owned(),
        why: e.to_string(),
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(data).map_err(err)
}

/// Serves the current certificate; `reload` swaps it.
#[derive(Debug)]
pub struct DeviceCert {
    source: CertSource,
    current: RwLock<Arc<CertifiedKey>>,
}

impl DeviceCert {
    pub fn new(source: CertSource) -> Result<Arc<DeviceCert>, TlsError> {
        let (key, fingerprint) = source.load()?;
        info!(
            "HTTPS certificate {} (SHA-256 {fingerprint})",
            source.cert.display()
        );
        Ok(Arc::new(DeviceCert {
            source,
            current: RwLock::new(key),
        }))
    }

    /// Re-reads the files; on error the served certificate stays.
    pub fn reload(&self) {
        match self.source.load() {
            Ok((key, fingerprint)) => {
                if let Ok(mut current) = self.current.write() {
                    *current = key;
                }
                info!("HTTPS certificate reloaded (SHA-256 {fingerprint})");
            }
            Err(e) => warn!("HTTPS certificate not reloaded, keeping the current one: {e}"),
        }
    }

    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        // WebSocket upgrades are HTTP/1.1.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for DeviceCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|k| k.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificate_is_kept_and_reused() {
        let dir = std::env::temp_dir().join(format!("huddle-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let s = CertSource::prepare(Path::new(""), Path::new(""), &dir, &[ip]).unwrap();
        let (_, first) = s.load().unwrap();
        let s = CertSource::prepare(Path::new(""), Path::new(""), &dir, &[ip]).unwrap();
        let (_, second) = s.load().unwrap();
        assert_eq!(first, second, "the same certificate on the next start");
        assert_eq!(first.len(), 32 * 3 - 1);
        let pem = std::fs::read_to_string(&s.cert).unwrap();
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
            .map(|c: CertificateDer<'static>| c.to_vec())
            .unwrap();
        // The advertised IP is among the names (DER of the IP SAN: tag 0x87, 4 bytes).
        assert!(der.windows(6).any(|w| w == [0x87, 4, 192, 0, 2, 7]));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&s.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key is private");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn broken_files_are_named() {
        let dir = std::env::temp_dir().join(format!("huddle-tls-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("c.pem");
        let key = dir.join("k.pem");
        std::fs::write(&cert, "junk").unwrap();
        std::fs::write(&key, "junk").unwrap();
        let s = CertSource::prepare(&cert, &key, &dir, &[]).unwrap();
        let e = s.load().unwrap_err().to_string();
        assert!(e.contains("c.pem"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
