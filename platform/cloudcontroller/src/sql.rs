//! The one SQL layer the cloud controller's queries run on, over SQLite (the micro cloud's
//! default, through rusqlite) or PostgreSQL (Cloud Foundry's CCDB, through the synchronous
//! `postgres` client, which fits [`crate::db::Db::run`]'s blocking threads).
//!
//! Its surface is the part of rusqlite's the queries use (`Connection::execute`, `query_row`,
//! `prepare` + `query_map`, `transaction`, `params!`, `Row::get`, `OptionalExtension`), so a
//! query is written once, in SQLite's dialect restricted to what PostgreSQL also accepts, and
//! [`to_postgres`] translates the few differences at run time:
//! - placeholders `?N` (and bare `?`) become `$N`, and one tested with `IS NULL` (the optional
//!   filters, `?1 IS NULL OR name = ?1`) `CAST($N AS TEXT)`: PostgreSQL types a placeholder by
//!   its first use, and `IS NULL` says nothing;
//! - `INSERT OR IGNORE INTO …` becomes `INSERT INTO … ON CONFLICT DO NOTHING`;
//! - `INTEGER` becomes `BIGINT` (SQLite's integers are 64-bit) and
//!   `INTEGER PRIMARY KEY AUTOINCREMENT` becomes `BIGSERIAL PRIMARY KEY`;
//! - `rowid` (only ever a tie-breaker after `created_at`) becomes `ctid`.
//!
//! Values cross as [`Value`] (SQLite's five storage classes): an integer column read as `bool`
//! is non-zero, a `bool` written to PostgreSQL's `BIGINT` column is 0 or 1, so both backends
//! store the same rows. Invariant: nothing here panics on a value of an unexpected type; it is
//! an [`Error::Type`] naming the column.
//!
//! [`PgTarget`] parses a PostgreSQL URL, TLS included (libpq's `sslrootcert` and `sslmode`):
//! with a CA named, a connection is TLS with the server's certificate and host name checked,
//! or it is not made.

use std::cell::RefCell;
use std::fmt;

use postgres::types::{IsNull, Type};

/// What a query can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `query_row` found nothing (`optional()` turns it into `None`).
    #[error("the query returned no rows")]
    NoRows,
    /// The database cannot be reached now; the next call reconnects.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// A column held a value of another type than the code reads.
    #[error("column {index} holds {found}, not {wanted}")]
    Type {
        index: usize,
        found: &'static str,
        wanted: &'static str,
    },
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Postgres(String),
}

impl From<postgres::Error> for Error {
    fn from(e: postgres::Error) -> Self {
        // A closed connection, an I/O error (no SQLSTATE) or SQLSTATE class 08 (connection
        // exception) / 57P (the server shutting down) means "come back later", not a bug.
        let lost = e.is_closed()
            || e.as_db_error().is_none_or(|db| {
                let code = db.code().code();
                code.starts_with("08") || code.starts_with("57P")
            });
        if lost {
            Self::Unavailable(e.to_string())
        } else {
            // The server's message and detail, not just "db error".
            let text = e
                .as_db_error()
                .map_or_else(|| e.to_string(), |db| db.to_string());
            Self::Postgres(text)
        }
    }
}

/// `Result` with this module's [`Error`].
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// Which database a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// One value in a row or a parameter: SQLite's storage classes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Self::Null => "NULL",
            Self::Integer(_) => "an integer",
            Self::Real(_) => "a real",
            Self::Text(_) => "text",
            Self::Blob(_) => "a blob",
        }
    }
}

/// A value a query can bind.
pub(crate) trait ToSql {
    fn to_value(&self) -> Value;
}

impl<T: ToSql + ?Sized> ToSql for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}

impl<T: ToSql> ToSql for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToSql::to_value)
    }
}

impl ToSql for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}

impl ToSql for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_owned())
    }
}

impl ToSql for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}

impl ToSql for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}

impl ToSql for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}

impl ToSql for bool {
    fn to_value(&self) -> Value {
        Value::Integer(i64::from(*self))
    }
}

impl ToSql for f64 {
    fn to_value(&self) -> Value {
        Value::Real(*self)
    }
}

macro_rules! to_sql_int {
    ($($t:ty),*) => {$(
        impl ToSql for $t {
            fn to_value(&self) -> Value {
                // Beyond i64 (a u64 or usize over 2^63) saturates, as no count here gets there.
                Value::Integer(i64::try_from(*self).unwrap_or(i64::MAX))
            }
        }
    )*};
}
to_sql_int!(i8, i16, i32, i64, u8, u16, u32, u64, usize);

