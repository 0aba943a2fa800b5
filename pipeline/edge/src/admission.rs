//! Who may open one more stream: the edge's stream caps per token, per user, and the share
//! kept for the platform's own consumers.
//!
//! Flow: a stream endpoint (`/firehose/{id}`, `/apps/{id}/stream`, `/v2/read`) verifies the
//! token, then asks [`Admission::admit`] for a [`Ticket`] before it upgrades or answers; the
//! ticket is held for as long as the stream is open and gives its slot back when dropped.
//!
//! The invariant: one tenant cannot starve the platform's own consumers. A user's token (any
//! token not minted for an OAuth2 client) may hold at most `max_streams_per_token` streams, a
//! user at most `max_streams_per_user` across all their tokens, and all users together at most
//! `max_streams - platform_reserved_streams`; the platform's own consumers (the health manager,
//! autoscaler, SLO alerter and nozzles, which read with `client_credentials` tokens from the
//! controller's `[[clients]]`, a list only the operator writes) are held only to `max_streams`,
//! so the reserved slots are always theirs. A refusal happens before the WebSocket upgrade or
//! the first SSE byte, says which limit (and config field) refused, and is counted on
//! `/metrics` as `trafficcontroller.streams_refused{reason}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::http::StatusCode;
use hydrant_auth::Claims;
use hydrant_emitter::{Counter, Registry};

use crate::api::ApiError;

/// The caps, from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caps {
    /// Every stream, everyone's (`max_streams`).
    pub(crate) max_streams: usize,
    /// Streams one user token may hold (`max_streams_per_token`).
    pub(crate) per_token: usize,
    /// Streams one user may hold across all their tokens (`max_streams_per_user`).
    pub(crate) per_user: usize,
    /// Slots users may never take, kept for client-credentials consumers
    /// (`platform_reserved_streams`).
    pub(crate) reserved: usize,
    /// Whether tokens are checked at all. Without auth every caller is the same anonymous
    /// admin, so only `max_streams` applies.
    pub(crate) per_identity: bool,
}

/// Why a stream was refused: the `reason` label of `streams_refused`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The edge is at `max_streams`.
    Full,
    /// Only reserved slots are left, and the caller is not a platform client.
    Reserved,
    /// This token holds `max_streams_per_token` streams.
    PerToken,
    /// This user holds `max_streams_per_user` streams.
    PerUser,
}

impl Refusal {
    const ALL: [Refusal; 4] = [
        Refusal::Full,
        Refusal::Reserved,
        Refusal::PerToken,
        Refusal::PerUser,
    ];

    fn label(self) -> &'static str {
        match self {
            Refusal::Full => "max_streams",
            Refusal::Reserved => "reserved_for_platform",
            Refusal::PerToken => "per_token",
            Refusal::PerUser => "per_user",
        }
    }
}

/// Streams open now, by holder. Maps hold only keys with open streams, so they are bounded by
/// `max_streams`.
#[derive(Debug, Default)]
struct Open {
    total: usize,
    /// Streams held by user tokens (everything but platform clients).
    tenants: usize,
    by_token: HashMap<String, usize>,
    by_user: HashMap<String, usize>,
}

/// The admission state every stream endpoint shares.
#[derive(Debug)]
pub(crate) struct Admission {
    caps: Caps,
    open: Arc<Mutex<Open>>,
    refused: [Counter; 4],
}

/// One admitted stream's slot; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct Ticket {
    open: Arc<Mutex<Open>>,
    /// `(token key, user key)` for a user's stream; `None` for a platform client's.
    tenant: Option<(String, String)>,
}

impl Admission {
    pub(crate) fn new(caps: Caps, registry: &Registry) -> Self {
        let refused = Refusal::ALL.map(|r| {
            registry.counter(
                "trafficcontroller.streams_refused",
                "streams refused at open, by the cap that refused them",
                &[("reason", r.label())],
            )
        });
        Self {
            caps,
            open: Arc::default(),
            refused,
        }
    }

    /// A slot for one more stream opened with `claims`, or the refusal to answer with.
    pub(crate) fn admit(&self, claims: &Claims) -> Result<Ticket, ApiError> {
        let tenant = (self.caps.per_identity && claims.client_id.is_none())
            .then(|| (token_key(claims), claims.sub.clone()));
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let refusal = self.check(&open, tenant.as_ref());
        if let Some(refusal) = refusal {
            drop(open);
            self.refused[Refusal::ALL.iter().position(|r| *r == refusal).unwrap_or(0)].inc();
            return Err(self.answer(refusal));
        }
        open.total += 1;
        if let Some((token, user)) = &tenant {
            open.tenants += 1;
            *open.by_token.entry(token.clone()).or_default() += 1;
            *open.by_user.entry(user.clone()).or_default() += 1;
        }
        Ok(Ticket {
            open: self.open.clone(),
            tenant,
        })
    }

