//! Compiles ONNX's own schema (`proto/onnx/onnx.proto` at the repository
//! root, unchanged from the onnx package) with a vendored protoc: the
//! messages of an exported model.onnx, no services.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { env::set_var("PROTOC", protoc) };
    }
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let onnx = root.join("onnx");
    prost_build::compile_protos(&[onnx.join("onnx.proto")], std::slice::from_ref(&onnx))?;
    println!("cargo:rerun-if-changed={}", onnx.display());
    Ok(())
}
