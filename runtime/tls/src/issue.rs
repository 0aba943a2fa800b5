//! Making the internal CA and the per-identity leaves, and rotating the CA: what
//! `hydrant certs` and `hydrant up` call before any role starts.
//!
//! Flow: [`ensure`] (or `init` + [`issue`]) writes a certificate directory (layout in the crate
//! docs); every role then reads its `<identity>.pem`/`.key` and the `ca.pem` bundle from it, and
//! reloads them when they change. Rotation runs in three steps so that no peer ever holds a leaf
//! its counterpart does not trust: [`rotate_begin`] makes a new CA and trusts it beside the old
//! one, [`rotate_reissue`] signs every leaf with the new CA, [`rotate_finish`] drops the old CA
//! from the bundle. Each step refuses to run out of order and says which one comes next.
//!
//! Invariants: keys and certificates are written 0600 in a 0700 directory, each file by writing
//! a temporary file and renaming it over the old one, so a role reloading never reads half a
//! file; a leaf's subject CN and first DNS SAN are its identity's name; a leaf never outlives
//! the CA that signed it.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};

use crate::{Error, Identity};

/// Leaf validity when nobody asks for another (`--days`).
pub const DEFAULT_DAYS: u32 = 365;
/// CA validity when nobody asks for another: long enough that leaves, not the CA, expire first.
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// Longest validity accepted for a leaf or a CA (about 100 years).
pub const MAX_DAYS: u32 = 36_500;

/// The trust bundle: every CA a role accepts.
pub const CA_BUNDLE: &str = "ca.pem";
/// The CA that signs new leaves.
pub const SIGNING_CERT: &str = "ca-signing.pem";
/// Its private key.
pub const SIGNING_KEY: &str = "ca-signing.key";
/// A rotation's new CA between `rotate begin` and `rotate reissue`.
const NEXT_CERT: &str = "ca-next.pem";
const NEXT_KEY: &str = "ca-next.key";
/// The old CA between `rotate reissue` and `rotate finish` (certificate only: it signs nothing).
const PREVIOUS_CERT: &str = "ca-previous.pem";

/// The organisation every Hydrant certificate names, so an operator can tell them apart.
const ORGANISATION: &str = "Hydrant";
/// How far back `not_before` is set, so a peer whose clock runs a little slow accepts a new leaf.
const BACKDATE: Duration = Duration::hours(1);

/// The files of one certificate directory. Paths only: nothing here touches the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertDir {
    dir: PathBuf,
}

impl CertDir {
    /// The directory at `dir`.
    #[must_use]
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory itself.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `ca.pem`: the trust bundle (one CA, or two during a rotation).
    #[must_use]
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join(CA_BUNDLE)
    }

    /// `<identity>.pem`: the identity's certificate.
    #[must_use]
    pub fn cert_file(&self, identity: Identity) -> PathBuf {
        self.dir.join(format!("{}.pem", identity.name()))
    }

    /// `<identity>.key`: the identity's private key (PKCS#8 PEM).
    #[must_use]
    pub fn key_file(&self, identity: Identity) -> PathBuf {
        self.dir.join(format!("{}.key", identity.name()))
    }

    /// `ca-signing.pem`: the CA that signs new leaves.
    #[must_use]
    pub fn signing_cert_file(&self) -> PathBuf {
        self.dir.join(SIGNING_CERT)
    }

    /// `ca-signing.key`: the signing CA's key.
    #[must_use]
    pub fn signing_key_file(&self) -> PathBuf {
        self.dir.join(SIGNING_KEY)
    }

    /// The identities that have both a certificate and a key here, in [`Identity::ALL`] order.
    #[must_use]
    pub fn identities(&self) -> Vec<Identity> {
        Identity::ALL
            .into_iter()
            .filter(|&id| self.cert_file(id).is_file() && self.key_file(id).is_file())
            .collect()
    }

    /// Where a rotation stands, judged from which files exist.
    #[must_use]
    pub fn rotation(&self) -> Rotation {
        if self.dir.join(NEXT_CERT).is_file() {
            Rotation::Begun
        } else if self.dir.join(PREVIOUS_CERT).is_file() {
            Rotation::Reissued
        } else {
            Rotation::Idle
        }
    }
}