/// A value a row's column can be read as.
pub(crate) trait FromSql: Sized {
    fn from_value(value: Value, index: usize) -> Result<Self>;
}

fn mismatch<T>(value: &Value, index: usize, wanted: &'static str) -> Result<T> {
    Err(Error::Type {
        index,
        found: value.kind(),
        wanted,
    })
}

impl<T: FromSql> FromSql for Option<T> {
    fn from_value(value: Value, index: usize) -> Result<Self> {
        match value {
            Value::Null => Ok(None),
            other => T::from_value(other, index).map(Some),
        }
    }
}

impl FromSql for Value {
    fn from_value(value: Value, _: usize) -> Result<Self> {
        Ok(value)
    }
}

impl FromSql for String {
    fn from_value(value: Value, index: usize) -> Result<Self> {
        match value {
            Value::Text(s) => Ok(s),
            other => mismatch(&other, index, "text"),
        }
    }
}

impl FromSql for Vec<u8> {
    fn from_value(value: Value, index: usize) -> Result<Self> {
        match value {
            Value::Blob(b) => Ok(b),
            Value::Text(s) => Ok(s.into_bytes()),
            other => mismatch(&other, index, "a blob"),
        }
    }
}

impl FromSql for bool {
    fn from_value(value: Value, index: usize) -> Result<Self> {
        i64::from_value(value, index).map(|i| i != 0)
    }
}

impl FromSql for f64 {
    fn from_value(value: Value, index: usize) -> Result<Self> {
        match value {
            Value::Real(f) => Ok(f),
            #[expect(
                clippy::cast_precision_loss,
                reason = "SQLite reads an integer as a real the same way"
            )]
            Value::Integer(i) => Ok(i as f64),
            other => mismatch(&other, index, "a real"),
        }
    }
}

macro_rules! from_sql_int {
    ($($t:ty),*) => {$(
        impl FromSql for $t {
            fn from_value(value: Value, index: usize) -> Result<Self> {
                match value {
                    Value::Integer(i) => <$t>::try_from(i).map_err(|_| Error::Type {
                        index,
                        found: "an integer out of range",
                        wanted: stringify!($t),
                    }),
                    other => mismatch(&other, index, stringify!($t)),
                }
            }
        }
    )*};
}
from_sql_int!(i8, i16, i32, i64, u8, u16, u32, u64, usize);

/// What a statement binds: `params![…]`, an array of one type, or `()`.
pub(crate) trait Params {
    fn into_values(self) -> Vec<Value>;
}

impl Params for () {
    fn into_values(self) -> Vec<Value> {
        Vec::new()
    }
}

impl Params for &[&dyn ToSql] {
    fn into_values(self) -> Vec<Value> {
        self.iter().map(|p| p.to_value()).collect()
    }
}

impl<const N: usize> Params for &[&dyn ToSql; N] {
    fn into_values(self) -> Vec<Value> {
        self.iter().map(|p| p.to_value()).collect()
    }
}

impl Params for Vec<Value> {
    fn into_values(self) -> Vec<Value> {
        self
    }
}

impl Params for [&dyn ToSql; 0] {
    fn into_values(self) -> Vec<Value> {
        Vec::new()
    }
}

macro_rules! params_array {
    ($($n:literal),*) => {$(
        impl<T: ToSql> Params for [T; $n] {
            fn into_values(self) -> Vec<Value> {
                self.iter().map(ToSql::to_value).collect()
            }
        }
    )*};
}
params_array!(1, 2, 3, 4, 5, 6, 7, 8);

/// Parameters of mixed types, as rusqlite's `params!`.
macro_rules! params {
    () => { () };
    ($($p:expr),+ $(,)?) => {
        &[$(&$p as &dyn $crate::sql::ToSql),+] as &[&dyn $crate::sql::ToSql]
    };
}
pub(crate) use params;

/// One row, read into values (so a row outlives nothing it borrowed from the backend).
#[derive(Debug)]
pub(crate) struct Row<'r> {
    values: &'r [Value],
}

/// A column position (rusqlite's `get::<_, T>(i)` shape).
pub(crate) trait RowIndex {
    fn position(self) -> usize;
}

impl RowIndex for usize {
    fn position(self) -> usize {
        self
    }
}

