//! The listener: LISTEN on this instance's channel, deliver its outbox rows.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use opamp_proto::{Message, ServerToAgent};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, Notification};
use uuid::Uuid;

use crate::error::PgError;
use crate::shared::{Shared, from_uuid, lock};
use crate::tls::Tls;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The channel every instance listens on for removed records.
pub(crate) const REMOVED_CHANNEL: &str = "opamp_removed";

/// Takes every row addressed to this instance and tells, for each, whether
/// its epoch is still the owner's. Rows are deleted as they are taken, so
/// no "last processed id" cursor is needed: ids come from a sequence and
/// commit out of order, and a cursor could step over a row whose
/// transaction committed after a later id had been read.
const DRAIN: &str = "
WITH taken AS (
    DELETE FROM opamp_outbox WHERE instance = $1 AND NOT any_instance
    RETURNING id, uid, epoch, message
)
SELECT t.id, t.uid, t.message, o.instance = $1 AND o.epoch = t.epoch AS current
FROM taken t LEFT JOIN opamp_agent_owner o ON o.uid = t.uid
ORDER BY t.id";

/// Plain-HTTP agents with pushes signalled to this instance.
const PENDING_FOR_US: &str =
    "SELECT DISTINCT uid FROM opamp_outbox WHERE instance = $1 AND any_instance";

/// Runs until aborted: connect, listen, re-read, deliver; reconnect with
/// backoff when the connection fails.
pub(crate) async fn run(shared: Arc<Shared>, config: tokio_postgres::Config, tls: Tls) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = tokio::time::Instant::now();
        let error = listen(&shared, &config, &tls).await;
        tracing::warn!(%error, instance = %shared.instance, "outbox listener disconnected; reconnecting");
        if started.elapsed() > MAX_BACKOFF {
            backoff = FIRST_BACKOFF;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Why a listening session ended.
enum Ended {
    Failed(PgError),
    Closed,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Failed(error) => error.fmt(f),
            Self::Closed => f.write_str("connection closed"),
        }
    }
}

/// One listening session; returns why it ended.
async fn listen(shared: &Shared, config: &tokio_postgres::Config, tls: &Tls) -> Ended {
    let (client, mut messages) = match tls.connect(config).await {
        Ok(connected) => connected,
        Err(error) => return Ended::Failed(error.into()),
    };
    let (notifications, mut received) = mpsc::unbounded_channel::<Notification>();
    // Drives the connection (queries and notifications alike); ends with it.
    let driver = tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(notification)) => {
                    if notifications.send(notification).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, "listener connection failed");
                    break;
                }
            }
        }
    });
    let _driver = AbortOnDrop(driver);
    let listen = format!("LISTEN \"{}\"; LISTEN {REMOVED_CHANNEL}", shared.channel);
    if let Err(error) = client.batch_execute(&listen).await {
        return Ended::Failed(error.into());
    }
    // Removals and pushes signalled while not listening are lost as
    // notifications: forget what may be stale and re-read the outbox.
    lock(&shared.present).clear();
    if let Err(error) = refresh_pending_hints(shared, &client).await {
        return Ended::Failed(error);
    }
    if let Err(error) = drain(shared, &client).await {
        return Ended::Failed(error);
    }
    shared.listening.send_modify(|sessions| *sessions += 1);
    tracing::debug!(instance = %shared.instance, "outbox listener listening");
    let mut sweep = shared.sweep_interval.map(tokio::time::interval);
    loop {
        let wake = tokio::select! {
            notification = received.recv() => match notification {
                Some(notification) => Some(notification),
                None => return Ended::Closed,
            },
            () = shared.inbox_attached.notified() => None,
            _ = async {
                match sweep.as_mut() {
                    Some(sweep) => sweep.tick().await,
                    None => std::future::pending().await,
                }
            } => None,
        };
        // Take everything already queued: one drain serves a burst.
        let mut must_drain = wake.is_none();
        for notification in wake
            .into_iter()
            .chain(std::iter::from_fn(|| received.try_recv().ok()))
        {
            must_drain |= note(shared, &notification);
        }
        if must_drain {
            if let Err(error) = drain(shared, &client).await {
                return Ended::Failed(error);
            }
        }
    }
}

/// Handles one notification without a round trip; true when the outbox
/// must be read.
fn note(shared: &Shared, notification: &Notification) -> bool {
    let payload = notification.payload();
    if notification.channel() == REMOVED_CHANNEL {
        if let Ok(uuid) = Uuid::parse_str(payload) {
            let uid = from_uuid(uuid);
            lock(&shared.present).remove(&uid);
            lock(&shared.bases).remove(&uid);
        }
        return false;
    }
    if let Some(uid) = payload.strip_prefix("p:") {
        if let Ok(uuid) = Uuid::parse_str(uid) {
            lock(&shared.pending_hints).insert(from_uuid(uuid));
        }
        return false;
    }
    true
}

async fn refresh_pending_hints(shared: &Shared, client: &Client) -> Result<(), PgError> {
    let rows = client.query(PENDING_FOR_US, &[&shared.instance]).await?;
    let mut hints = lock(&shared.pending_hints);
    hints.extend(rows.iter().map(|row| from_uuid(row.get(0))));
    Ok(())
}

/// Takes this instance's outbox rows and delivers the current-epoch ones,
/// oldest first. Waits for the registry to attach before taking anything.
async fn drain(shared: &Shared, client: &Client) -> Result<(), PgError> {
    let Some(inbox) = shared.inbox.get() else {
        return Ok(());
    };
    let rows = client.query(DRAIN, &[&shared.instance]).await?;
    for row in rows {
        let id: i64 = row.get(0);
        let uid = from_uuid(row.get(1));
        let current: Option<bool> = row.get(3);
        if current != Some(true) {
            tracing::debug!(%uid, id, "dropped a push addressed to an older claim");
            continue;
        }
        let message = match ServerToAgent::decode(row.get::<_, &[u8]>(2)) {
            Ok(message) => message,
            Err(error) => {
                tracing::error!(%uid, id, %error, "dropped an undecodable push");
                continue;
            }
        };
        match inbox.deliver(uid, message).await {
            Ok(delivery) => tracing::debug!(%uid, id, ?delivery, "delivered a forwarded push"),
            Err(error) => tracing::info!(%uid, id, %error, "forwarded push not delivered"),
        }
    }
    Ok(())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
