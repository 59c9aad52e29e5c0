//! The domain of lstmd on the engine: datasets, training, tuning, the job
//! queue, prediction, storage and Keras/ONNX interop. It knows no gRPC: the
//! transport (the `lstmd` crate) turns requests into calls on these modules.
// A function fits on a screen: clippy.toml sets the limit.
#![warn(clippy::too_many_lines)]
pub mod data;
pub mod interop;
pub mod jobs;
pub mod predict;
pub mod store;
pub mod train;
pub mod tune;

// The engine's modules under the names this crate has always used.
pub use lstmd_engine::{backend, error, nn};