impl Row<'_> {
    /// Column `index` as `T`.
    pub(crate) fn get<I: RowIndex, T: FromSql>(&self, index: I) -> Result<T> {
        let index = index.position();
        let value = self.values.get(index).cloned().ok_or(Error::Type {
            index,
            found: "no such column",
            wanted: "a column",
        })?;
        T::from_value(value, index)
    }

    /// The first columns as a tuple, each by its position: one reader instead of a hand-numbered
    /// `get(i)` per field, so a field cannot read its neighbour's column.
    pub(crate) fn columns<T: FromRow>(&self) -> Result<T> {
        T::read(self)
    }
}

/// A tuple of the first columns of a row ([`Row::columns`]).
pub(crate) trait FromRow: Sized {
    fn read(row: &Row<'_>) -> Result<Self>;
}

macro_rules! tuple_from_row {
    ($($t:ident $i:tt),+) => {
        impl<$($t: FromSql),+> FromRow for ($($t,)+) {
            fn read(row: &Row<'_>) -> Result<Self> {
                Ok(($(row.get($i)?,)+))
            }
        }
    };
}

tuple_from_row!(A 0, B 1);
tuple_from_row!(A 0, B 1, C 2);
tuple_from_row!(A 0, B 1, C 2, D 3);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11, M 12);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11, M 12, N 13);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11, M 12, N 13, O 14);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11, M 12, N 13, O 14, P 15);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11, M 12, N 13, O 14, P 15, Q 16);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11, M 12, N 13, O 14, P 15, Q 16, R 17);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11, M 12, N 13, O 14, P 15, Q 16, R 17, S 18);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11, M 12, N 13, O 14, P 15, Q 16, R 17, S 18, T 19);

/// A row type read by one SELECT with its joins: a lookup by guid and a filtered list read
/// the same columns the same way.
pub(crate) trait Table: Sized {
    /// Columns and joins; callers append `WHERE …` / `ORDER BY …`.
    const SELECT: &'static str;
    fn from_row(r: &Row<'_>) -> Result<Self>;
}

/// [`Table`] for a struct whose fields are the SELECT's columns in order (plus fields set to a
/// constant after `;`), so a plain table is declared by its query and field list alone.
macro_rules! table {
    ($ty:ty, $select:expr, { $($field:ident),+ $(; $($fixed:ident: $value:expr),+)? }) => {
        impl $crate::sql::Table for $ty {
            const SELECT: &'static str = $select;

            fn from_row(row: &$crate::sql::Row<'_>) -> $crate::sql::Result<Self> {
                let ($($field,)+) = row.columns()?;
                Ok(Self { $($field,)+ $($($fixed: $value),+)? })
            }
        }
    };
}

pub(crate) use table;

/// Every row of `sql`, each read as a tuple of its columns ([`Row::columns`]).
pub(crate) fn rows<T: FromRow>(c: &Connection, sql: &str, params: impl Params) -> Result<Vec<T>> {
    let mut stmt = c.prepare(sql)?;
    let rows = stmt.query_map(params, |r| r.columns())?;
    rows.collect()
}

/// The row `SELECT … tail` finds, if any.
pub(crate) fn one<T: Table>(c: &Connection, tail: &str, params: impl Params) -> Result<Option<T>> {
    c.query_row(&format!("{} {tail}", T::SELECT), params, T::from_row)
        .optional()
}

/// Every row `SELECT … tail` finds, in its order.
pub(crate) fn all<T: Table>(c: &Connection, tail: &str, params: impl Params) -> Result<Vec<T>> {
    let mut stmt = c.prepare(&format!("{} {tail}", T::SELECT))?;
    let rows = stmt.query_map(params, T::from_row)?;
    rows.collect()
}

/// `query_row`'s "no rows" as `None`.
pub(crate) trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(Error::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A PostgreSQL URL parsed for the client, with the TLS it asks for.
///
/// TLS follows libpq's URL parameters: `sslrootcert=PATH` names the CA bundle that signed the
/// server's certificate, and with it the connection is TLS or nothing (`sslmode=require`,
/// `verify-ca` or `verify-full`, or no `sslmode`), the server's certificate checked against
/// that CA and against the URL's host (as `verify-full` does, whatever the mode says: a
/// certificate for another host is refused). `sslmode=require` without `sslrootcert` is
/// refused rather than encrypting to a server nobody checked. Without either, the client
/// speaks plain PostgreSQL as before.
pub(crate) struct PgTarget {
    pub(crate) config: postgres::Config,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl PgTarget {
    /// Parses `url`; the error says what to write instead.
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut kept = Vec::new();
        let (mut mode, mut root) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("sslrootcert", path)) => root = Some(path.to_owned()),
                Some(("sslmode", value)) => mode = Some(value.to_owned()),
                _ => kept.push(pair),
            }
        }
        let tls = match (mode.as_deref(), root) {
            (None | Some("disable" | "prefer"), None) => None,
            (None | Some("require" | "verify-ca" | "verify-full"), Some(path)) => {
                Some(tls::client_config(std::path::Path::new(&path))?)
            }
            (Some("require" | "verify-ca" | "verify-full"), None) => {
                return Err("asks for TLS (sslmode) but names no CA: add \
                     sslrootcert=PATH, the CA bundle that signed the server's certificate"
                    .to_owned());
            }
            (Some("disable" | "prefer"), Some(_)) => {
                return Err(
                    "names a CA (sslrootcert) with an sslmode that allows plain \
                     connections: use sslmode=verify-full, or drop sslmode"
                        .to_owned(),
                );
            }
            (Some(other), _) => {
                return Err(format!(
                    "has sslmode={other}; use disable, require, verify-ca or verify-full"
                ));
            }
        };
        if tls.is_some() {
            kept.push("sslmode=require");
        } else if let Some(mode) = &mode {
            // disable or prefer: the client's own meaning (prefer never gets TLS without a CA).
            if mode == "disable" {
                kept.push("sslmode=disable");
            }
        }
        let url = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let config = url.parse::<postgres::Config>().map_err(|e| e.to_string())?;
        Ok(Self { config, tls })
    }

    /// Connects with the parsed settings.
    pub(crate) fn connect(&self) -> Result<postgres::Client, postgres::Error> {
        match &self.tls {
            None => self.config.connect(postgres::NoTls),
            Some(config) => self.config.connect(tls::MakeRustls(config.clone())),
        }
    }
}

