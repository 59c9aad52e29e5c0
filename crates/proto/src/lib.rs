//! The generated gRPC code of lstmd, nothing else: what a client needs to
//! talk to the service (the CLI depends on this crate alone).

/// The generated gRPC types, clients and servers of `lstmd.v1`.
pub mod v1 {
    tonic::include_proto!("lstmd.v1");
    include!(concat!(env!("OUT_DIR"), "/lstmd.v1.serde.rs"));

    /// Serves reflection, so grpcurl needs no .proto files.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("lstmd_descriptor");
}

/// The generated types and server of the Open Inference Protocol
/// (`inference.GRPCInferenceService`, KServe v2). Reflection serves them
/// from `v1::FILE_DESCRIPTOR_SET`, which holds every compiled file.
pub mod oip {
    tonic::include_proto!("inference");
}
