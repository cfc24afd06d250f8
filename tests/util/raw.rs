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
    connect_packet_with(client_id, username, password, true)
}

/// A CONNECT with a 60 s keepalive, username and password, and clean session
/// `clean` (false: the broker keeps the session for the client id).
pub(crate) fn connect_packet_with(
    client_id: &str,
    username: &str,
    password: &str,
    clean: bool,
) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, "MQTT");
    body.push(4); // protocol level: 3.1.1
    body.push(0x80 | 0x40 | if clean { 0x02 } else { 0 }); // username, password, clean session
    body.extend_from_slice(&60u16.to_be_bytes());
    string(&mut body, client_id);
    string(&mut body, username);
    string(&mut body, password);
    packet(0x10, &body)
}

/// A SUBSCRIBE of one filter at `qos`, packet id `pkid`.
pub(crate) fn subscribe_packet(pkid: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    string(&mut body, filter);
    body.push(qos);
    packet(0x82, &body)
}

/// An UNSUBSCRIBE of one filter, packet id `pkid`.
pub(crate) fn unsubscribe_packet(pkid: u16, filter: &str) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    string(&mut body, filter);
    packet(0xA2, &body)
}

/// A PUBACK of packet id `pkid`.
pub(crate) fn puback_packet(pkid: u16) -> Vec<u8> {
    packet(0x40, &pkid.to_be_bytes())
}

/// DISCONNECT.
pub(crate) const DISCONNECT: [u8; 2] = [0xE0, 0x00];

/// A received PUBLISH, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawPublish {
    pub(crate) retain: bool,
    pub(crate) qos: u8,
    pub(crate) topic: String,
    /// The packet id, for QoS 1 and 2.
    pub(crate) pkid: Option<u16>,
    pub(crate) payload: Vec<u8>,
}

/// `packet` (a whole packet, as [`RawConnection::recv`] returns it) as a PUBLISH;
/// `None` if it is another kind of packet.
pub(crate) fn parse_publish(packet: &[u8]) -> Option<RawPublish> {
    if packet.first()? >> 4 != 3 {
        return None;
    }
    let flags = packet[0] & 0x0F;
    let qos = (flags >> 1) & 0x03;
    // the fixed header: the type byte and 1-4 bytes of remaining length
    let mut at = 1;
    while packet.get(at)? & 0x80 != 0 {
        at += 1;
    }
    let mut rest = &packet[at + 1..];
    let topic_len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
    let topic = String::from_utf8(rest.get(2..2 + topic_len)?.to_vec()).ok()?;
    rest = &rest[2 + topic_len..];
    let pkid = if qos > 0 {
        let pkid = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]);
        rest = &rest[2..];
        Some(pkid)
    } else {
        None
    };
    Some(RawPublish {
        retain: flags & 0x01 != 0,
        qos,
        topic,
        pkid,
        payload: rest.to_vec(),
    })
}

/// A packet: the type byte, the remaining length, `body`.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut packet = vec![first];
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
    packet.extend_from_slice(body);
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
