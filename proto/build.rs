//! Compiles the ringflow/1 schema with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let schema = "proto/ringflow/v1/ringflow.proto";
    println!("cargo:rerun-if-changed={schema}");
    let descriptors = protox::compile([schema], ["proto"])?;
    prost_build::Config::new()
        // `bytes` fields decode as zero-copy slices of the received frame.
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
