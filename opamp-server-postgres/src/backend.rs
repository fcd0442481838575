//! The shared connection pool, the instance lease and the background tasks.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{Notify, watch};
use tokio_postgres::NoTls;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::bus::PgBus;
use crate::error::PgError;
use crate::listener;
use crate::migrate;
use crate::shared::{Inner, Shared, lock};
use crate::store::PgStore;
use crate::tls::Tls;

/// Default lease of an instance: how long after its last renewal an
/// instance that stopped renewing still counts as holding its agents.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);

/// Default time a push for a plain-HTTP agent waits for the agent's next
/// poll before it is discarded.
pub const DEFAULT_PENDING_TTL: Duration = Duration::from_secs(600);

/// The PostgreSQL backend of one server instance: a connection pool, the
/// instance's lease, and the listener that receives pushes for agents
/// connected here. Hands out the [`PgStore`] and [`PgBus`] a
/// [`Registry`](opamp_server::Registry) is built with. Cheap to clone; the
/// background tasks stop when the last clone (including every store and bus
/// taken from it) is dropped, or at [`shutdown`](Self::shutdown).
#[derive(Clone)]
pub struct PgBackend {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBackend")
            .field("instance", &self.inner.shared.instance)
            .finish_non_exhaustive()
    }
}

/// Builds a [`PgBackend`].
#[derive(Clone)]
#[must_use]
pub struct PgBackendBuilder {
    config: tokio_postgres::Config,
    tls: Tls,
    instance: String,
    pool_size: usize,
    lease: Duration,
    pending_ttl: Duration,
    sweep_interval: Option<Duration>,
}

impl std::fmt::Debug for PgBackendBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBackendBuilder")
            .field("instance", &self.instance)
            .field("tls", &matches!(self.tls, Tls::Rustls(_)))
            .field("pool_size", &self.pool_size)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl PgBackendBuilder {
    /// Connects with TLS (rustls) using `config`, which carries the crypto
    /// provider and the trusted roots. Whether TLS is required follows the
    /// connection settings' `sslmode` (`require` to insist on it); without
    /// this call connections are unencrypted.
    pub fn tls(mut self, config: rustls::ClientConfig) -> Self {
        self.tls = Tls::Rustls(MakeRustlsConnect::new(config));
        self
    }

    /// Connections in the pool (default 8). The listener uses one more.
    pub fn pool_size(mut self, connections: usize) -> Self {
        self.pool_size = connections.max(1);
        self
    }

    /// The instance lease ([`DEFAULT_LEASE`]); it is renewed every third of
    /// it with one statement. After an instance dies, other instances route
    /// nothing to it once its lease has run out.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_secs(1));
        self
    }

    /// How long a push for a plain-HTTP agent waits for a poll
    /// ([`DEFAULT_PENDING_TTL`]).
    pub fn pending_ttl(mut self, ttl: Duration) -> Self {
        self.pending_ttl = ttl;
        self
    }

    /// Also read this instance's outbox every `interval`, not only when
    /// notified (off by default: notifications and the re-read after every
    /// listener reconnect already cover everything).
    pub fn sweep_interval(mut self, interval: Option<Duration>) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// Connects, applies the embedded migrations, registers the instance
    /// and starts the lease renewal and the listener.
    pub async fn connect(self) -> Result<PgBackend, PgError> {
        if !valid_instance_name(&self.instance) {
            return Err(PgError::InvalidInstanceName(self.instance));
        }
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &self.tls {
            Tls::None => Manager::from_config(self.config.clone(), NoTls, manager_config),
            Tls::Rustls(tls) => {
                Manager::from_config(self.config.clone(), tls.clone(), manager_config)
            }
        };
        let pool = Pool::builder(manager)
            .max_size(self.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|error| PgError::BuildPool(error.to_string()))?;
        {
            let mut client = pool.get().await?;
            migrate::migrate(&mut client).await?;
            register_instance(&client, &self.instance, self.lease).await?;
        }
        let (listening, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            pool,
            channel: format!("opamp_{}", self.instance),
            instance: self.instance,
            lease: self.lease,
            pending_ttl: self.pending_ttl,
            sweep_interval: self.sweep_interval,
            claims: Mutex::default(),
            pending_hints: Mutex::default(),
            bases: Mutex::default(),
            present: Mutex::default(),
            inbox: OnceLock::new(),
            inbox_attached: Notify::new(),
            listening,
        });
        let mut listener_config = self.config;
        listener_config.application_name(format!("opamp-listener:{}", shared.instance));
        let tasks = vec![
            tokio::spawn(renew_lease(Arc::clone(&shared))),
            tokio::spawn(listener::run(
                Arc::clone(&shared),
                listener_config,
                self.tls,
            )),
        ];
        Ok(PgBackend {
            inner: Arc::new(Inner {
                shared,
                tasks: Mutex::new(tasks),
            }),
        })
    }
}

impl PgBackend {
    /// A builder for the instance called `instance`, connecting with
    /// `config` (for example `"host=db user=opamp dbname=fleet".parse()?`).
    ///
    /// `instance` names this server instance: 1 to 48 ASCII letters,
    /// digits, `_` or `-`, unique among running instances (a pod or host
    /// name). A restarted instance may reuse its name: at start it gives up
    /// every claim the name held.
    pub fn builder(
        config: tokio_postgres::Config,
        instance: impl Into<String>,
    ) -> PgBackendBuilder {
        PgBackendBuilder {
            config,
            tls: Tls::None,
            instance: instance.into(),
            pool_size: 8,
            lease: DEFAULT_LEASE,
            pending_ttl: DEFAULT_PENDING_TTL,
            sweep_interval: None,
        }
    }