/// Where a CA rotation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// No rotation in progress: one CA, trusted and signing.
    Idle,
    /// `rotate begin` ran: both CAs trusted, leaves still signed by the old one.
    Begun,
    /// `rotate reissue` ran: both CAs trusted, leaves signed by the new one.
    Reissued,
}

impl Rotation {
    /// The command that comes next, for messages.
    #[must_use]
    pub fn next_step(self) -> &'static str {
        match self {
            Rotation::Idle => "hydrant certs rotate begin",
            Rotation::Begun => "hydrant certs rotate reissue",
            Rotation::Reissued => "hydrant certs rotate finish",
        }
    }
}

/// What one leaf should say besides its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSpec {
    /// The identity: subject CN and first DNS SAN.
    pub identity: Identity,
    /// More subject alternative names: host names become DNS SANs, addresses IP SANs.
    pub names: Vec<String>,
    /// Validity in days (clamped to the signing CA's own).
    pub days: u32,
}

/// What a certificate says, read back from its DER (for `hydrant certs show`, expiry gauges
/// and rotation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject's common name.
    pub subject_cn: String,
    /// The issuer's common name.
    pub issuer_cn: String,
    /// Start of validity, UNIX seconds.
    pub not_before: i64,
    /// End of validity, UNIX seconds.
    pub not_after: i64,
    /// DNS subject alternative names, in order.
    pub dns_names: Vec<String>,
    /// IP subject alternative names, in order.
    pub ip_addresses: Vec<IpAddr>,
    /// Whether basic constraints say this is a CA.
    pub is_ca: bool,
}

impl CertInfo {
    /// Whole days from `now` (UNIX seconds) until expiry; negative once expired.
    #[must_use]
    pub fn days_left(&self, now: i64) -> i64 {
        (self.not_after - now).div_euclid(86_400)
    }

    /// Every SAN as text (DNS names, then addresses), as [`LeafSpec::names`] takes them.
    #[must_use]
    pub fn names(&self) -> Vec<String> {
        self.dns_names
            .iter()
            .cloned()
            .chain(self.ip_addresses.iter().map(ToString::to_string))
            .collect()
    }
}

/// One certificate found in a directory, for `hydrant certs show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertStatus {
    /// The file it is in.
    pub file: PathBuf,
    /// What it says.
    pub info: CertInfo,
}

/// Makes a complete directory for `identities` unless one is already there, and returns it.
///
/// "Complete" means a CA and a leaf per identity. A directory that already has a CA keeps it;
/// only missing leaves are issued (with `names` as extra SANs and [`DEFAULT_DAYS`]), so calling
/// this at every start of `hydrant up` is cheap and never replaces a certificate a role is using.
pub fn ensure(dir: &Path, identities: &[Identity], names: &[String]) -> Result<CertDir, Error> {
    let certs = CertDir::new(dir);
    if !certs.signing_cert_file().is_file() {
        init(dir, DEFAULT_CA_DAYS)?;
    }
    for &identity in identities {
        if !(certs.cert_file(identity).is_file() && certs.key_file(identity).is_file()) {
            issue(
                dir,
                &LeafSpec {
                    identity,
                    names: names.to_vec(),
                    days: DEFAULT_DAYS,
                },
                None,
            )?;
        }
    }
    Ok(certs)
}

