//! WebSocket streams as a client sends them to the streaming server: frames (masked,
//! fragmented, control frames) read with the server's limits, then each binary message
//! through berth's channel protocol (stdin, resize JSON, v5 close).
use std::io::Cursor;

use berth_agent::streaming::ws::inbound;
use tungstenite::Message;
use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let v5 = data.first().is_some_and(|b| b & 1 == 1);
        let config = WebSocketConfig::default()
            .max_message_size(Some(1 << 20))
            .max_frame_size(Some(1 << 20));
        let mut ws =
            WebSocket::from_raw_socket(Cursor::new(data.to_vec()), Role::Server, Some(config));
        for _ in 0..64 {
            match ws.read() {
                Ok(Message::Binary(b)) => {
                    let _ = inbound(&b, v5);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
}
