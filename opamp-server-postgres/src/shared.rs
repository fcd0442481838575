//! State shared by the store, the bus and the background tasks of one
//! instance. The lowest layer of the crate: it imports none of the others.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use deadpool_postgres::Pool;
use opamp_proto::InstanceUid;
use opamp_server::{BusInbox, TransportKind};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// What every handle of one instance ([`PgBackend`](crate::PgBackend),
/// [`PgStore`](crate::PgStore), [`PgBus`](crate::PgBus)) holds: the shared
/// state and the background tasks, stopped when the last handle goes.
pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
    pub(crate) tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("instance", &self.shared.instance)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

/// State the background tasks share with the store and bus handles. Holds
/// no handle back to [`Inner`], so dropping the last handle stops the tasks.
pub(crate) struct Shared {
    pub(crate) pool: Pool,
    pub(crate) instance: String,
    /// `opamp_<instance>`: the NOTIFY channel of this instance.
    pub(crate) channel: String,
    pub(crate) lease: Duration,
    pub(crate) pending_ttl: Duration,
    pub(crate) sweep_interval: Option<Duration>,
    /// The epoch of every agent this instance claimed, kept after release
    /// so that a late save of what a stale connection reported is fenced.
    pub(crate) claims: Mutex<HashMap<InstanceUid, Claim>>,
    /// Plain-HTTP agents with pushes waiting in the outbox.
    pub(crate) pending_hints: Mutex<HashSet<InstanceUid>>,
    /// What each save's compare-and-set expects, filled by loads.
    pub(crate) bases: Mutex<HashMap<InstanceUid, Base>>,
    /// Agents known to have a record, so a bare heartbeat's
    /// `contains` needs no round trip. Emptied whenever a removal
    /// notification may have been missed.
    pub(crate) present: Mutex<HashSet<InstanceUid>>,
    pub(crate) inbox: OnceLock<BusInbox>,
    pub(crate) inbox_attached: Notify,
    /// How many times the listener has connected and is listening.
    pub(crate) listening: watch::Sender<u64>,
}

/// This instance's claim on an agent's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Claim {
    pub(crate) epoch: i64,
    pub(crate) released: bool,
}

/// What a compare-and-set save expects: the version read and what each part
/// looked like then.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Base {
    /// 0 when the agent had no row.
    pub(crate) version: i64,
    pub(crate) prints: Prints,
}

/// Fingerprints of the parts of a record that are merged separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Prints {
    pub(crate) reported: u64,
    pub(crate) desired: [u64; 3],
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn transport_name(transport: TransportKind) -> &'static str {
    match transport {
        TransportKind::PlainHttp => "plain_http",
        _ => "websocket",
    }
}

pub(crate) fn to_uuid(uid: InstanceUid) -> Uuid {
    uid.to_uuid()
}

pub(crate) fn from_uuid(uuid: Uuid) -> InstanceUid {
    InstanceUid::from_array(*uuid.as_bytes())
}
