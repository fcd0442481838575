//! What the handle, the driver task and the callback task share: the core
//! behind its lock, the wake-ups, and the notices the driver hands to the
//! callback task.

use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;

use crate::protocol::{ClientCore, Event};

/// A transport error, as handed to the `on_connect_failed` callback.
pub type TransportError = dyn std::error::Error + Send + Sync;

/// The core and the wake-ups around it.
pub(crate) struct Shared {
    core: Mutex<ClientCore>,
    /// Wakes the driver after an input from outside it (a setter, stop, an
    /// answer from a callback).
    pub(crate) wake: Notify,
    /// Signalled whenever a custom message was handed to the transport.
    pub(crate) custom_sent: Notify,
}

impl Shared {
    pub(crate) fn new(core: ClientCore) -> Self {
        Self {
            core: Mutex::new(core),
            wake: Notify::new(),
            custom_sent: Notify::new(),
        }
    }

    pub(crate) fn core(&self) -> MutexGuard<'_, ClientCore> {
        // A panic while holding the lock cannot leave the core half-updated
        // in a way that matters more than stopping would: keep going.
        self.core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Feeds the core an input from outside the driver, then wakes the
    /// driver to act on it.
    pub(crate) fn update<R>(&self, change: impl FnOnce(&mut ClientCore) -> R) -> R {
        let result = change(&mut self.core());
        self.wake.notify_one();
        result
    }
}

/// The current time on tokio's clock (so paused-time tests work), as the
/// `std` instant the core takes.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Something for the callback task. Small on purpose: the callback queue
/// allocates room for a block of notices per client up front, so an inline
/// `Event` (a few hundred bytes) cost kilobytes per idle client.
pub(crate) enum Notice {
    Core(Box<Event>),
    Connected,
    ConnectFailed(Box<TransportError>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_stay_small_so_idle_callback_queues_stay_cheap() {
        // The queue's first block holds 32 notices per client from the
        // start; an unboxed Event would make that several KiB.
        assert!(std::mem::size_of::<Notice>() <= 24);
        assert!(std::mem::size_of::<Event>() > 64);
    }
}
