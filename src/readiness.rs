//! A component's up/down flag, set by the component and read by `/readyz` and the snapshot. A
//! component made of parts (egress over several partitions) is up when all its parts are
//! ([`ReadyFlag::all`]).

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

#[derive(Clone, Debug, Default)]
pub struct ReadyFlag(Arc<Flag>);

#[derive(Debug)]
enum Flag {
    Own(AtomicBool),
    All(Vec<ReadyFlag>),
}

impl Default for Flag {
    fn default() -> Self {
        Flag::Own(AtomicBool::new(false))
    }
}

impl ReadyFlag {
    /// Up while every one of `parts` is up; setting it sets them all.
    pub fn all(parts: Vec<ReadyFlag>) -> Self {
        Self(Arc::new(Flag::All(parts)))
    }

    pub fn set(&self, up: bool) {
        match &*self.0 {
            Flag::Own(flag) => flag.store(up, Ordering::SeqCst),
            Flag::All(parts) => parts.iter().for_each(|part| part.set(up)),
        }
    }

    pub fn get(&self) -> bool {
        match &*self.0 {
            Flag::Own(flag) => flag.load(Ordering::SeqCst),
            Flag::All(parts) => parts.iter().all(ReadyFlag::get),
        }
    }
}