/// Makes a new CA in `dir` (valid `ca_days`), trusted alone in `ca.pem`. Refuses when the
/// directory already holds one: replacing a CA is what rotation is for.
pub fn init(dir: &Path, ca_days: u32) -> Result<CertDir, Error> {
    check_days(ca_days)?;
    make_private_dir(dir)?;
    let certs = CertDir::new(dir);
    let signing = certs.signing_cert_file();
    if signing.exists() || certs.signing_key_file().exists() {
        return Err(Error::CaExists(signing));
    }
    let (cert_pem, key_pem) = new_ca(ca_days)?;
    // Key first: a directory with a CA certificate but no key would look initialised.
    write_private(&certs.signing_key_file(), key_pem.as_bytes())?;
    write_private(&signing, cert_pem.as_bytes())?;
    write_private(&certs.ca_file(), cert_pem.as_bytes())?;
    Ok(certs)
}

/// Issues (or reissues) the leaf `spec` describes, signed by the CA in `dir`.
///
/// The certificate and key land in `out` when given (a directory to copy to another host, which
/// also gets a copy of `ca.pem`), else in `dir`. Returns the directory written.
pub fn issue(dir: &Path, spec: &LeafSpec, out: Option<&Path>) -> Result<CertDir, Error> {
    check_days(spec.days)?;
    let certs = CertDir::new(dir);
    let ca = SigningCa::load(&certs.signing_cert_file(), &certs.signing_key_file())?;
    let target = CertDir::new(out.unwrap_or(dir));
    make_private_dir(target.dir())?;
    write_leaf(&ca, spec, &target)?;
    if out.is_some() {
        let bundle = read(&certs.ca_file())?;
        write_private(&target.ca_file(), &bundle)?;
    }
    Ok(target)
}

/// Rotation step 1: makes a new CA and trusts it beside the old one in `ca.pem`. Leaves stay
/// signed by the old CA, so every peer keeps trusting every other; once each role has reloaded
/// the bundle, run [`rotate_reissue`].
pub fn rotate_begin(dir: &Path, ca_days: u32) -> Result<CertDir, Error> {
    check_days(ca_days)?;
    let certs = CertDir::new(dir);
    require_ca(&certs)?;
    expect_rotation(&certs, Rotation::Idle, "begin")?;
    let (cert_pem, key_pem) = new_ca(ca_days)?;
    let old = read(&certs.signing_cert_file())?;
    write_private(&dir.join(NEXT_KEY), key_pem.as_bytes())?;
    // The bundle before the marker file: if this stops half way, `begin` simply runs again.
    write_private(&certs.ca_file(), &concat(&old, cert_pem.as_bytes()))?;
    write_private(&dir.join(NEXT_CERT), cert_pem.as_bytes())?;
    Ok(certs)
}

/// Rotation step 2: reissues every leaf in the directory from the new CA (same identity, names
/// and lifetime) and makes the new CA the signing one. Both CAs stay trusted, so a peer that has
/// not reloaded its leaf yet is still accepted. Returns the identities reissued.
pub fn rotate_reissue(dir: &Path) -> Result<Vec<Identity>, Error> {
    let certs = CertDir::new(dir);
    require_ca(&certs)?;
    expect_rotation(&certs, Rotation::Begun, "reissue")?;
    let next = SigningCa::load(&dir.join(NEXT_CERT), &dir.join(NEXT_KEY))?;
    let identities = certs.identities();
    for &identity in &identities {
        let path = certs.cert_file(identity);
        let old = read_certificates(&path)?;
        let Some(info) = old.first() else {
            return Err(Error::BadCertificate {
                path,
                reason: "holds no certificate".to_owned(),
            });
        };
        let lifetime_days = (info.not_after - info.not_before).div_euclid(86_400);
        let spec = LeafSpec {
            identity,
            names: info
                .names()
                .into_iter()
                .filter(|n| n != identity.name())
                .collect(),
            days: u32::try_from(lifetime_days.clamp(1, i64::from(MAX_DAYS))).unwrap_or(MAX_DAYS),
        };
        write_leaf(&next, &spec, &certs)?;
    }
    // Promote: remember the old CA (for `finish` and `show`), then swap the signing pair.
    let old = read(&certs.signing_cert_file())?;
    write_private(&dir.join(PREVIOUS_CERT), &old)?;
    rename(&dir.join(NEXT_KEY), &certs.signing_key_file())?;
    rename(&dir.join(NEXT_CERT), &certs.signing_cert_file())?;
    Ok(identities)
}

