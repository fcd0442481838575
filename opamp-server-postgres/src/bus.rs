//! `PgBus`: ownership of agents' connections and pushes between instances.

use opamp_proto::{InstanceUid, Message, ServerToAgent};
use opamp_server::{BoxFuture, BusError, BusInbox, MessageBus, TransportKind};

use std::sync::Arc;

use crate::error::PgError;
use crate::shared::{Claim, Inner, Shared, lock, to_uuid, transport_name};

/// A [`MessageBus`] on PostgreSQL, and the record of which instance holds
/// each agent's connection.
///
/// # Ownership
///
/// `opamp_agent_owner` has one row per agent: the instance holding its
/// connection and an `epoch` that grows by one with every
/// [`claim`](Self::claim). The epoch is a fencing token: a row in the outbox
/// carries the epoch it was addressed to and is dropped if the agent has
/// been claimed again since, and [`PgStore`](crate::PgStore) refuses to let
/// an instance with an older epoch overwrite what the agent reported. An
/// owner counts only while its instance's lease is valid; the lease is
/// renewed with one statement per instance, not per agent.
///
/// The registry (or the application, until the registry calls it) claims an
/// agent when a connection or plain-HTTP session for it starts on this
/// instance, and releases it with the epoch it got when that connection
/// ends:
///
/// ```no_run
/// # async fn run(bus: opamp_server_postgres::PgBus, uid: opamp_proto::InstanceUid) -> Result<(), opamp_server_postgres::PgError> {
/// use opamp_server::TransportKind;
///
/// let epoch = bus.claim(uid, TransportKind::WebSocket).await?;
/// // ... the agent talks to this instance ...
/// bus.release(uid, epoch).await?; // a no-op if another instance claimed it since
/// # Ok(()) }
/// ```
///
/// # Forwarding
///
/// [`forward`](MessageBus::forward) writes the message to `opamp_outbox`,
/// addressed to the owner and its epoch, and signals the owner with
/// `NOTIFY opamp_<instance>` whose payload is only the row id. The owner's
/// listener reads every row addressed to it, on each notification and again
/// after each reconnect (notifications sent while it was away are lost, the
/// rows are not), deletes them and hands the current-epoch ones to
/// [`BusInbox::deliver`]. Delivery is at most once: a row is deleted before
/// it is delivered, so a crash in between loses it; desired state still
/// reaches the agent through the store.
///
/// For an agent on plain HTTP the row is kept for the agent rather than for
/// an instance: whichever instance the next poll reaches takes it with
/// [`take_pending`](Self::take_pending).
#[derive(Clone, Debug)]
pub struct PgBus {
    pub(crate) inner: Arc<Inner>,
}

/// Claim: a new row at epoch 1, or the next epoch of the existing row.
const CLAIM: &str = "
INSERT INTO opamp_agent_owner AS o (uid, instance, epoch, transport)
VALUES ($1, $2, 1, $3)
ON CONFLICT (uid) DO UPDATE SET
    instance = EXCLUDED.instance,
    epoch = o.epoch + 1,
    transport = EXCLUDED.transport,
    claimed_at = now()
RETURNING epoch";

/// Forward: address the message to the live owner and signal it, in one
/// statement. A plain-HTTP owner counts even after its lease ran out: the
/// agent's next poll takes the message wherever it lands.
const FORWARD: &str = "
WITH owner AS (
    SELECT o.uid, o.instance, o.epoch, o.transport = 'plain_http' AS any_instance
    FROM opamp_agent_owner o
    LEFT JOIN opamp_instances i ON i.name = o.instance
    WHERE o.uid = $1 AND o.instance IS NOT NULL
      AND (o.transport = 'plain_http' OR i.lease_expires > now())
), queued AS (
    INSERT INTO opamp_outbox (uid, instance, epoch, any_instance, message)
    SELECT uid, instance, epoch, any_instance, $2 FROM owner
    RETURNING id, uid, instance, any_instance
)
SELECT id, pg_notify('opamp_' || instance,
    CASE WHEN any_instance THEN 'p:' || uid::text ELSE id::text END)::text
FROM queued";

/// Take the pending pushes of a plain-HTTP agent, only as its current owner.
const TAKE_PENDING: &str = "
DELETE FROM opamp_outbox b USING opamp_agent_owner o
WHERE b.uid = $1 AND b.any_instance
  AND o.uid = b.uid AND o.instance = $2 AND o.epoch = $3
RETURNING b.id, b.message";

impl PgBus {
    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// Records that this instance now holds `uid`'s connection (or
    /// plain-HTTP session) and returns the new epoch, one more than any
    /// before: from now on pushes for the agent come here, and older owners
    /// neither get them nor overwrite what the agent reports.
    ///
    /// Call it when a connection or session for the agent starts here (the
    /// registry's `AgentEvent::Connected`), not per message. For a
    /// plain-HTTP agent, call [`take_pending`](Self::take_pending) right
    /// after: pushes made while it polled elsewhere wait in the outbox.
    pub async fn claim(&self, uid: InstanceUid, transport: TransportKind) -> Result<i64, PgError> {
        let shared = self.shared();
        let client = shared.pool.get().await?;
        let statement = client.prepare_cached(CLAIM).await?;
        let epoch: i64 = client
            .query_one(
                &statement,
                &[&to_uuid(uid), &shared.instance, &transport_name(transport)],
            )
            .await?
            .get(0);
        lock(&shared.claims).insert(
            uid,
            Claim {
                epoch,
                released: false,
            },
        );
        if transport == TransportKind::PlainHttp {
            lock(&shared.pending_hints).insert(uid);
        }
        tracing::debug!(%uid, epoch, instance = %shared.instance, "claimed agent");
        Ok(epoch)
    }