/// TLS to PostgreSQL with rustls (ring, TLS 1.2 and 1.3): the `tokio-postgres` connector
/// traits over `tokio-rustls`.
mod tls {
    use std::future::Future;
    use std::io;
    use std::path::Path;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    /// A client config trusting only the CAs in `bundle`.
    pub(super) fn client_config(bundle: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
        let shown = bundle.display();
        let pem =
            std::fs::read(bundle).map_err(|e| format!("cannot read sslrootcert {shown}: {e}"))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("sslrootcert {shown} is not PEM: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("sslrootcert {shown} holds an unusable CA: {e}"))?;
        }
        if roots.is_empty() {
            return Err(format!("sslrootcert {shown} holds no certificate"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// Makes one [`Connect`] per connection, for the host it dials.
    #[derive(Clone)]
    pub(super) struct MakeRustls(pub(super) Arc<rustls::ClientConfig>);

    impl<S> MakeTlsConnect<S> for MakeRustls
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        type Stream = Stream<S>;
        type TlsConnect = Connect;
        type Error = rustls::pki_types::InvalidDnsNameError;

        fn make_tls_connect(&mut self, host: &str) -> Result<Connect, Self::Error> {
            Ok(Connect {
                config: self.0.clone(),
                name: ServerName::try_from(host.to_owned())?,
            })
        }
    }

    /// The handshake with one server, whose certificate must name `name`.
    pub(super) struct Connect {
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
    }

    type Handshake<S> = Pin<Box<dyn Future<Output = io::Result<Stream<S>>> + Send>>;

    impl<S> TlsConnect<S> for Connect
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        type Stream = Stream<S>;
        type Error = io::Error;
        type Future = Handshake<S>;

        fn connect(self, stream: S) -> Handshake<S> {
            Box::pin(async move {
                tokio_rustls::TlsConnector::from(self.config)
                    .connect(self.name, stream)
                    .await
                    .map(Stream)
            })
        }
    }

    /// An established TLS connection.
    pub(super) struct Stream<S>(tokio_rustls::client::TlsStream<S>);

    impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for Stream<S> {
        fn channel_binding(&self) -> ChannelBinding {
            // No SCRAM channel binding: the server's certificate is already checked here.
            ChannelBinding::none()
        }
    }
}

/// A connection to either backend. Methods take `&self` as rusqlite's do; the PostgreSQL
/// client (which wants `&mut`) sits in a `RefCell`, safe because a connection is only ever
/// used by the one thread holding [`crate::db::Db`]'s mutex.
pub(crate) enum Connection {
    Sqlite(rusqlite::Connection),
    Postgres(RefCell<PgClient>),
}

/// The PostgreSQL client, dropped off the async runtime: closing it blocks on the client's
/// own runtime, which a tokio worker thread (where the last handle may go) must not do.
pub(crate) struct PgClient(Option<postgres::Client>);

impl PgClient {
    pub(crate) fn new(client: postgres::Client) -> Self {
        Self(Some(client))
    }

    fn get(&mut self) -> Result<&mut postgres::Client> {
        self.0
            .as_mut()
            .ok_or_else(|| Error::Unavailable("the connection is closed".to_owned()))
    }

    fn is_closed(&self) -> bool {
        self.0.as_ref().is_none_or(postgres::Client::is_closed)
    }

    /// Runs `f` on the client; a call that finds the connection lost ends the client (the
    /// sync client keeps reporting itself open after its server went), so the next
    /// [`crate::db::Db::run`] reconnects.
    fn call<T>(
        &mut self,
        f: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error>,
    ) -> Result<T> {
        let out = f(self.get()?).map_err(Error::from);
        if matches!(out, Err(Error::Unavailable(_)))
            && let Some(client) = self.0.take()
        {
            drop_off_runtime(client);
        }
        out
    }
}

/// Drops `client` where blocking is allowed: closing it blocks on its own runtime.
fn drop_off_runtime(client: postgres::Client) {
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::spawn(move || drop(client));
    } else {
        drop(client);
    }
}

impl Drop for PgClient {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            drop_off_runtime(client);
        }
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.backend() {
            Backend::Sqlite => "Connection(SQLite)",
            Backend::Postgres => "Connection(PostgreSQL)",
        })
    }
}