/// Rotation step 3: drops the old CA from `ca.pem`; only the new one is trusted from now on.
pub fn rotate_finish(dir: &Path) -> Result<CertDir, Error> {
    let certs = CertDir::new(dir);
    require_ca(&certs)?;
    expect_rotation(&certs, Rotation::Reissued, "finish")?;
    let signing = read(&certs.signing_cert_file())?;
    write_private(&certs.ca_file(), &signing)?;
    let previous = dir.join(PREVIOUS_CERT);
    fs::remove_file(&previous).map_err(|source| Error::Io {
        path: previous,
        source,
    })?;
    Ok(certs)
}

/// Every certificate in the directory's `.pem` files, sorted by file name (the bundle's CAs in
/// bundle order), for `hydrant certs show`.
pub fn show(dir: &Path) -> Result<Vec<CertStatus>, Error> {
    let entries = fs::read_dir(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "pem"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        for info in read_certificates(&file)? {
            out.push(CertStatus {
                file: file.clone(),
                info,
            });
        }
    }
    Ok(out)
}

/// Reads every certificate in a PEM file and says what each holds.
pub fn read_certificates(path: &Path) -> Result<Vec<CertInfo>, Error> {
    let pem = read(path)?;
    let bad = |reason: String| Error::BadCertificate {
        path: path.to_path_buf(),
        reason,
    };
    let mut out = Vec::new();
    for der in CertificateDer::pem_slice_iter(&pem) {
        let der = der.map_err(|e| bad(format!("not PEM: {e}")))?;
        out.push(inspect(&der).map_err(|reason| bad(reason.to_owned()))?);
    }
    if out.is_empty() {
        return Err(bad("holds no PEM certificate".to_owned()));
    }
    Ok(out)
}

/// Seconds since the UNIX epoch now, for [`CertInfo::days_left`].
#[must_use]
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A CA able to sign: its parameters rebuilt from its certificate, and its key.
struct SigningCa {
    issuer: Issuer<'static, KeyPair>,
    not_after: OffsetDateTime,
}

impl SigningCa {
    fn load(cert: &Path, key: &Path) -> Result<Self, Error> {
        if !cert.is_file() || !key.is_file() {
            return Err(Error::NoCa(cert.parent().unwrap_or(cert).to_path_buf()));
        }
        let infos = read_certificates(cert)?;
        let Some(info) = infos.first().filter(|i| i.is_ca) else {
            return Err(Error::BadCertificate {
                path: cert.to_path_buf(),
                reason: "is not a CA certificate".to_owned(),
            });
        };
        let key_pem = String::from_utf8(read(key)?).map_err(|_| Error::BadCertificate {
            path: key.to_path_buf(),
            reason: "is not a PEM key".to_owned(),
        })?;
        let key_pair = KeyPair::from_pem(&key_pem).map_err(|e| Error::BadCertificate {
            path: key.to_path_buf(),
            reason: e.to_string(),
        })?;
        let not_after = OffsetDateTime::from_unix_timestamp(info.not_after)
            .map_err(|e| Error::Generate(e.to_string()))?;
        // A leaf's issuer name must equal the CA's subject byte for byte: rebuild the subject
        // with the same function that made it.
        let params = ca_params(&info.subject_cn, OffsetDateTime::UNIX_EPOCH, not_after);
        Ok(Self {
            issuer: Issuer::new(params, key_pair),
            not_after,
        })
    }
}

fn ca_params(cn: &str, not_before: OffsetDateTime, not_after: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    params
}

fn distinguished_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANISATION);
    dn.push(DnType::CommonName, cn);
    dn
}

