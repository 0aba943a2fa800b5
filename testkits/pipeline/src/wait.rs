//! Waiting for a condition with a deadline, for async tests: poll, and fail the test naming
//! what never happened. Time is tokio's, so a test on paused time waits in virtual time.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

/// How often [`wait_for`] polls: short enough not to slow a test down, long enough that a
/// condition doing a round trip to the role under test does not load it.
const POLL: Duration = Duration::from_millis(10);

/// What a condition polled by [`wait_for`] yields: `bool`, or `Option<T>` to hand back what it
/// found once it is there.
pub trait Condition {
    /// What [`wait_for`] returns once the condition holds.
    type Output;

    /// `Some` once the condition holds.
    fn holds(self) -> Option<Self::Output>;
}

impl Condition for bool {
    type Output = ();

    fn holds(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Condition for Option<T> {
    type Output = T;

    fn holds(self) -> Option<T> {
        self
    }
}

/// Polls `check` until it holds and returns what it yielded; fails the test, naming `what`, if
/// it still does not hold once `within` has passed.
///
/// `check` runs at least once, and once more after the deadline has passed before the test
/// fails, so a slow poll never turns a met condition into a failure.
///
/// # Panics
/// When the deadline passes: that is the test failing.
pub async fn wait_for<F, Fut>(
    within: Duration,
    what: &str,
    mut check: F,
) -> <Fut::Output as Condition>::Output
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Condition,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = check().await.holds() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what} ({within:?})"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A loopback address nothing listens on: bound to find a free port, then closed.
///
/// # Panics
/// When no loopback port can be bound.
#[must_use]
pub fn dead_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral loopback port")
}
