//! The callback task: hands the core's events and the driver's notices to
//! the agent's [`Callbacks`], one at a time and in order, and gives the
//! agent's answers back to the core. What an answer means (which status to
//! report, whether to switch settings) is the core's to decide.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::client::{Callbacks, OpampClient};
use crate::packages::PackageSyncer;
use crate::protocol::{Event, SettingsOutcome};
use crate::shared::{Notice, now};

/// Runs a synchronous callback on the blocking pool, so it may block without
/// stalling the runtime.
async fn blocking(call: impl FnOnce() + Send + 'static) {
    if let Err(error) = tokio::task::spawn_blocking(call).await {
        tracing::error!(%error, "an OpAMP callback panicked");
    }
}

/// Delivers `notices` in order, one at a time, until the driver is gone.
pub(crate) async fn run(
    client: OpampClient,
    mut notices: mpsc::Receiver<Notice>,
    syncer: Option<PackageSyncer>,
) {
    let callbacks: Arc<dyn Callbacks> = Arc::clone(&client.inner.callbacks);
    let shared = Arc::clone(&client.inner.shared);
    while let Some(notice) = notices.recv().await {
        let cb = Arc::clone(&callbacks);
        let event = match notice {
            Notice::Connected => {
                blocking(move || cb.on_connect()).await;
                continue;
            }
            Notice::ConnectFailed(error) => {
                blocking(move || cb.on_connect_failed(&*error)).await;
                continue;
            }
            Notice::Core(event) => *event,
        };
        match event {
            Event::Message(data) => {
                let client = client.clone();
                blocking(move || cb.on_message(&client, &data)).await;
            }
            Event::ErrorResponse(error) => blocking(move || cb.on_error_response(&error)).await,
            Event::OpampConnectionSettings { hash, settings } => {
                let answer = cb.on_opamp_connection_settings(&settings).await;
                shared.update(|core| match answer {
                    Ok(settings) => core.accept_opamp_connection_settings(&hash, settings, now()),
                    Err(reason) => core.refuse_opamp_connection_settings(&hash, reason),
                });
            }
            Event::OpampConnectionSettingsOutcome { settings, result } => {
                blocking(move || {
                    cb.on_opamp_connection_settings_outcome(
                        &settings,
                        result.as_ref().map(|_| ()).map_err(String::as_str),
                    )
                })
                .await;
            }
            Event::OtherConnectionSettings { hash, offers, .. } => {
                let (done_tx, done_rx) = tokio::sync::oneshot::channel();
                blocking(move || {
                    let _ = done_tx.send(cb.on_other_connection_settings(&offers));
                })
                .await;
                let outcome = done_rx
                    .await
                    .unwrap_or(SettingsOutcome::Failed("callback panicked".into()));
                shared.update(|core| core.handle_other_settings_outcome(&hash, outcome));
            }
            Event::PackagesAvailable(offer) => match &syncer {
                Some(syncer) => {
                    syncer.offer(offer);
                }
                None => tracing::warn!("package offer without a package syncer"),
            },
            Event::Command(command) => blocking(move || cb.on_command(&command)).await,
            Event::NewInstanceUid(uid) => blocking(move || cb.on_new_instance_uid(uid)).await,
            Event::ProtocolError(error) => blocking(move || cb.on_protocol_error(&error)).await,
        }
    }
}
