//! Upgrades through the proxy: a WebSocket echo session end to end.

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::support;

/// A WebSocket server that echoes every message with a prefix.
pub(crate) async fn websocket_echo() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = socket.next().await {
                    let reply = match message {
                        Message::Text(text) => Message::text(format!("echo:{text}")),
                        Message::Binary(data) => Message::Binary(data),
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    if socket.send(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_session_through_a_dedicated_port() {
    let upstream = websocket_echo().await;
    let proxy = support::outbound_to(&[upstream], "http1").await;
    let svc = proxy.addrs().service("svc").unwrap();
    let stream = TcpStream::connect(svc).await.unwrap();
    let (mut socket, response) = tokio_tungstenite::client_async("ws://svc/chat", stream)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    for i in 0..10 {
        socket.send(Message::text(format!("m{i}"))).await.unwrap();
        let reply = socket.next().await.unwrap().unwrap();
        assert_eq!(reply, Message::text(format!("echo:m{i}")));
    }
    let blob = vec![7u8; 200_000];
    socket.send(Message::binary(blob.clone())).await.unwrap();
    let reply = socket.next().await.unwrap().unwrap();
    assert_eq!(reply.into_data().as_ref(), blob.as_slice());
    socket.close(None).await.unwrap();
}

#[tokio::test]
async fn websocket_session_through_the_shared_port() {
    let upstream = websocket_echo().await;
    let proxy = support::outbound_to(&[upstream], "auto").await;
    let shared = proxy.addrs().outbound.unwrap();
    let stream = TcpStream::connect(shared).await.unwrap();
    let (mut socket, _) = tokio_tungstenite::client_async("ws://svc/", stream)
        .await
        .unwrap();
    socket.send(Message::text("hello")).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::text("echo:hello")
    );
}

/// A drain waits for an open WebSocket session (it left the HTTP server when it was
/// upgraded) until `drain_timeout`, then closes it: the session works during the drain
/// and ends at its deadline, and the shutdown returns.
#[tokio::test]
async fn a_drain_waits_for_websocket_sessions_then_closes_them() {
    let upstream = websocket_echo().await;
    let proxy = support::sidecar(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}\ndrain_timeout: 3s\n\
         services:\n  svc:\n    listen: 127.0.0.1:0\n    protocol: http1\n    endpoints: [{upstream}]\n"
    ))
    .await;
    let svc = proxy.addrs().service("svc").unwrap();
    let stream = TcpStream::connect(svc).await.unwrap();
    let (mut socket, _) = tokio_tungstenite::client_async("ws://svc/chat", stream)
        .await
        .unwrap();
    socket.send(Message::text("before")).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::text("echo:before")
    );

    let shutdown = tokio::spawn(proxy.shutdown());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !shutdown.is_finished(),
        "the drain waits for the open session"
    );
    socket.send(Message::text("during")).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::text("echo:during"),
        "the session still works while draining"
    );
    tokio::time::timeout(std::time::Duration::from_secs(10), shutdown)
        .await
        .expect("the shutdown ends at the drain deadline")
        .unwrap();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), socket.next())
        .await
        .expect("the session is closed, not left hanging");
    assert!(!matches!(ended, Some(Ok(Message::Text(_)))), "{ended:?}");
}
