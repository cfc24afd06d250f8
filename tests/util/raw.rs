//! Hand-written MQTT 3.1.1 packets over a plain byte stream, TCP or WebSocket,
//! for what a well-behaved client library never sends.

use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;

use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::http::HeaderValue;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;
use ws_stream_tungstenite::WsStream;

use super::{TestBroker, Transport, PATIENCE};

/// A byte stream to the broker.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> Stream for T {}

/// A raw connection to the broker: bytes in, MQTT packets out.
pub(crate) struct RawConnection {
    stream: Pin<Box<dyn Stream>>,
}

/// PINGREQ.
pub(crate) const PINGREQ: [u8; 2] = [0xC0, 0x00];
/// PINGRESP.
pub(crate) const PINGRESP: [u8; 2] = [0xD0, 0x00];
/// CONNACK, session not present, accepted.
pub(crate) const CONNACK_ACCEPTED: [u8; 4] = [0x20, 0x02, 0x00, 0x00];

fn string(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("short string");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A CONNECT with clean session, a 60 s keepalive, username and password.
pub(crate) fn connect_packet(client_id: &str, username: &str, password: &str) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, "MQTT");
    body.push(4); // protocol level: 3.1.1
    body.push(0x80 | 0x40 | 0x02); // username, password, clean session
    body.extend_from_slice(&60u16.to_be_bytes());
    string(&mut body, client_id);
    string(&mut body, username);
    string(&mut body, password);
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = u8::try_from(len % 128).expect("below 128");
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    packet
}

impl RawConnection {
    /// Opens a connection (for WebSocket, finishes the HTTP upgrade); sends nothing.
    pub(crate) async fn open(broker: &TestBroker, transport: Transport) -> Self {
        Self::open_from(broker, transport, Ipv4Addr::LOCALHOST).await
    }

    /// Like [`RawConnection::open`], from another loopback address (`127.x.y.z`),
    /// for tests of what the broker does per client address.
    pub(crate) async fn open_from(broker: &TestBroker, transport: Transport, ip: Ipv4Addr) -> Self {
        let connect = |addr: SocketAddr| async move {
            let socket = TcpSocket::new_v4().expect("TCP socket");
            socket
                .bind(SocketAddr::from((ip, 0)))
                .expect("bind a loopback address");
            socket.connect(addr).await.expect("TCP connect")
        };
        let stream: Pin<Box<dyn Stream>> = match transport {
            Transport::Tcp => Box::pin(connect(broker.mqtt_addr()).await),
            Transport::Ws => {
                let addr = broker.ws_addr();
                let tcp = connect(addr).await;
                let mut request = format!("ws://{addr}/mqtt")
                    .into_client_request()
                    .expect("WebSocket request");
                request
                    .headers_mut()
                    .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
                let (ws, _response) = async_tungstenite::tokio::client_async(request, tcp)
                    .await
                    .expect("WebSocket upgrade");
                Box::pin(WsStream::new(ws))
            }
        };
        Self { stream }
    }

    /// Writes bytes.
    pub(crate) async fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).await.expect("write");
    }

    /// Writes bytes; an error once the broker has closed the connection.
    pub(crate) async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Reads one whole packet; `None` once the broker has closed the connection
    /// (end of stream, or a reset).
    pub(crate) async fn recv(&mut self) -> Option<Vec<u8>> {
        tokio::time::timeout(PATIENCE, self.read_packet())
            .await
            .expect("neither a packet nor the end of the connection within patience")
            .ok()
    }

    async fn read_packet(&mut self) -> std::io::Result<Vec<u8>> {
        let mut packet = vec![self.stream.read_u8().await?];
        let mut len = 0usize;
        for shift in [0, 7, 14, 21] {
            let byte = self.stream.read_u8().await?;
            packet.push(byte);
            len |= usize::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        let start = packet.len();
        packet.resize(start + len, 0);
        self.stream.read_exact(&mut packet[start..]).await?;
        Ok(packet)
    }
}
