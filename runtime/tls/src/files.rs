//! Where a role's certificates live (the `tls` block of its config) and the material read from
//! them, re-read when the files change so a reissued leaf or a new CA in the bundle takes effect
//! without a restart.
//!
//! Flow: [`TlsFiles`] (config) → [`Material::load`] → every handshake asks
//! [`Material::current`], which looks at the files' modification times at most once per reload
//! interval and re-reads them when they changed.
//!
//! The invariants: a reload only ever replaces a complete, consistent set (a chain whose first
//! certificate matches the key, and a bundle with at least one CA); a half-written or broken
//! file keeps the previous set in use and is logged, and tried again at the next check.
//! Connections already established keep the keys they negotiated; only new handshakes see the
//! new set.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::{Error, Identity, der};

/// How often the files are looked at by default. A rotation step is a file write followed by a
/// wait of at least this long.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// A role's certificate files: the `tls` block of its config.
///
/// ```toml
/// [tls]
/// ca_file = "/var/lib/hydrant/certs/ca.pem"
/// cert_file = "/var/lib/hydrant/certs/doppler.pem"
/// key_file = "/var/lib/hydrant/certs/doppler.key"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The trust bundle: every CA whose leaves this role accepts (PEM, one or more).
    pub ca_file: PathBuf,
    /// This role's certificate chain (PEM, leaf first). Its CN and DNS SAN are its identity.
    pub cert_file: PathBuf,
    /// The leaf's private key (PEM, PKCS#8, SEC1 or PKCS#1).
    pub key_file: PathBuf,
}

impl TlsFiles {
    /// The files of `identity` in a certificate directory (`ca.pem`, `<identity>.pem`,
    /// `<identity>.key`).
    #[must_use]
    pub fn in_dir(dir: &Path, identity: Identity) -> Self {
        Self {
            ca_file: dir.join("ca.pem"),
            cert_file: dir.join(format!("{identity}.pem")),
            key_file: dir.join(format!("{identity}.key")),
        }
    }

    /// Checks that every path is set. Whether the files hold what they should is checked when
    /// they are loaded, with the file named.
    ///
    /// # Errors
    /// [`Error::Config`] naming the empty field.
    pub fn validate(&self) -> Result<(), Error> {
        for (field, path) in [
            ("tls.ca_file", &self.ca_file),
            ("tls.cert_file", &self.cert_file),
            ("tls.key_file", &self.key_file),
        ] {
            if path.as_os_str().is_empty() {
                return Err(Error::Config {
                    field,
                    message: "is empty; name a PEM file, e.g. the one `hydrant certs` wrote"
                        .to_owned(),
                });
            }
        }
        Ok(())
    }
}

/// One consistent set read from the files.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) key: Arc<CertifiedKey>,
    /// `notAfter` of the leaf, seconds since the epoch.
    pub(crate) not_after: Option<i64>,
    /// The identity the leaf's CN names, when it is a role identity.
    pub(crate) identity: Option<Identity>,
    /// Chains client certificates to the bundle (servers).
    pub(crate) client_verifier: Arc<dyn ClientCertVerifier>,
    /// Chains server certificates to the bundle and checks their name (clients).
    pub(crate) server_verifier: Arc<WebPkiServerVerifier>,
}

/// What the files looked like when last read: modification time and length of each.
type Stamp = [Option<(SystemTime, u64)>; 3];

#[derive(Debug)]
struct State {
    checked: Instant,
    stamp: Stamp,
    loaded: Arc<Loaded>,
}

/// A role's certificate, key and trust bundle, re-read from disk when they change.
#[derive(Debug)]
pub struct Material {
    files: TlsFiles,
    interval: Duration,
    provider: Arc<CryptoProvider>,
    state: Mutex<State>,
}

impl Material {
    /// Reads the files, checking them for changes every [`RELOAD_INTERVAL`].
    ///
    /// # Errors
    /// A file that cannot be read or does not hold what it should; the error names it.
    pub fn load(files: &TlsFiles) -> Result<Arc<Self>, Error> {
        Self::load_with_interval(files, RELOAD_INTERVAL)
    }