    /// Connects with the defaults; see [`builder`](Self::builder).
    pub async fn connect(
        config: tokio_postgres::Config,
        instance: impl Into<String>,
    ) -> Result<Self, PgError> {
        Self::builder(config, instance).connect().await
    }

    /// The agent store for [`RegistryBuilder::store`](opamp_server::RegistryBuilder::store).
    pub fn store(&self) -> PgStore {
        PgStore {
            inner: Arc::clone(&self.inner),
        }
    }

    /// The message bus for [`RegistryBuilder::bus`](opamp_server::RegistryBuilder::bus).
    /// Keep a clone to [`claim`](PgBus::claim) and [`release`](PgBus::release)
    /// agents.
    pub fn bus(&self) -> PgBus {
        PgBus {
            inner: Arc::clone(&self.inner),
        }
    }

    /// This instance's name.
    pub fn instance(&self) -> &str {
        &self.inner.shared.instance
    }

    /// The connection pool, for queries of your own (a fleet UI filtering
    /// `opamp_agents` by its columns, say).
    pub fn pool(&self) -> &Pool {
        &self.inner.shared.pool
    }

    /// Waits until the listener is connected and listening on this
    /// instance's channel.
    pub async fn listening(&self) {
        let mut listening = self.inner.shared.listening.subscribe();
        let _ = listening.wait_for(|sessions| *sessions > 0).await;
    }

    /// Leaves the fleet: stops the background tasks, gives up this
    /// instance's WebSocket claims (plain-HTTP claims stay, so pushes for
    /// those agents keep waiting for their next poll) and ends its lease.
    pub async fn shutdown(&self) -> Result<(), PgError> {
        for task in lock(&self.inner.tasks).drain(..) {
            task.abort();
        }
        let shared = &self.inner.shared;
        let client = shared.pool.get().await?;
        client
            .execute(
                "UPDATE opamp_agent_owner SET instance = NULL
                 WHERE instance = $1 AND transport = 'websocket'",
                &[&shared.instance],
            )
            .await?;
        client
            .execute(
                "UPDATE opamp_instances SET lease_expires = now() WHERE name = $1",
                &[&shared.instance],
            )
            .await?;
        Ok(())
    }
}

fn valid_instance_name(name: &str) -> bool {
    (1..=48).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
}

fn lease_seconds(lease: Duration) -> f64 {
    lease.as_secs_f64()
}

/// Starts (or restarts) the instance's lease and gives up whatever a
/// previous process of the same name held: it has no connections yet.
async fn register_instance(
    client: &tokio_postgres::Client,
    instance: &str,
    lease: Duration,
) -> Result<(), PgError> {
    client
        .execute(
            "INSERT INTO opamp_instances (name, lease_expires)
             VALUES ($1, now() + make_interval(secs => $2))
             ON CONFLICT (name) DO UPDATE
             SET started_at = now(), lease_expires = EXCLUDED.lease_expires",
            &[&instance, &lease_seconds(lease)],
        )
        .await?;
    client
        .execute(
            "UPDATE opamp_agent_owner SET instance = NULL WHERE instance = $1",
            &[&instance],
        )
        .await?;
    client
        .execute(
            "DELETE FROM opamp_outbox WHERE instance = $1 AND NOT any_instance",
            &[&instance],
        )
        .await?;
    Ok(())
}

/// Renews the lease with one statement every third of it (however many
/// agents are connected) and discards plain-HTTP pushes nobody polled for.
async fn renew_lease(shared: Arc<Shared>) {
    let mut ticks = tokio::time::interval(shared.lease / 3);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round: u64 = 0;
    loop {
        ticks.tick().await;
        round += 1;
        let renewed = async {
            let client = shared.pool.get().await?;
            client
                .execute(
                    "INSERT INTO opamp_instances (name, lease_expires)
                     VALUES ($1, now() + make_interval(secs => $2))
                     ON CONFLICT (name) DO UPDATE SET lease_expires = EXCLUDED.lease_expires",
                    &[&shared.instance, &lease_seconds(shared.lease)],
                )
                .await?;
            // Housekeeping once a minute or so, not every renewal.
            if round % 12 == 0 {
                let expired = client
                    .execute(
                        "DELETE FROM opamp_outbox
                         WHERE created_at < now() - make_interval(secs => $1)",
                        &[&shared.pending_ttl.as_secs_f64()],
                    )
                    .await?;
                if expired > 0 {
                    tracing::info!(expired, "discarded pushes nobody polled for");
                }
            }
            Ok::<_, PgError>(())
        }
        .await;
        if let Err(error) = renewed {
            tracing::warn!(%error, instance = %shared.instance, "instance lease renewal failed");
        }
    }
}

impl PgBus {
    /// The backend this bus belongs to (another handle on the same
    /// instance).
    pub fn backend(&self) -> PgBackend {
        PgBackend {
            inner: Arc::clone(&self.inner),
        }
    }
}
