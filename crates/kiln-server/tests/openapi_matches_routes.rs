//! Every operation `/api/openapi.json` documents is served by the router,
//! and the document served is the one the crate builds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kiln_server::{Server, ServerConfig};
use kiln_store::{Store, StoreOptions};
use serde_json::Value;

#[tokio::test]
async fn every_documented_operation_reaches_a_handler() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreOptions::sqlite_in_dir(dir.path()))
        .await
        .unwrap();
    let provider = kiln_model::ProviderConfig::builtin("ollama").unwrap();
    let agent = kiln_agent::AgentConfig::new("m", kiln_protocol::Mode::Code, dir.path());
    let sandbox = kiln_sandbox::SandboxPolicy::for_workspace(dir.path());
    let server = Server::new(
        store,
        ServerConfig::new(dir.path(), provider, agent, sandbox),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(server.serve(listener, shutdown.clone()));
    let http = reqwest::Client::new();

    let served: Value = http
        .get(format!("{url}/api/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served, kiln_server::openapi_document());

    let paths = served["paths"].as_object().unwrap();
    let mut checked = 0;
    for (path, operations) in paths {
        for method in operations.as_object().unwrap().keys() {
            let concrete = path.replace("{id}", "t_unknown").replace("{n}", "1");
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let response = http
                .request(method.clone(), format!("{url}{concrete}"))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body = response.text().await.unwrap();
            assert_ne!(status, 405, "{method} {path} is documented but not routed");
            assert!(
                !body.contains("\"message\":\"route "),
                "{method} {path} is documented but falls through: {body}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} operations documented");
    shutdown.cancel();
    running.await.unwrap().unwrap();
}
