//! The syslog nozzle's error type. Every message that names a drain carries its masked URL.

/// What can go wrong in the syslog nozzle.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config value is wrong (`field` is its dotted path), or the firehose or the runtime
    /// refused: the cases every nozzle shares.
    #[error(transparent)]
    Core(#[from] hydrant_nozzle_core::Error),
    /// Talking to a drain failed.
    #[error("drain {url}: {source}")]
    Drain {
        /// The masked URL.
        url: String,
        /// Why.
        source: std::io::Error,
    },
    /// The drain resolves only to addresses the nozzle may not reach (loopback, private,
    /// link-local) and the operator has not allowed them.
    #[error("drain {url}: {message}")]
    Refused {
        /// The masked URL.
        url: String,
        /// What was refused and which setting allows it.
        message: String,
    },
    /// The TLS handshake with a drain failed (certificate, hostname, protocol).
    #[error("drain {url}: {message}")]
    Tls {
        /// The masked URL.
        url: String,
        /// What the handshake refused, in words.
        message: String,
    },
    /// An `https://` drain answered 429 or 5xx: worth retrying.
    #[error("drain {url}: HTTP {status}; retrying")]
    Http {
        /// The masked URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// An `https://` drain refused a batch with a 4xx other than 429: retrying would not help.
    #[error(
        "drain {url}: HTTP {status}; the drain refused the batch (check its URL and credentials)"
    )]
    Rejected {
        /// The masked URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The cloud controller could not be asked for drains or told their status.
    #[error("platform API: {0}")]
    Api(String),
}

impl Error {
    /// The drain was refused before any connection (private address not allowed).
    #[must_use]
    pub fn is_refused(&self) -> bool {
        matches!(self, Self::Refused { .. })
    }

    /// The drain refused the data itself; sending it again would be refused again.
    #[must_use]
    pub fn is_rejected(&self) -> bool {
        matches!(self, Self::Rejected { .. })
    }
}

hydrant_nozzle_core::nozzle_error_conversions!(Error);
