use super::*;
use crate::tls::{ALPN_HTTP1, Identity, pki::init_dir, server_config};

/// A hub-like listener that refuses every client certificate: the client
/// presents one from another CA. Answers one connection.
async fn refusing_hub(fleet: &Path) -> String {
    let cfg = server_config(
        &Identity { ca: &fleet.join("ca.pem"), cert: &fleet.join("hub.pem"), key: &fleet.join("hub.key") },
        true,
        None,
        ALPN_HTTP1,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await;
    });
    format!("https://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_that_ends_the_connection_before_the_request_is_still_named() {
    let (fleet, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    init_dir(fleet.path(), &[]).unwrap();
    init_dir(other.path(), &[]).unwrap();
    let url = refusing_hub(fleet.path()).await;
    let foreign = (other.path().join("relay-a.pem"), other.path().join("relay-a.key"));
    let hc = HubClient::new(&url, &fleet.path().join("ca.pem"), Some((&foreign.0, &foreign.1)), None).unwrap();
    // TLS 1.3: the client's side of the handshake is done before the hub
    // refuses its certificate. Here the hub's alert ends the connection's
    // task before the request is handed to it (the race a relay can lose).
    let Conn { mut send, task } = hc.dial().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !task.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the refused connection's task did not end");
    let req = Request::builder().uri("/api/v1/healthz").header("host", "hub").body(Full::default()).unwrap();
    let lost = send.send_request(req).await.unwrap_err();
    assert!(lost.is_canceled(), "the request itself learns nothing: {lost}");
    let err = hc.failure(lost, task).await;
    assert!(err.tls_refused(), "a refused certificate is not a refusal: {err}");
    assert!(err.to_string().contains("received fatal alert"), "the refusal does not say why: {err}");
}

#[test]
fn urls_name_host_and_port() {
    let a = |u: &str| authority_of(u);
    assert_eq!(a("https://hub.example:8443"), Some(("hub.example:8443".into(), "hub.example".into())));
    assert_eq!(a("https://hub.example/"), Some(("hub.example:443".into(), "hub.example".into())));
    assert_eq!(a("https://127.0.0.1:17010"), Some(("127.0.0.1:17010".into(), "127.0.0.1".into())));
    assert_eq!(a("https://[::1]:17010"), Some(("[::1]:17010".into(), "::1".into())));
    assert_eq!(a("http://hub.example"), None);
    assert_eq!(a("hub.example:443"), None);
    assert_eq!(a("https://"), None);
}
