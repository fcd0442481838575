-- opamp-server-postgres schema, version 1.
-- Applied once, inside a transaction, under an advisory lock (see src/migrate.rs).

-- One row per agent: the record's encoded form (opamp_server::AgentRecord::encode)
-- plus the columns a fleet UI filters and sorts by, extracted from it at every save.
CREATE TABLE opamp_agents (
    uid                  uuid        PRIMARY KEY,
    -- Compare-and-set: every write expects the version it read and bumps it.
    version              bigint      NOT NULL CHECK (version > 0),
    record               bytea       NOT NULL,
    service_name         text,
    service_namespace    text,
    service_version      text,
    service_instance_id  text,
    host_name            text,
    os_type              text,
    -- 'websocket' or 'plain_http' while connected, NULL otherwise.
    transport            text,
    -- The instance holding the connection when the record was saved.
    connected_instance   text,
    first_seen           timestamptz NOT NULL,
    last_seen            timestamptz NOT NULL,
    -- 'pending', 'applying', 'applied', 'failed'; NULL when no remote config is desired.
    remote_config_state  text,
    healthy              boolean,
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX opamp_agents_service_name ON opamp_agents (service_name, uid);
CREATE INDEX opamp_agents_host_name ON opamp_agents (host_name, uid);
CREATE INDEX opamp_agents_last_seen ON opamp_agents (last_seen);
CREATE INDEX opamp_agents_remote_config_state ON opamp_agents (remote_config_state)
    WHERE remote_config_state IS NOT NULL;
CREATE INDEX opamp_agents_connected_instance ON opamp_agents (connected_instance)
    WHERE connected_instance IS NOT NULL;

-- Server instances and their leases. An instance renews its own row with one
-- UPDATE per lease period; an instance whose lease ran out holds nothing.
CREATE TABLE opamp_instances (
    name           text        PRIMARY KEY,
    started_at     timestamptz NOT NULL DEFAULT now(),
    lease_expires  timestamptz NOT NULL
);

-- Which instance holds an agent's connection. `epoch` only ever grows for a uid
-- (the row is kept, with instance NULL, when the connection ends), so it is a
-- fencing token: whoever holds an older epoch is no longer the owner.
CREATE TABLE opamp_agent_owner (
    uid         uuid        PRIMARY KEY,
    instance    text,
    epoch       bigint      NOT NULL CHECK (epoch > 0),
    -- 'websocket' or 'plain_http'.
    transport   text        NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX opamp_agent_owner_instance ON opamp_agent_owner (instance)
    WHERE instance IS NOT NULL;

-- Messages for agents connected to another instance. WebSocket rows are
-- addressed to the owning instance (signalled with NOTIFY, payload = row id);
-- plain-HTTP rows (any_instance) wait for whichever instance the agent polls next.
CREATE TABLE opamp_outbox (
    id            bigserial   PRIMARY KEY,
    uid           uuid        NOT NULL,
    instance      text        NOT NULL,
    epoch         bigint      NOT NULL,
    any_instance  boolean     NOT NULL,
    message       bytea       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX opamp_outbox_instance ON opamp_outbox (instance, id) WHERE NOT any_instance;
CREATE INDEX opamp_outbox_uid ON opamp_outbox (uid, id) WHERE any_instance;
CREATE INDEX opamp_outbox_created_at ON opamp_outbox (created_at);
