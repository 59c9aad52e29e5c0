//! lstmd: a gRPC service that trains and serves recurrent next-token models
//! (LSTM, GRU, simple RNN) with candle. See DESIGN.md for the layers.
pub mod api;
pub mod check;
pub mod cli;
pub mod config;
pub mod data;
pub mod error;
pub mod interop;
pub mod jobs;
pub mod metrics;
pub mod net;
pub mod nn;
pub mod predict;
pub mod server;
pub mod store;
pub mod train;
pub mod tune;

/// The generated gRPC types, clients and servers of `lstmd.v1`.
pub mod proto {
    tonic::include_proto!("lstmd.v1");
    include!(concat!(env!("OUT_DIR"), "/lstmd.v1.serde.rs"));

    /// Serves reflection, so grpcurl needs no .proto files.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("lstmd_descriptor");
}

/// The generated types and server of the Open Inference Protocol
/// (`inference.GRPCInferenceService`, KServe v2). Reflection serves them
/// from `proto::FILE_DESCRIPTOR_SET`, which holds every compiled file.
pub mod oip {
    tonic::include_proto!("inference");
}