fn new_ca(days: u32) -> Result<(String, String), Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate)?;
    let now = OffsetDateTime::now_utc();
    // A distinct name per CA: during a rotation the bundle holds two, and peers pick the issuer
    // by name before they check signatures.
    let cn = format!(
        "Hydrant internal CA {}-{:08x}",
        now.unix_timestamp(),
        fastrand::u32(..)
    );
    let mut params = ca_params(&cn, now - BACKDATE, now + Duration::days(i64::from(days)));
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key).map_err(generate)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write_leaf(ca: &SigningCa, spec: &LeafSpec, target: &CertDir) -> Result<(), Error> {
    let name = spec.identity.name();
    let mut sans = vec![san(name)?];
    for extra in &spec.names {
        let extra = extra.trim();
        if extra.is_empty() || extra == name {
            continue;
        }
        sans.push(san(extra)?);
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(name);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = (now + Duration::days(i64::from(spec.days))).min(ca.not_after);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate)?;
    let cert = params.signed_by(&key, &ca.issuer).map_err(generate)?;
    // Key before certificate: a role that reloads in between sees the old certificate with the
    // new key, fails that handshake's key check and retries on its next reload, rather than
    // presenting a certificate whose key it does not have for a whole reload interval.
    write_private(
        &target.key_file(spec.identity),
        key.serialize_pem().as_bytes(),
    )?;
    write_private(&target.cert_file(spec.identity), cert.pem().as_bytes())
}

fn san(name: &str) -> Result<SanType, Error> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '*'));
    if !valid {
        return Err(Error::BadName(name.to_owned()));
    }
    name.try_into()
        .map(SanType::DnsName)
        .map_err(|_| Error::BadName(name.to_owned()))
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    for b in &mut bytes {
        *b = fastrand::u8(..);
    }
    // Positive and non-zero-leading, as RFC 5280 asks.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn generate(e: impl std::fmt::Display) -> Error {
    Error::Generate(e.to_string())
}

fn check_days(days: u32) -> Result<(), Error> {
    if days == 0 || days > MAX_DAYS {
        return Err(Error::BadDays(days));
    }
    Ok(())
}

fn require_ca(certs: &CertDir) -> Result<(), Error> {
    if certs.signing_cert_file().is_file() && certs.signing_key_file().is_file() {
        Ok(())
    } else {
        Err(Error::NoCa(certs.dir().to_path_buf()))
    }
}

fn expect_rotation(certs: &CertDir, want: Rotation, step: &'static str) -> Result<(), Error> {
    let now = certs.rotation();
    if now == want {
        return Ok(());
    }
    let state = match now {
        Rotation::Idle => "no rotation is in progress",
        Rotation::Begun => "a rotation has begun but its leaves are not reissued yet",
        Rotation::Reissued => "a rotation has reissued its leaves but still trusts the old CA",
    };
    Err(Error::RotationOrder {
        step,
        state,
        next: now.next_step(),
    })
}

fn concat(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = a.to_vec();
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.extend_from_slice(b);
    out
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn rename(from: &Path, to: &Path) -> Result<(), Error> {
    fs::rename(from, to).map_err(|source| Error::Io {
        path: to.to_path_buf(),
        source,
    })
}

/// Creates `dir` (and parents) and makes it 0700.
fn make_private_dir(dir: &Path) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(io)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)
}

/// Writes `bytes` to `path` 0600, atomically: a temporary file in the same directory, synced,
/// then renamed over `path`.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{name}.{}.{:08x}.tmp",
        std::process::id(),
        fastrand::u32(..)
    ));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// Reads the fields [`CertInfo`] holds from an X.509 certificate's DER.
