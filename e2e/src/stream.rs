//! A WebSocket client for berth's streaming URLs (the tests' second client, besides the
//! node one in e2e/node): tokio-tungstenite with one Kubernetes subprotocol.

use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Opens the streaming URL `url` (http://host:port/...) as a WebSocket with `protocol`.
pub async fn ws_connect(url: &str, protocol: &str) -> WebSocketStream<tokio::net::TcpStream> {
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut req = ws_url.as_str().into_client_request().expect("request");
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().expect("header"));
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let tcp = tokio::net::TcpStream::connect(&host)
        .await
        .expect("connect");
    tcp.set_nodelay(true).ok();
    let (ws, _) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("upgrade");
    ws
}
