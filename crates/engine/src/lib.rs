//! The engine: recurrent next-token models on candle (spec -> network,
//! LSTM/GRU/RNN layers, weight naming, metadata) and the fused CPU kernels.
//! It knows no storage, no jobs and no gRPC; lstmd-core builds on it.
pub mod backend;
pub mod error;
pub mod nn;
pub mod vocabulary;