///
/// A small walk of the structure RFC 5280 §4.1 fixes, enough for certificates this module and
/// other CAs write; anything unexpected is an error naming the field, never a panic.
pub fn inspect(der: &[u8]) -> Result<CertInfo, &'static str> {
    let (cert, _) = der::expect(der, der::SEQUENCE, "certificate")?;
    let (tbs, _) = der::expect(cert, der::SEQUENCE, "tbsCertificate")?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = der::next(rest, "version")?.2;
    }
    let (_, rest) = der::expect(rest, der::INTEGER, "serialNumber")?;
    let (_, rest) = der::expect(rest, der::SEQUENCE, "signature")?;
    let (issuer, rest) = der::expect(rest, der::SEQUENCE, "issuer")?;
    let (validity, rest) = der::expect(rest, der::SEQUENCE, "validity")?;
    let (subject, mut rest) = der::expect(rest, der::SEQUENCE, "subject")?;
    let (tag, before, after) = der::next(validity, "notBefore")?;
    let not_before = der::time(tag, before)?;
    let (tag, after, _) = der::next(after, "notAfter")?;
    let not_after = der::time(tag, after)?;
    let mut info = CertInfo {
        subject_cn: der::common_name(subject)?,
        issuer_cn: der::common_name(issuer)?,
        not_before,
        not_after,
        dns_names: Vec::new(),
        ip_addresses: Vec::new(),
        is_ca: false,
    };
    while !rest.is_empty() {
        let (tag, body, after) = der::next(rest, "extensions")?;
        rest = after;
        if tag != 0xa3 {
            continue;
        }
        let (mut exts, _) = der::expect(body, der::SEQUENCE, "extensions")?;
        while !exts.is_empty() {
            let (ext, after) = der::expect(exts, der::SEQUENCE, "extension")?;
            exts = after;
            let (oid, mut value) = der::expect(ext, der::OID, "extension id")?;
            if value.first() == Some(&der::BOOLEAN) {
                value = der::next(value, "critical")?.2;
            }
            let (value, _) = der::expect(value, der::OCTET_STRING, "extension value")?;
            match oid {
                [0x55, 0x1d, 0x11] => der::subject_alt_names(value, &mut info)?,
                [0x55, 0x1d, 0x13] => {
                    let (bc, _) = der::expect(value, der::SEQUENCE, "basicConstraints")?;
                    info.is_ca = bc.len() >= 3 && bc[0] == der::BOOLEAN && bc[2] != 0;
                }
                _ => {}
            }
        }
    }
    Ok(info)
}

/// Just enough DER to read a certificate's names and dates.
mod der {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::CertInfo;

