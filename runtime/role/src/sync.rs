//! The one poison-tolerant mutex lock every role uses.
//!
//! Invariant: a panic in one task that held a lock never takes the role down with it; every
//! table behind a mutex in a role is left consistent between statements (updates are single
//! assignments or idempotent), so the data after a poisoning is still the best there is.

/// Locks `mutex`, taking the data over from a task that panicked while holding it. Defined in
/// the emitter, the lowest crate every role depends on, so it also serves the emitter itself.
pub use hydrant_emitter::lock;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

    use std::sync::{Arc, Mutex};

    #[test]
    fn a_poisoned_lock_still_yields_its_data() {
        let m = Arc::new(Mutex::new(1));
        let m2 = Arc::clone(&m);
        let _ = std::thread::spawn(move || {
            let mut g = m2.lock().unwrap();
            *g = 2;
            panic!("poison the lock");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*super::lock(&m), 2);
    }
}