impl Connection {
    pub(crate) fn backend(&self) -> Backend {
        match self {
            Self::Sqlite(_) => Backend::Sqlite,
            Self::Postgres(_) => Backend::Postgres,
        }
    }

    /// Whether the connection is known to be gone (PostgreSQL only; SQLite's never goes).
    pub(crate) fn is_closed(&self) -> bool {
        match self {
            Self::Sqlite(_) => false,
            Self::Postgres(client) => client.try_borrow().is_ok_and(|c| c.is_closed()),
        }
    }

    /// Runs one statement; the number of rows it changed.
    pub(crate) fn execute(&self, sql: &str, params: impl Params) -> Result<usize> {
        let values = params.into_values();
        match self {
            Self::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                Ok(stmt.execute(rusqlite::params_from_iter(values.iter().map(sqlite_value)))?)
            }
            Self::Postgres(client) => {
                let sql = to_postgres(sql);
                let refs = pg_params(&values);
                let n = client
                    .borrow_mut()
                    .call(|c| c.execute(sql.as_str(), &refs))?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            }
        }
    }

    /// Runs several statements without parameters (migrations).
    pub(crate) fn execute_batch(&self, sql: &str) -> Result<()> {
        match self {
            Self::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Self::Postgres(client) => Ok(client
                .borrow_mut()
                .get()?
                .batch_execute(&to_postgres(sql))?),
        }
    }

    /// The first row `sql` finds, mapped by `f`; [`Error::NoRows`] when there is none.
    pub(crate) fn query_row<T, F>(&self, sql: &str, params: impl Params, f: F) -> Result<T>
    where
        F: FnOnce(&Row<'_>) -> Result<T>,
    {
        let rows = self.rows(sql, params.into_values(), Some(1))?;
        let first = rows.first().ok_or(Error::NoRows)?;
        f(&Row { values: first })
    }

    pub(crate) fn prepare(&self, sql: &str) -> Result<Statement<'_>> {
        Ok(Statement {
            conn: self,
            sql: sql.to_owned(),
        })
    }

    /// Begins a transaction, rolled back unless [`Transaction::commit`] is called.
    pub(crate) fn transaction(&mut self) -> Result<Transaction<'_>> {
        self.execute_batch("BEGIN")?;
        Ok(Transaction {
            conn: self,
            open: true,
        })
    }

    /// Every row `sql` finds (at most `limit`), as values.
    fn rows(&self, sql: &str, values: Vec<Value>, limit: Option<usize>) -> Result<Vec<Vec<Value>>> {
        let limit = limit.unwrap_or(usize::MAX);
        match self {
            Self::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let width = stmt.column_count();
                let mut rows =
                    stmt.query(rusqlite::params_from_iter(values.iter().map(sqlite_value)))?;
                let mut out = Vec::new();
                while out.len() < limit {
                    let Some(row) = rows.next()? else { break };
                    let mut cols = Vec::with_capacity(width);
                    for i in 0..width {
                        cols.push(from_sqlite(row.get_ref(i)?));
                    }
                    out.push(cols);
                }
                Ok(out)
            }
            Self::Postgres(client) => {
                let sql = to_postgres(sql);
                let refs = pg_params(&values);
                let rows = client.borrow_mut().call(|c| c.query(sql.as_str(), &refs))?;
                rows.iter()
                    .take(limit)
                    .map(|row| (0..row.len()).map(|i| from_postgres(row, i)).collect())
                    .collect()
            }
        }
    }
}

