//! Compiles `proto/framecast.proto`, `proto/replication.proto` and the vendored etcd protos
//! (`proto/etcd/`) with protox (pure Rust: no system `protoc` needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/framecast.proto");
    let fds = protox::compile(["proto/framecast.proto"], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("framecast_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Payloads as `bytes::Bytes`: frames read from the log point into the segment
        // mapping and are handed to the encoder without a copy.
        .bytes(".")
        // `Frame` is written by hand (src/wire_frame.rs): a live frame is encoded once and
        // the same bytes go to every subscriber. Its encoding is prost's, byte for byte.
        .extern_path(".framecast.v1.Frame", "crate::wire_frame::Frame")
        .compile_fds(fds)?;

    // The nodes' replication protocol (src/cluster/replication_proto.rs): internal, so
    // apart from the client contract and its stubs.
    println!("cargo:rerun-if-changed=proto/replication.proto");
    let replication_fds = protox::compile(["replication.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(".")
        .compile_fds(replication_fds)?;

    // The etcd v3 client stubs the cluster coordinates through (src/cluster/etcd_proto.rs).
    // framecast is only ever an etcd client: no server stubs.
    println!("cargo:rerun-if-changed=proto/etcd");
    let etcd_fds = protox::compile(["etcd/rpc.proto", "etcd/v3election.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(etcd_fds)?;
    Ok(())
}
