//! Compiles the gRPC contract in the repository's `proto/` with a vendored
//! protoc, so a fresh machine needs no system protoc.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { env::set_var("PROTOC", protoc) };
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // The contract stays at the repository root, where clients find it.
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let protos = [
        "lstmd/v1/spec.proto",
        "lstmd/v1/dataset.proto",
        "lstmd/v1/job.proto",
        "lstmd/v1/model.proto",
        "lstmd/v1/prediction.proto",
        // The Open Inference Protocol (KServe v2), served beside lstmd.v1.
        "inference/grpc_predict_v2.proto",
    ];
    let includes = [root.clone(), protoc_bin_vendored::include_path()?];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("lstmd_descriptor.bin"))
        // Well-known types from pbjson-types, which carry serde impls.
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_protos(
            &protos.iter().map(|p| root.join(p)).collect::<Vec<_>>(),
            &includes,
        )?;
    // serde impls in the protobuf JSON mapping, for the CLI's JSON output.
    // Every field, zeros and empty lists too (grpcurl's -emit-defaults): a
    // script reads `top[0].id` even when the id is 0.
    let descriptors = std::fs::read(out_dir.join("lstmd_descriptor.bin"))?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .emit_fields()
        .build(&[".lstmd.v1"])?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
