//! Benchmarks and load tools for opamp-rs.
//!
//! [`messages`] builds the benchmark messages. They are fully deterministic
//! (no clocks, no randomness), and the Go benchmark in `interop/` builds the
//! very same messages with opamp-go's generated types; a test compares the
//! encoded bytes across the two languages by SHA-256.
//!
//! Run the encoding benches with `cargo bench -p opamp-benches`; see
//! `benches/README.md` for the load generator and the results table.
//!
//! The `loadgen` binary ([`run_loadgen`] with [`LoadArgs`]) opens many
//! simulated agents against one OpAMP server and reports connections,
//! message rate, latency percentiles, config push round trips, reconnect
//! storms, and the server's RSS and CPU.
#![forbid(unsafe_code)]

mod load;
pub mod messages;

pub use load::{LoadArgs, PushMode, SourceAddrs, run_loadgen, runtime};
