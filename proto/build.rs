//! Generates the CRI v1 bindings (messages and tonic services) from the vendored CRI 1.36
//! `api.proto`, and berth's own wire types from `berth/*.proto`, with prost-build.
//! protoc comes from Debian's `protobuf-compiler` (or `$PROTOC`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cri = "cri/v1.36/api.proto";
    let protos = ["berth/monitor.proto"];
    let services = ["berth/images.proto"];
    for p in protos.iter().chain(&services).chain([&cri]) {
        println!("cargo:rerun-if-changed={p}");
    }
    // Debian 12's protoc (3.21) predates the `debug_redact` field option (protobuf 22) that
    // the CRI marks credentials with; it only changes how text formats print a field, so
    // the copy protoc reads drops it. The vendored file stays byte-identical.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("cri");
    std::fs::create_dir_all(&out)?;
    let text = std::fs::read_to_string(cri)?;
    std::fs::write(
        out.join("api.proto"),
        text.replace(" [debug_redact = true]", ""),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&[out.join("api.proto")], &[out])?;
    // A frame is as large as its largest body; the start request (the launch spec inline)
    // and the exec requests would make every frame 1.2 KiB, in every queue slot and stack
    // slot a monitor holds one in (a channel block of 32 frames was 38 KiB a connection).
    let mut monitor = prost_build::Config::new();
    for variant in ["start", "exec", "exec_session"] {
        monitor.boxed(format!(".berth.monitor.v1.Frame.body.{variant}"));
    }
    monitor.compile_protos(&protos, &["berth/"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&services, &["berth/"])?;
    Ok(())
}
