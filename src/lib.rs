//! lstmd: a gRPC service that trains and serves recurrent next-token models
//! (LSTM, GRU, simple RNN) with candle. This crate is the transport and the
//! binaries; the layers below are crates of their own (see Cargo.toml and
//! README's Layout), re-exported here under their module names.
// A function fits on a screen: clippy.toml sets the limit.
#![warn(clippy::too_many_lines)]
pub mod api;
pub mod app;
pub mod check;
pub mod config;
pub mod metrics;
pub mod net;
pub mod server;

pub use lstmd_cli as cli;
pub use lstmd_core::{data, interop, jobs, predict, store, train, tune};
pub use lstmd_engine::{backend, error, nn};
pub use lstmd_proto::{oip, v1 as proto};
