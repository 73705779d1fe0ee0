//! A component's up/down flag, set by the component and read by `/readyz` and the snapshot. A
//! component made of parts (egress over several partitions) is up when all its parts are
//! ([`ReadyFlag::all`]). A component that gave up for good (it cannot recover without a change
//! of configuration or of the broker) says why ([`ReadyFlag::fail`]), so the reason is visible
//! where readiness is.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Mutex, PoisonError,
};

#[derive(Clone, Debug, Default)]
pub struct ReadyFlag(Arc<Flag>);

#[derive(Debug)]
enum Flag {
    Own {
        up: AtomicBool,
        failure: Mutex<Option<String>>,
    },
    All(Vec<ReadyFlag>),
}

impl Default for Flag {
    fn default() -> Self {
        Flag::Own {
            up: AtomicBool::new(false),
            failure: Mutex::new(None),
        }
    }
}

impl ReadyFlag {
    /// Up while every one of `parts` is up; setting it sets them all.
    pub fn all(parts: Vec<ReadyFlag>) -> Self {
        Self(Arc::new(Flag::All(parts)))
    }

    pub fn set(&self, up: bool) {
        match &*self.0 {
            Flag::Own { up: flag, .. } => flag.store(up, Ordering::SeqCst),
            Flag::All(parts) => parts.iter().for_each(|part| part.set(up)),
        }
    }

    pub fn get(&self) -> bool {
        match &*self.0 {
            Flag::Own { up, .. } => up.load(Ordering::SeqCst),
            Flag::All(parts) => parts.iter().all(ReadyFlag::get),
        }
    }

    /// Down for good, because of `reason` (one line, no secrets).
    pub fn fail(&self, reason: impl Into<String>) {
        let reason = reason.into();
        match &*self.0 {
            Flag::Own { up, failure } => {
                up.store(false, Ordering::SeqCst);
                *failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
            }
            Flag::All(parts) => parts.iter().for_each(|part| part.fail(reason.clone())),
        }
    }

    /// Why the component (or the first of its parts that did) gave up, if it did.
    pub fn failure(&self) -> Option<String> {
        match &*self.0 {
            Flag::Own { failure, .. } => failure
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            Flag::All(parts) => parts.iter().find_map(ReadyFlag::failure),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_that_gave_up_says_why_through_the_whole() {
        let parts = vec![ReadyFlag::default(), ReadyFlag::default()];
        let whole = ReadyFlag::all(parts.clone());
        whole.set(true);
        assert!(whole.get());
        assert_eq!(whole.failure(), None);
        parts[1].fail("queue exists as a quorum queue");
        assert!(!whole.get());
        assert_eq!(
            whole.failure().as_deref(),
            Some("queue exists as a quorum queue")
        );
    }
}
