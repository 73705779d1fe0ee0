//! A component's up/down flag, set by the component and read by `/readyz` and the snapshot.
//! A component that gave up for good (it cannot recover without a change of configuration or
//! of the broker) says why, so the reason is visible where readiness is.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Mutex, PoisonError,
};

#[derive(Clone, Debug, Default)]
pub struct ReadyFlag(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    up: AtomicBool,
    failure: Mutex<Option<String>>,
}

impl ReadyFlag {
    pub fn set(&self, up: bool) {
        self.0.up.store(up, Ordering::SeqCst);
    }

    pub fn get(&self) -> bool {
        self.0.up.load(Ordering::SeqCst)
    }

    /// Down for good, because of `reason` (one line, no secrets).
    pub fn fail(&self, reason: impl Into<String>) {
        self.set(false);
        *self
            .0
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(reason.into());
    }

    /// Why the component gave up, if it did.
    pub fn failure(&self) -> Option<String> {
        self.0
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