    pub(super) const BOOLEAN: u8 = 0x01;
    pub(super) const INTEGER: u8 = 0x02;
    pub(super) const OCTET_STRING: u8 = 0x04;
    pub(super) const OID: u8 = 0x06;
    pub(super) const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const UTC_TIME: u8 = 0x17;
    const GENERALIZED_TIME: u8 = 0x18;
    const COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];

    /// Splits one TLV off `input`: (tag, contents, rest).
    pub(super) fn next<'a>(
        input: &'a [u8],
        what: &'static str,
    ) -> Result<(u8, &'a [u8], &'a [u8]), &'static str> {
        let (&tag, input) = input.split_first().ok_or(what)?;
        let (&first, mut input) = input.split_first().ok_or(what)?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || input.len() < n {
                return Err(what);
            }
            let (bytes, rest) = input.split_at(n);
            input = rest;
            bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
        };
        if input.len() < len {
            return Err(what);
        }
        let (body, rest) = input.split_at(len);
        Ok((tag, body, rest))
    }

    /// Like [`next`], insisting on `tag`: (contents, rest).
    pub(super) fn expect<'a>(
        input: &'a [u8],
        tag: u8,
        what: &'static str,
    ) -> Result<(&'a [u8], &'a [u8]), &'static str> {
        match next(input, what)? {
            (t, body, rest) if t == tag => Ok((body, rest)),
            _ => Err(what),
        }
    }

    /// The first common name in a Name (empty when there is none).
    pub(super) fn common_name(mut name: &[u8]) -> Result<String, &'static str> {
        while !name.is_empty() {
            let (set, rest) = expect(name, SET, "name")?;
            name = rest;
            let (attr, _) = expect(set, SEQUENCE, "name attribute")?;
            let (oid, value) = expect(attr, OID, "name attribute type")?;
            if oid == COMMON_NAME {
                let (_, text, _) = next(value, "common name")?;
                return Ok(String::from_utf8_lossy(text).into_owned());
            }
        }
        Ok(String::new())
    }

    pub(super) fn subject_alt_names(value: &[u8], info: &mut CertInfo) -> Result<(), &'static str> {
        let (mut names, _) = expect(value, SEQUENCE, "subjectAltName")?;
        while !names.is_empty() {
            let (tag, body, rest) = next(names, "subjectAltName entry")?;
            names = rest;
            match (tag, body.len()) {
                (0x82, _) => info
                    .dns_names
                    .push(String::from_utf8_lossy(body).into_owned()),
                (0x87, 4) => {
                    let mut b = [0u8; 4];
                    b.copy_from_slice(body);
                    info.ip_addresses.push(IpAddr::V4(Ipv4Addr::from(b)));
                }
                (0x87, 16) => {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(body);
                    info.ip_addresses.push(IpAddr::V6(Ipv6Addr::from(b)));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A UTCTime or GeneralizedTime (`...Z`) as UNIX seconds.
    pub(super) fn time(tag: u8, body: &[u8]) -> Result<i64, &'static str> {
        let text = std::str::from_utf8(body).map_err(|_| "time")?;
        let text = text.strip_suffix('Z').ok_or("time zone")?;
        let (year, rest) = match tag {
            UTC_TIME if text.len() == 12 => {
                let yy: i64 = text[..2].parse().map_err(|_| "year")?;
                (if yy < 50 { 2000 + yy } else { 1900 + yy }, &text[2..])
            }
            GENERALIZED_TIME if text.len() == 14 => {
                (text[..4].parse().map_err(|_| "year")?, &text[4..])
            }
            _ => return Err("time"),
        };
        let field = |i: usize| -> Result<i64, &'static str> {
            rest.get(i..i + 2)
                .and_then(|s| s.parse().ok())
                .ok_or("time")
        };
        let (month, day) = (field(0)?, field(2)?);
        let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
            return Err("date");
        }
        Ok(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_parsing_agrees_with_the_time_crate() {
        let t = der::time(0x17, b"261207074500Z").unwrap();
        let expected = time::macros_free_date(2026, 12, 7, 7, 45, 0);
        assert_eq!(t, expected);
        let g = der::time(0x18, b"20500101000000Z").unwrap();
        assert_eq!(g, time::macros_free_date(2050, 1, 1, 0, 0, 0));
        assert!(der::time(0x17, b"2612070745Z").is_err());
        assert!(der::time(0x18, b"20501301000000Z").is_err());
    }

    mod time {
        pub fn macros_free_date(y: i32, mo: u8, d: u8, h: u8, mi: u8, s: u8) -> i64 {
            let month = ::time::Month::try_from(mo).unwrap();
            let date = ::time::Date::from_calendar_date(y, month, d).unwrap();
            date.with_hms(h, mi, s)
                .unwrap()
                .assume_utc()
                .unix_timestamp()
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for input in [
            &b""[..],
            b"\x30",
            b"\x30\x84\xff\xff\xff\xff",
            b"\x30\x02\x30\x00",
            b"\x04\x00",
        ] {
            assert!(inspect(input).is_err());
        }
    }

    #[test]
    fn names_that_are_not_hosts_or_addresses_are_refused() {
        assert!(san("cell-1.example.com").is_ok());
        assert!(san("127.0.0.1").is_ok());
        assert!(san("::1").is_ok());
        assert!(matches!(san("a b"), Err(Error::BadName(_))));
        assert!(matches!(san(""), Err(Error::BadName(_))));
    }
}
