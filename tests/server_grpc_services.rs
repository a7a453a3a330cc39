//! The standard gRPC services beside `Broadcast`: health (SERVING, then NOT_SERVING once
//! shutdown begins) and reflection (so grpcurl needs no proto file).
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is the test failing

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

async fn channel(addr: &str) -> Channel {
    Channel::from_shared(addr.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_serving_and_reflection_lists_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let ch = channel(&server.addr).await;

    let mut health = HealthClient::new(ch.clone());
    let status = health
        .check(HealthCheckRequest {
            service: "framecast.v1.Broadcast".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    // A single node serves reads while it runs.
    let reads = health
        .check(HealthCheckRequest {
            service: "framecast.reads".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(reads, ServingStatus::Serving as i32);

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut reflection = ServerReflectionClient::new(ch.clone());
    let requests = futures::stream::iter(vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "framecast.v1.Broadcast".into(),
            )),
        },
    ]);
    let mut answers = reflection
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();
    match answers
        .next()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap()
    {
        MessageResponse::ListServicesResponse(list) => {
            let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
            assert!(names.contains(&"framecast.v1.Broadcast"), "{names:?}");
            assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
        }
        other => panic!("{other:?}"),
    }
    match answers
        .next()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap()
    {
        MessageResponse::FileDescriptorResponse(files) => {
            assert!(!files.file_descriptor_proto.is_empty());
        }
        other => panic!("{other:?}"),
    }

    // Once shutdown begins, health says NOT_SERVING to anyone still connected (or the
    // connection is already gone).
    let mut open = subscribe(&mut server.client().await, sub_req("h", 0))
        .await
        .unwrap();
    server.sigterm();
    let status = tokio::time::timeout(Duration::from_secs(5), open.stream.message()).await;
    assert!(
        matches!(status, Ok(Err(ref s)) if s.code() == tonic::Code::Unavailable),
        "{status:?}"
    );
    for service in ["framecast.v1.Broadcast", "framecast.reads"] {
        if let Ok(r) = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
        {
            assert_eq!(
                r.into_inner().status,
                ServingStatus::NotServing as i32,
                "{service}"
            );
        }
    }
}