    /// [`Material::load`] with another reload interval (tests use a short one).
    ///
    /// # Errors
    /// As [`Material::load`].
    pub fn load_with_interval(files: &TlsFiles, interval: Duration) -> Result<Arc<Self>, Error> {
        files.validate()?;
        let provider = crate::provider();
        let stamp = stamp(files);
        let loaded = Arc::new(read(files, &provider)?);
        Ok(Arc::new(Self {
            files: files.clone(),
            interval,
            provider,
            state: Mutex::new(State {
                checked: Instant::now(),
                stamp,
                loaded,
            }),
        }))
    }

    /// The current set, re-read first if the interval has passed and a file changed.
    pub(crate) fn current(&self) -> Arc<Loaded> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.checked.elapsed() >= self.interval {
            state.checked = Instant::now();
            let now = stamp(&self.files);
            if now != state.stamp {
                match read(&self.files, &self.provider) {
                    Ok(loaded) => {
                        tracing::info!(
                            cert = %self.files.cert_file.display(),
                            ca = %self.files.ca_file.display(),
                            "certificates reloaded"
                        );
                        state.loaded = Arc::new(loaded);
                        state.stamp = now;
                    }
                    // Likely caught mid-rewrite: keep serving with what worked and look again
                    // at the next check (the stamp is left stale on purpose).
                    Err(error) => {
                        tracing::warn!(%error, "certificates changed but cannot be used yet; keeping the previous ones")
                    }
                }
            }
        }
        state.loaded.clone()
    }

    /// The files this material is read from.
    #[must_use]
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The identity this role's own certificate carries, when its CN is a role identity.
    #[must_use]
    pub fn identity(&self) -> Option<Identity> {
        self.current().identity
    }

    /// Days until this role's own certificate expires (negative once it has); `None` when its
    /// `notAfter` cannot be read. Reloads first, so the gauge follows a reissued leaf.
    #[must_use]
    pub fn days_to_expiry(&self) -> Option<f64> {
        let not_after = self.current().not_after?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        #[allow(clippy::cast_precision_loss)] // seconds of a certificate's life fit an f64 exactly
        Some((not_after - now) as f64 / 86_400.0)
    }
}

fn stamp(files: &TlsFiles) -> Stamp {
    [&files.ca_file, &files.cert_file, &files.key_file].map(|path| {
        std::fs::metadata(path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    })
}

fn read_file(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::Pem {
            path: path.to_owned(),
            message: "holds no CERTIFICATE block; point it at a PEM certificate file".to_owned(),
        });
    }
    Ok(certs)
}

fn read(files: &TlsFiles, provider: &Arc<CryptoProvider>) -> Result<Loaded, Error> {
    let chain = certificates(&files.cert_file)?;
    let key_pem = read_file(&files.key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| Error::Pem {
        path: files.key_file.clone(),
        message: format!("no usable private key ({e})"),
    })?;
    let leaf = chain
        .first()
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default();
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| Error::Pem {
        path: files.key_file.clone(),
        message: format!(
            "does not go with {} ({e}); write the key that was issued with that certificate",
            files.cert_file.display()
        ),
    })?;
    let mut roots = RootCertStore::empty();
    for ca in certificates(&files.ca_file)? {
        roots.add(ca).map_err(|e| Error::Pem {
            path: files.ca_file.clone(),
            message: format!("holds a certificate that is not a usable CA ({e})"),
        })?;
    }
    let roots = Arc::new(roots);
    let bundle_error = |e: rustls::server::VerifierBuilderError| Error::Pem {
        path: files.ca_file.clone(),
        message: format!("cannot be used as a trust bundle ({e})"),
    };
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(bundle_error)?;
    let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(bundle_error)?;
    Ok(Loaded {
        key: Arc::new(key),
        not_after: der::not_after(&leaf),
        identity: der::subject_cn(&leaf).and_then(|cn| cn.parse().ok()),
        client_verifier,
        server_verifier,
    })
}