/// A statement to run (possibly many times); rusqlite's shape, prepared on each run (SQLite
/// through its statement cache, PostgreSQL by the server).
#[derive(Debug)]
pub(crate) struct Statement<'c> {
    conn: &'c Connection,
    sql: String,
}

impl Statement<'_> {
    /// Every row, each mapped by `f`.
    pub(crate) fn query_map<T, F>(
        &mut self,
        params: impl Params,
        mut f: F,
    ) -> Result<std::vec::IntoIter<Result<T>>>
    where
        F: FnMut(&Row<'_>) -> Result<T>,
    {
        let rows = self.conn.rows(&self.sql, params.into_values(), None)?;
        let mapped: Vec<Result<T>> = rows.iter().map(|values| f(&Row { values })).collect();
        Ok(mapped.into_iter())
    }

    pub(crate) fn execute(&mut self, params: impl Params) -> Result<usize> {
        self.conn.execute(&self.sql, params)
    }
}

/// An open transaction; derefs to its connection so every query function takes it.
#[derive(Debug)]
pub(crate) struct Transaction<'c> {
    conn: &'c mut Connection,
    open: bool,
}

impl Transaction<'_> {
    pub(crate) fn commit(mut self) -> Result<()> {
        self.open = false;
        self.conn.execute_batch("COMMIT")
    }
}

