//! The engine: recurrent next-token models on candle (spec -> network,
//! LSTM/GRU/RNN layers, weight naming, metadata) and the fused CPU kernels.
//! It knows no storage, no jobs and no gRPC; lstmd-core builds on it.
// A function fits on a screen: clippy.toml sets the limit.
#![warn(clippy::too_many_lines)]
pub mod backend;
pub mod error;
pub mod nn;
pub mod vocabulary;
