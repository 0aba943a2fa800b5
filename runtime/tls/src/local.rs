//! Certificates made in memory for tests of mutual TLS: CAs that are not the platform's, leaves
//! naming any identity, expired leaves. The platform's own directory is made by [`crate::issue`].
//!
//! Flow: [`LocalCa::new`] → [`LocalCa::leaf`] or [`LocalCa::write_leaf`] (files 0600).
//!
//! The invariant: a leaf's identity is its CN and its only DNS SAN, with both client and server
//! usage, as [`crate::issue`] makes them, so a test's leaf is refused or let in for the same
//! reasons a real one would be.

use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::{Error, der};

/// How long a leaf is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From yesterday for this many days.
    Days(u32),
    /// Expired: valid only during 2020.
    Expired,
}

/// A leaf's PEM texts.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM, PKCS#8).
    pub key_pem: String,
}

/// A CA that issues leaves.
#[derive(Debug)]
pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn issue_error(e: rcgen::Error) -> Error {
    Error::Issue(e.to_string())
}

/// The year of today, from the system clock.
fn this_year() -> i32 {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs() / 86_400).unwrap_or(0));
    i32::try_from(der::year_of_day(days)).unwrap_or(2026)
}

impl LocalCa {
    /// A new self-signed CA whose subject CN is `common_name`, valid for ten years.
    ///
    /// # Errors
    /// [`Error::Issue`] if the key or certificate cannot be made.
    pub fn new(common_name: &str) -> Result<Self, Error> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(issue_error)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let year = this_year();
        params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
        params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
        let key = KeyPair::generate().map_err(issue_error)?;
        let cert = params.self_signed(&key).map_err(issue_error)?;
        Ok(Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate (PEM), for a trust bundle.
    #[must_use]
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A leaf naming `name` (CN and DNS SAN), for client and server use.
    ///
    /// # Errors
    /// [`Error::Issue`] if it cannot be made.
    pub fn leaf(&self, name: &str, validity: Validity) -> Result<Leaf, Error> {
        let mut params = CertificateParams::new(vec![name.to_owned()]).map_err(issue_error)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let (from, to) = match validity {
            Validity::Days(days) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let start = date_of(now.saturating_sub(86_400));
                let end = date_of(now.saturating_add(u64::from(days) * 86_400));
                (start, end)
            }
            Validity::Expired => ((2020, 1, 1), (2020, 12, 31)),
        };
        params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        params.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
        let key = KeyPair::generate().map_err(issue_error)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(issue_error)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes a leaf for `identity` into `dir` as `<identity>.pem` and `<identity>.key`.
    ///
    /// # Errors
    /// [`Error::Issue`] or [`Error::Io`].
    pub fn write_leaf(&self, dir: &Path, name: &str, validity: Validity) -> Result<(), Error> {
        let leaf = self.leaf(name, validity)?;
        write_private(&dir.join(format!("{name}.pem")), leaf.cert_pem.as_bytes())?;
        write_private(&dir.join(format!("{name}.key")), leaf.key_pem.as_bytes())
    }
}

/// The calendar date (year, month, day) `secs` after the epoch.
fn date_of(secs: u64) -> (i32, u8, u8) {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let year = der::year_of_day(days);
    let mut month = 1;
    while month < 12 && der::days_from_civil(year, month + 1, 1) <= days {
        month += 1;
    }
    let day = days - der::days_from_civil(year, month, 1) + 1;
    (
        i32::try_from(year).unwrap_or(2026),
        u8::try_from(month).unwrap_or(1),
        u8::try_from(day).unwrap_or(1),
    )
}

/// Writes `contents` to `path` readable by its owner only, replacing it whole (a new file
/// renamed over the old, so a reader never sees half of it).
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