    fn check(&self, open: &Open, tenant: Option<&(String, String)>) -> Option<Refusal> {
        let caps = self.caps;
        if open.total >= caps.max_streams {
            return Some(Refusal::Full);
        }
        let (token, user) = tenant?;
        if open.by_token.get(token).copied().unwrap_or(0) >= caps.per_token {
            return Some(Refusal::PerToken);
        }
        if open.by_user.get(user).copied().unwrap_or(0) >= caps.per_user {
            return Some(Refusal::PerUser);
        }
        if open.tenants >= caps.max_streams.saturating_sub(caps.reserved) {
            return Some(Refusal::Reserved);
        }
        None
    }

    fn answer(&self, refusal: Refusal) -> ApiError {
        let caps = self.caps;
        match refusal {
            Refusal::Full => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_streams",
                format!(
                    "this edge is at its stream limit ({} streams, max_streams); retry later or \
                     use another edge",
                    caps.max_streams
                ),
            ),
            Refusal::Reserved => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_streams",
                format!(
                    "the edge's remaining streams are reserved for the platform's own consumers \
                     ({} of {} streams, platform_reserved_streams); retry later or use another \
                     edge",
                    caps.reserved, caps.max_streams
                ),
            ),
            Refusal::PerToken => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_streams_for_token",
                format!(
                    "this token already holds {} open streams (max_streams_per_token); close one \
                     before opening another",
                    caps.per_token
                ),
            ),
            Refusal::PerUser => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_streams_for_user",
                format!(
                    "this user already holds {} open streams across their tokens \
                     (max_streams_per_user); close one before opening another",
                    caps.per_user
                ),
            ),
        }
    }
}

/// What identifies one token: its `jti`, which the cloud controller sets on every token it
/// mints; a token without one is keyed by who it names and when it was issued.
fn token_key(claims: &Claims) -> String {
    match &claims.jti {
        Some(jti) => format!("jti:{jti}"),
        None => format!("sub:{}@{}:{}", claims.sub, claims.iat, claims.exp),
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some((token, user)) = &self.tenant {
            open.tenants = open.tenants.saturating_sub(1);
            release(&mut open.by_token, token);
            release(&mut open.by_user, user);
        }
    }
}

/// One fewer stream for `key`; the key leaves the map at zero.
fn release(map: &mut HashMap<String, usize>, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: Caps = Caps {
        max_streams: 10,
        per_token: 3,
        per_user: 4,
        reserved: 4,
        per_identity: true,
    };

    fn user(sub: &str, jti: &str) -> Claims {
        let mut c = Claims::new(sub);
        c.jti = Some(jti.to_owned());
        c
    }

    fn client(id: &str, jti: &str) -> Claims {
        let mut c = user(&format!("client:{id}"), jti);
        c.client_id = Some(id.to_owned());
        c
    }

    fn admission() -> Admission {
        Admission::new(CAPS, &Registry::new("trafficcontroller", "0"))
    }

    #[test]
    fn one_token_is_capped_and_its_slots_come_back() {
        let a = admission();
        let t = user("alice", "t1");
        let held: Vec<Ticket> = (0..3).map(|_| a.admit(&t).unwrap()).collect();
        let err = a.admit(&t).unwrap_err();
        assert_eq!(err.status(), StatusCode::TOO_MANY_REQUESTS);
        drop(held);
        let _again: Vec<Ticket> = (0..3).map(|_| a.admit(&t).unwrap()).collect();
        assert_eq!(a.refused[2].get(), 1, "per_token refusals counted");
    }

    #[test]
    fn a_user_is_capped_across_tokens() {
        let a = admission();
        let mut held = Vec::new();
        for jti in ["a", "b"] {
            for _ in 0..2 {
                held.push(a.admit(&user("alice", jti)).unwrap());
            }
        }
        let err = a.admit(&user("alice", "c")).unwrap_err();
        assert_eq!(err.status(), StatusCode::TOO_MANY_REQUESTS);
        // Another user is not affected.
        held.push(a.admit(&user("bob", "d")).unwrap());
        assert_eq!(a.refused[3].get(), 1);
    }

    #[test]
    fn users_leave_the_reserved_slots_to_platform_clients() {
        let a = admission();
        let mut held = Vec::new();
        // Six users with one stream each fill the 10 - 4 slots users may take.
        for i in 0..6 {
            held.push(a.admit(&user(&format!("u{i}"), &format!("t{i}"))).unwrap());
        }
        let err = a.admit(&user("u9", "t9")).unwrap_err();
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(a.refused[1].get(), 1);
        // The platform's consumers still get in, with no per-token cap, up to max_streams.
        let platform = client("hydrant-roles", "p");
        for _ in 0..4 {
            held.push(a.admit(&platform).unwrap());
        }
        assert_eq!(
            a.admit(&platform).unwrap_err().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(a.refused[0].get(), 1);
    }

    #[test]
    fn without_auth_only_the_total_counts() {
        let a = Admission::new(
            Caps {
                per_identity: false,
                ..CAPS
            },
            &Registry::new("trafficcontroller", "0"),
        );
        let anon = user("anonymous", "same");
        let held: Vec<Ticket> = (0..10).map(|_| a.admit(&anon).unwrap()).collect();
        assert!(a.admit(&anon).is_err());
        drop(held);
        assert!(a.admit(&anon).is_ok());
    }
}
