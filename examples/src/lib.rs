//! Examples built on the opamp-rs crates: a fleet server with a web page,
//! a JSON API and an embedded store (the `server` binary).

mod server;

pub use server::{
    ClientCa, ClientCaError, FleetCallbacks, FleetOptions, FleetServer, FleetStore,
    FleetStoreError, ServerArgs, StoreKind, run as run_server,
};
