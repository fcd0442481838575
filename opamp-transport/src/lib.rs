//! OpAMP wire transports (guide to be written once the modules land).
#![forbid(unsafe_code)]

// --- WebSocket, TLS, connect (owned by the WebSocket work) ---

// --- Plain HTTP, retry policy (owned by the HTTP work) ---
