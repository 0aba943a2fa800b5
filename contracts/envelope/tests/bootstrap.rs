//! Regenerates the checked-in protobuf bindings and fails when they differ from `src/gen/`.
//!
//! Normal builds need no `protoc` and no build script: the generated code is committed. This test
//! compiles `proto/` with the pure-Rust `protox` compiler and compares. Run it with
//! `HYDRANT_REGENERATE=1` to rewrite `src/gen/` after editing a `.proto`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn raw_services() -> Vec<tonic_build::manual::Service> {
    use tonic_build::manual::{Method, Service};
    let method = |name: &str, route: &str, input: &str, output: &str, cs: bool, ss: bool| {
        let mut b = Method::builder()
            .name(name)
            .route_name(route)
            .input_type(input)
            .output_type(output)
            .codec_path("crate::raw::WireCodec");
        if cs {
            b = b.client_streaming();
        }
        if ss {
            b = b.server_streaming();
        }
        b.build()
    };
    let ingress = Service::builder()
        .name("Ingress")
        .package("loggregator.v2")
        .comment("Ingress carrying encoded envelopes as `Bytes`: the hop validates and forwards them without decoding.")
        .method(method("sender", "Sender", "::bytes::Bytes", "crate::raw::Empty", true, false))
        .method(method("batch_sender", "BatchSender", "::bytes::Bytes", "crate::raw::Empty", true, false))
        .method(method("send", "Send", "::bytes::Bytes", "crate::raw::Empty", false, false))
        .build();
    let egress = Service::builder()
        .name("Egress")
        .package("loggregator.v2")
        .comment("Egress sending encoded envelopes (`Receiver`) and encoded batches (`BatchedReceiver`) as `Bytes`.")
        .method(method("receiver", "Receiver", "crate::v2::EgressRequest", "::bytes::Bytes", false, true))
        .method(method(
            "batched_receiver",
            "BatchedReceiver",
            "crate::v2::EgressBatchRequest",
            "::bytes::Bytes",
            false,
            true,
        ))
        .build();
    let logcache = Service::builder()
        .name("Egress")
        .package("logcache.v1")
        .comment("Log Cache's egress with `Read` answered as the encoded `ReadResponse` (`Bytes`): the doppler builds it from the stored envelopes and the edge slices them out, neither decoding.")
        .method(method("read", "Read", "crate::logcache_v1::ReadRequest", "::bytes::Bytes", false, false))
        .method(method(
            "meta",
            "Meta",
            "crate::logcache_v1::MetaRequest",
            "crate::logcache_v1::MetaResponse",
            false,
            false,
        ))
        .build();
    vec![ingress, egress, logcache]
}

fn generate(out: &Path) {
    let root = workspace_root();
    let fds = protox::compile(
        [
            "loggregator/v2/envelope.proto",
            "loggregator/v2/ingress.proto",
            "loggregator/v2/egress.proto",
            "logcache/v1/egress.proto",
        ],
        [root.join("proto")],
    )
    .expect("protos compile");
    tonic_prost_build::configure()
        .bytes(".loggregator.v2.Log.payload")
        .out_dir(out)
        .emit_rerun_if_changed(false)
        .compile_fds(fds)
        .expect("prost codegen");
    let raw_dir = out.join("raw");
    std::fs::create_dir_all(&raw_dir).unwrap();
    tonic_build::manual::Builder::new()
        .out_dir(&raw_dir)
        .compile(&raw_services());
}

fn files(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if path.is_dir() {
            for (name, body) in files(&path) {
                out.push((
                    format!("{}/{name}", entry.file_name().to_string_lossy()),
                    body,
                ));
            }
        } else {
            out.push((
                entry.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(&path).unwrap(),
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn generated_code_is_fresh() {
    let tmp = tempfile::tempdir().unwrap();
    generate(tmp.path());
    let fresh = files(tmp.path());
    let checked_in_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/gen");
    if std::env::var_os("HYDRANT_REGENERATE").is_some() {
        let _ = std::fs::remove_dir_all(&checked_in_dir);
        for (name, body) in &fresh {
            let path = checked_in_dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, body).unwrap();
        }
        return;
    }
    let checked_in = files(&checked_in_dir);
    assert_eq!(
        fresh.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        checked_in.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        "generated file set differs; run HYDRANT_REGENERATE=1 cargo test -p hydrant-envelope --test bootstrap"
    );
    for ((name, fresh), (_, old)) in fresh.iter().zip(checked_in.iter()) {
        assert!(
            fresh == old,
            "src/gen/{name} is stale; run HYDRANT_REGENERATE=1 cargo test -p hydrant-envelope --test bootstrap"
        );
    }
}
