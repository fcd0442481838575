// Package smoke holds the end-to-end test that runs goserver and goagent
// against each other on loopback, proving the Go side of the interop harness
// before the Rust tests rely on it.
package smoke