impl std::ops::Deref for Transaction<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if self.open {
            // A failed rollback leaves nothing to do here: SQLite ends the transaction with
            // the connection's next BEGIN error, PostgreSQL's connection is then closed and
            // reconnected.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

fn sqlite_value(value: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match value {
        Value::Null => V::Null,
        Value::Integer(i) => V::Integer(*i),
        Value::Real(f) => V::Real(*f),
        Value::Text(s) => V::Text(s.clone()),
        Value::Blob(b) => V::Blob(b.clone()),
    }
}

fn from_sqlite(value: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef as V;
    match value {
        V::Null => Value::Null,
        V::Integer(i) => Value::Integer(i),
        V::Real(f) => Value::Real(f),
        V::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        V::Blob(b) => Value::Blob(b.to_vec()),
    }
}

fn from_postgres(row: &postgres::Row, index: usize) -> Result<Value> {
    let ty = row.columns().get(index).map(|c| c.type_().clone());
    let get_err = |e: postgres::Error| Error::Postgres(format!("column {index}: {e}"));
    let value = match ty {
        Some(Type::INT8) => row
            .try_get::<_, Option<i64>>(index)
            .map_err(get_err)?
            .map(Value::Integer),
        Some(Type::INT4) => row
            .try_get::<_, Option<i32>>(index)
            .map_err(get_err)?
            .map(|i| Value::Integer(i.into())),
        Some(Type::INT2) => row
            .try_get::<_, Option<i16>>(index)
            .map_err(get_err)?
            .map(|i| Value::Integer(i.into())),
        Some(Type::BOOL) => row
            .try_get::<_, Option<bool>>(index)
            .map_err(get_err)?
            .map(|b| Value::Integer(b.into())),
        Some(Type::FLOAT8) => row
            .try_get::<_, Option<f64>>(index)
            .map_err(get_err)?
            .map(Value::Real),
        Some(Type::FLOAT4) => row
            .try_get::<_, Option<f32>>(index)
            .map_err(get_err)?
            .map(|f| Value::Real(f.into())),
        Some(Type::BYTEA) => row
            .try_get::<_, Option<Vec<u8>>>(index)
            .map_err(get_err)?
            .map(Value::Blob),
        Some(Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN) => row
            .try_get::<_, Option<String>>(index)
            .map_err(get_err)?
            .map(Value::Text),
        other => {
            return Err(Error::Postgres(format!(
                "column {index} has type {}, which the cloud controller does not read; \
                 cast it to BIGINT or TEXT in the query",
                other.map_or_else(|| "(none)".to_owned(), |t| t.to_string())
            )));
        }
    };
    Ok(value.unwrap_or(Value::Null))
}

fn pg_params(values: &[Value]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    values
        .iter()
        .map(|v| v as &(dyn postgres::types::ToSql + Sync))
        .collect()
}

/// Values go to PostgreSQL as the type the server inferred for the placeholder: an integer
/// for a `BIGINT`, `INTEGER`, `BOOLEAN` or text column, text parsed for a number column.
impl postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Self::Null => Ok(IsNull::Yes),
            Self::Integer(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                #[expect(clippy::cast_precision_loss, reason = "as SQLite compares them")]
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                _ => i.to_string().to_sql_checked(ty, out),
            },
            Self::Real(f) => match *ty {
                #[expect(
                    clippy::cast_possible_truncation,
                    reason = "a real sent to a float4 column"
                )]
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                Type::FLOAT8 => f.to_sql(ty, out),
                _ => f.to_string().to_sql_checked(ty, out),
            },
            Self::Text(s) => match *ty {
                Type::INT8 => s.parse::<i64>()?.to_sql(ty, out),
                Type::INT4 => s.parse::<i32>()?.to_sql(ty, out),
                Type::BYTEA => s.as_bytes().to_sql(ty, out),
                _ => s.as_str().to_sql_checked(ty, out),
            },
            Self::Blob(b) => b.as_slice().to_sql_checked(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// SQLite's dialect as the queries write it, in PostgreSQL's (see the module doc for the
/// list). String literals pass through untouched.
pub(crate) fn to_postgres(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 32);
    let mut ignore_conflicts = false;
    let mut next_bare = 0_u32;
    let mut chars = sql.char_indices().peekable();
    while let Some((at, ch)) = chars.next() {
        match ch {
            '\'' => {
                // A literal, with '' as its escaped quote.
                out.push(ch);
                while let Some((_, c)) = chars.next() {
                    out.push(c);
                    if c == '\'' {
                        if chars.peek().is_some_and(|&(_, n)| n == '\'') {
                            if let Some((_, n)) = chars.next() {
                                out.push(n);
                            }
                        } else {
                            break;
                        }
                    }
                }
            }
            '?' => {
                let mut digits = String::new();
                while let Some(&(_, d)) = chars.peek() {
                    if !d.is_ascii_digit() {
                        break;
                    }
                    digits.push(d);
                    chars.next();
                }
                let after = chars.peek().map_or(sql.len(), |&(i, _)| i);
                if digits.is_empty() {
                    next_bare += 1;
                    digits = next_bare.to_string();
                }
                // PostgreSQL infers a placeholder's type from its first use, and `IS NULL`
                // tells it nothing: the optional filters (`?1 IS NULL OR name = ?1`) are text.
                let rest = &sql[after..];
                if starts_with_words(rest, &["IS", "NULL"])
                    || starts_with_words(rest, &["IS", "NOT", "NULL"])
                {
                    out.push_str("CAST($");
                    out.push_str(&digits);
                    out.push_str(" AS TEXT)");
                } else {
                    out.push('$');
                    out.push_str(&digits);
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut end = at + c.len_utf8();
                while let Some(&(i, n)) = chars.peek() {
                    if !(n.is_ascii_alphanumeric() || n == '_') {
                        break;
                    }
                    end = i + n.len_utf8();
                    chars.next();
                }
                let word = &sql[at..end];
                let rest = &sql[end..];
                if word.eq_ignore_ascii_case("INTEGER")
                    && starts_with_words(rest, &["PRIMARY", "KEY", "AUTOINCREMENT"])
                {
                    out.push_str("BIGSERIAL PRIMARY KEY");
                    skip_words(&mut chars, 3);
                } else if word.eq_ignore_ascii_case("INSERT")
                    && starts_with_words(rest, &["OR", "IGNORE"])
                {
                    out.push_str("INSERT");
                    skip_words(&mut chars, 2);
                    ignore_conflicts = true;
                } else if word.eq_ignore_ascii_case("INTEGER") {
                    out.push_str("BIGINT");
                } else if word.eq_ignore_ascii_case("rowid") {
                    out.push_str("ctid");
                } else {
                    out.push_str(word);
                }
            }
            c => out.push(c),
        }
    }
    if ignore_conflicts {
        let trimmed = out.trim_end().trim_end_matches(';').trim_end().len();
        out.truncate(trimmed);
        out.push_str(" ON CONFLICT DO NOTHING");
    }
    out
}

/// Whether `rest` begins (after whitespace) with `words`, separated by whitespace only.
fn starts_with_words(rest: &str, words: &[&str]) -> bool {
    let mut rest = rest;
    words.iter().all(|w| {
        let trimmed = rest.trim_start();
        if trimmed.len() == rest.len() {
            return false;
        }
        let end = trimmed
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(trimmed.len());
        rest = &trimmed[end..];
        trimmed[..end].eq_ignore_ascii_case(w)
    })
}

/// Consumes `n` words (each after its whitespace) from `chars`.
fn skip_words(chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>, n: usize) {
    for _ in 0..n {
        while chars.peek().is_some_and(|&(_, c)| c.is_whitespace()) {
            chars.next();
        }
        while chars
            .peek()
            .is_some_and(|&(_, c)| c.is_ascii_alphanumeric() || c == '_')
        {
            chars.next();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_the_dialect_differences() {
        assert_eq!(
            to_postgres("SELECT a FROM t WHERE x = ?1 AND y = ?2 OR ?1 IS NULL"),
            "SELECT a FROM t WHERE x = $1 AND y = $2 OR CAST($1 AS TEXT) IS NULL"
        );
        assert_eq!(
            to_postgres("UPDATE t SET a = ? WHERE b = ?"),
            "UPDATE t SET a = $1 WHERE b = $2"
        );
        assert_eq!(
            to_postgres("INSERT OR IGNORE INTO r (a, b) VALUES (?1, ?2)"),
            "INSERT INTO r (a, b) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        );
        assert_eq!(
            to_postgres(
                "CREATE TABLE e (\n    seq INTEGER PRIMARY KEY AUTOINCREMENT,\n    n INTEGER NOT NULL\n);\n"
            ),
            "CREATE TABLE e (\n    seq BIGSERIAL PRIMARY KEY,\n    n BIGINT NOT NULL\n);\n"
        );
        assert_eq!(
            to_postgres("SELECT guid FROM p ORDER BY created_at DESC, p.rowid DESC LIMIT ?2"),
            "SELECT guid FROM p ORDER BY created_at DESC, p.ctid DESC LIMIT $2"
        );
        // Literals are left alone: no placeholder, keyword or quote inside them changes.
        assert_eq!(
            to_postgres("SELECT 'it''s ?1 INTEGER rowid' WHERE a = ?3"),
            "SELECT 'it''s ?1 INTEGER rowid' WHERE a = $3"
        );
        // Identifiers that merely contain a keyword stay as they are.
        assert_eq!(
            to_postgres("SELECT integers, rowids FROM t"),
            "SELECT integers, rowids FROM t"
        );
    }

    #[test]
    fn values_convert_like_sqlite_reads_them() {
        assert!(bool::from_value(Value::Integer(1), 0).unwrap());
        assert!(!bool::from_value(Value::Integer(0), 0).unwrap());
        assert_eq!(Option::<String>::from_value(Value::Null, 0).unwrap(), None);
        assert_eq!(u32::from_value(Value::Integer(7), 0).unwrap(), 7);
        assert!(matches!(
            u32::from_value(Value::Integer(-1), 3),
            Err(Error::Type { index: 3, .. })
        ));
        assert!(matches!(
            String::from_value(Value::Integer(1), 2),
            Err(Error::Type { index: 2, .. })
        ));
        assert_eq!(true.to_value(), Value::Integer(1));
        assert_eq!(Some("a").to_value(), Value::Text("a".into()));
        assert_eq!(None::<i64>.to_value(), Value::Null);
    }

    #[test]
    fn runs_queries_and_transactions_on_sqlite() {
        let mut c = Connection::Sqlite(rusqlite::Connection::open_in_memory().unwrap());
        c.execute_batch("CREATE TABLE t (a TEXT PRIMARY KEY, n INTEGER NOT NULL, flag INTEGER)")
            .unwrap();
        c.execute(
            "INSERT INTO t (a, n, flag) VALUES (?1, ?2, ?3)",
            params!["x", 1_i64, true],
        )
        .unwrap();
        {
            let tx = c.transaction().unwrap();
            tx.execute("INSERT INTO t (a, n) VALUES (?1, ?2)", params!["y", 2_i64])
                .unwrap();
            // Dropped without commit: rolled back.
        }
        let tx = c.transaction().unwrap();
        tx.execute(
            "INSERT OR IGNORE INTO t (a, n) VALUES (?1, ?2)",
            params!["x", 9_i64],
        )
        .unwrap();
        tx.commit().unwrap();
        let mut stmt = c.prepare("SELECT a, n, flag FROM t ORDER BY a").unwrap();
        let rows: Vec<(String, i64, Option<bool>)> = stmt
            .query_map((), |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(rows, vec![("x".to_owned(), 1, Some(true))]);
        let none = c
            .query_row("SELECT a FROM t WHERE a = ?1", ["z"], |r| {
                r.get::<_, String>(0)
            })
            .optional()
            .unwrap();
        assert_eq!(none, None);
    }
}
