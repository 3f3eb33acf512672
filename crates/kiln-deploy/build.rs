//! Generates the ONNX protobuf messages (`kiln_deploy::onnx`) from the vendored official
//! schema, `proto/onnx.proto`: `protox` parses it into a `FileDescriptorSet` (pure Rust,
//! no `protoc` binary) and `prost-build` writes the Rust code to `$OUT_DIR/onnx.rs`.

fn main() {
    const PROTO: &str = "proto/onnx.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    println!("cargo:rerun-if-changed=build.rs");
    let fds = match protox::compile([PROTO], ["proto"]) {
        Ok(fds) => fds,
        Err(e) => panic!("{PROTO}: {e}"),
    };
    if let Err(e) = prost_build::Config::new().compile_fds(fds) {
        panic!("generating the ONNX messages from {PROTO}: {e}");
    }
}
