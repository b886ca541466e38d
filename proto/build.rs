//! Compiles the control-plane .proto with protox (pure Rust), so building
//! Fulva needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "proto/fulva.proto";
    println!("cargo:rerun-if-changed={file}");
    let descriptors = protox::compile([file], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Keys and values of migration batches decode without a copy.
        .bytes(".fulva.v1.MigratedObject")
        .compile_fds(descriptors)?;
    Ok(())
}
