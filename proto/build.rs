//! Generates berth's own wire types from `berth/*.proto` with prost-build.
//! protoc comes from Debian's `protobuf-compiler` (or `$PROTOC`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["berth/monitor.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    prost_build::Config::new().compile_protos(&protos, &["berth/"])?;
    Ok(())
}