    /// Gives up the claim of `epoch` when the agent's connection or session
    /// here ends. Returns false (and changes nothing) when another instance
    /// has claimed the agent since. The epoch stays known here so a late
    /// save from the old connection is still fenced.
    pub async fn release(&self, uid: InstanceUid, epoch: i64) -> Result<bool, PgError> {
        let shared = self.shared();
        if let Some(claim) = lock(&shared.claims).get_mut(&uid) {
            if claim.epoch == epoch {
                claim.released = true;
            }
        }
        lock(&shared.pending_hints).remove(&uid);
        let client = shared.pool.get().await?;
        let statement = client
            .prepare_cached(
                "UPDATE opamp_agent_owner SET instance = NULL
                 WHERE uid = $1 AND epoch = $2 AND instance = $3",
            )
            .await?;
        let released = client
            .execute(&statement, &[&to_uuid(uid), &epoch, &shared.instance])
            .await?;
        Ok(released == 1)
    }

    /// The epoch of this instance's live claim on `uid`, if it holds one
    /// (as far as this instance knows; the database decides).
    pub fn epoch(&self, uid: InstanceUid) -> Option<i64> {
        lock(&self.shared().claims)
            .get(&uid)
            .filter(|claim| !claim.released)
            .map(|claim| claim.epoch)
    }

    /// Takes the pushes waiting for a plain-HTTP agent, oldest first, if
    /// this instance holds the agent's current claim; the caller merges
    /// them into the reply to the agent's poll.
    ///
    /// Cheap to call at every poll: it asks the database only when this
    /// instance has reason to think something waits (the agent was just
    /// claimed, or another instance signalled a push).
    pub async fn take_pending(&self, uid: InstanceUid) -> Result<Vec<ServerToAgent>, PgError> {
        let shared = self.shared();
        if !lock(&shared.pending_hints).remove(&uid) {
            return Ok(Vec::new());
        }
        let Some(epoch) = self.epoch(uid) else {
            return Ok(Vec::new());
        };
        let taken = async {
            let client = shared.pool.get().await?;
            let statement = client.prepare_cached(TAKE_PENDING).await?;
            let rows = client
                .query(&statement, &[&to_uuid(uid), &shared.instance, &epoch])
                .await?;
            Ok::<_, PgError>(rows)
        }
        .await;
        let mut rows = match taken {
            Ok(rows) => rows,
            Err(error) => {
                // Try again at the next poll.
                lock(&shared.pending_hints).insert(uid);
                return Err(error);
            }
        };
        rows.sort_by_key(|row| row.get::<_, i64>(0));
        rows.iter()
            .map(|row| {
                ServerToAgent::decode(row.get::<_, &[u8]>(1))
                    .map_err(|error| PgError::Corrupt(error.to_string()))
            })
            .collect()
    }

    async fn forward_row(&self, uid: InstanceUid, message: ServerToAgent) -> Result<bool, PgError> {
        let client = self.shared().pool.get().await?;
        let statement = client.prepare_cached(FORWARD).await?;
        let rows = client
            .query(&statement, &[&to_uuid(uid), &message.encode_to_vec()])
            .await?;
        Ok(!rows.is_empty())
    }
}

impl MessageBus for PgBus {
    fn forward(
        &self,
        uid: InstanceUid,
        message: ServerToAgent,
    ) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            match self.forward_row(uid, message).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(BusError::NoRoute(uid)),
                Err(error) => Err(BusError::Backend(Box::new(error))),
            }
        })
    }

    fn agent_connected(&self, uid: InstanceUid, transport: TransportKind) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(error) = self.claim(uid, transport).await {
                tracing::warn!(%uid, %error, "could not claim the agent");
            }
        })
    }

    fn agent_disconnected(&self, uid: InstanceUid) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(epoch) = self.epoch(uid) {
                if let Err(error) = self.release(uid, epoch).await {
                    tracing::warn!(%uid, %error, "could not release the agent");
                }
            }
        })
    }

    fn take_pending(&self, uid: InstanceUid) -> BoxFuture<'_, Vec<ServerToAgent>> {
        Box::pin(async move {
            match PgBus::take_pending(self, uid).await {
                Ok(messages) => messages,
                Err(error) => {
                    tracing::warn!(%uid, %error, "could not read pushes left for the agent");
                    Vec::new()
                }
            }
        })
    }

    fn attach(&self, inbox: BusInbox) {
        let shared = self.shared();
        if shared.inbox.set(inbox).is_err() {
            tracing::warn!(
                instance = %shared.instance,
                "a second registry attached to the same PgBus; keeping the first"
            );
            return;
        }
        shared.inbox_attached.notify_one();
    }
}
