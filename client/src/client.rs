//! The public handle, [`Client`], and the event stream, [`EventStream`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use messenger_protocol::wire::{
    self, AttachmentRef, ConversationItem, ErrorCode, Request, RequestId,
};
use messenger_protocol::{topics, ConvId, DeviceId, UserId};
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, NetworkOptions, Packet};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::config::{ClientConfig, MQTT_CHANNEL_CAPACITY};
use crate::connection::{Connection, NetEvent};
use crate::error::{ClientError, RefusalCode};
use crate::event::{Ack, ClientEvent, HistoryPage, SearchPage};
use crate::requests::{new_request_id, Retry};
use crate::session::{encode, Command, Session};

/// Capacity of the channel from handles to the session task.
const COMMAND_CAPACITY: usize = 256;
/// How long [`Client::disconnect`] waits for the session to finish.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of an MQTT PUBLISH besides the topic and payload: fixed header (at most
/// 5), topic length (2), packet id (2).
const PUBLISH_OVERHEAD: usize = 9;

/// One signed-in device. Cheap to clone; every clone drives the same connection.
///
/// Dropping the last clone stops the connection abruptly (the broker then
/// publishes the device's `offline` last will); [`Client::disconnect`] ends it cleanly.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    commands: mpsc::Sender<Command>,
    /// The last `useq` applied, kept by the session task.
    cursor: Arc<AtomicU64>,
    user: UserId,
    device: DeviceId,
    request_timeout: Duration,
    max_packet_bytes: usize,
    /// The `out` topic's length, for the packet size check.
    out_topic_len: usize,
    /// Stops both tasks.
    shutdown: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The events of a [`Client`], in order. Unbounded: read it, or drop it if the
/// app has no use for events (a dropped stream costs nothing).
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::UnboundedReceiver<ClientEvent>,
}

impl EventStream {
    /// The next event; `None` once the client has stopped (disconnected, dropped,
    /// or refused for good after [`ClientEvent::Refused`]).
    pub async fn next(&mut self) -> Option<ClientEvent> {
        self.rx.recv().await
    }

    /// The next event if one is already waiting.
    pub fn try_next(&mut self) -> Option<ClientEvent> {
        self.rx.try_recv().ok()
    }
}

impl Client {
    /// Signs in and starts the client's tasks on the current Tokio runtime.
    ///
    /// Resolves when the broker accepts the first CONNECT: a refusal is
    /// [`ClientError::Refused`] (e.g. [`RefusalCode::BadCredentials`]), an
    /// unreachable broker [`ClientError::Mqtt`]. From then on the client
    /// reconnects by itself, with backoff, and says so on the [`EventStream`]
    /// ([`ClientEvent::Disconnected`], [`ClientEvent::Connected`]). On every
    /// connection it subscribes to its inbox and reply topics, publishes `online`
    /// and syncs the inbox from its cursor.
    pub async fn connect(config: ClientConfig) -> Result<(Client, EventStream), ClientError> {
        let brokers = config.every_broker()?;
        let options = config.mqtt_options()?;
        let (mqtt, mut eventloop) = AsyncClient::new(options, MQTT_CHANNEL_CAPACITY);
        // A request is one small packet: Nagle's algorithm would hold it back until
        // the broker acknowledged the previous one (up to a delayed ACK, ~40 ms).
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        first_connack(&mut eventloop).await?;
        debug!(client_id = %config.client_id(), "signed in");

        let shutdown = CancellationToken::new();
        let cursor = Arc::new(AtomicU64::new(config.start_after_useq));
        let (net_tx, net_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_CAPACITY);
        let (tokens_tx, tokens_rx) = watch::channel(None);
        // The session's first event: this connection.
        net_tx
            .send(NetEvent::Connected { with_token: false })
            .map_err(|_| ClientError::Closed)?;

        let session = Session::new(
            config.user.clone(),
            &config.device,
            config.start_after_useq,
            mqtt,
            events_tx,
            cursor.clone(),
            tokens_tx,
            !config.password_is_token(),
        );
        let connection = Connection {
            eventloop,
            events: net_tx,
            tokens: tokens_rx,
            user: config.user.to_string(),
            password: config.password.clone(),
            brokers,
            next_broker: 1,
        };
        tokio::spawn(connection.run(shutdown.clone()));
        tokio::spawn(session.run(commands_rx, net_rx, shutdown.clone()));

        let client = Client {
            inner: Arc::new(Inner {
                commands: commands_tx,
                cursor,
                out_topic_len: topics::out(&config.user, &config.device).len(),
                user: config.user,
                device: config.device,
                request_timeout: config.request_timeout,
                max_packet_bytes: config.max_packet_bytes,
                shutdown,
            }),
        };
        Ok((client, EventStream { rx: events_rx }))
    }

    /// The signed-in user.
    pub fn user(&self) -> &UserId {
        &self.inner.user
    }

    /// This device.
    pub fn device(&self) -> &DeviceId {
        &self.inner.device
    }

    /// The last inbox `useq` applied (handed to the [`EventStream`]). It may be
    /// ahead of the events the app has read; persist [`ClientEvent::useq`] of the
    /// last event handled instead when that matters.
    pub fn cursor(&self) -> u64 {
        self.inner.cursor.load(Ordering::Acquire)
    }

    /// Sends a message with a new request id; see [`Client::send_with_id`].
    pub async fn send(&self, conv: &ConvId, body: &str) -> Result<Ack, ClientError> {
        self.send_with_id(new_request_id(), conv, body).await
    }

    /// Sends a message and resolves with the bridge's `ack`: the message is stored
    /// and has its `seq`. Until then the request is published again, with the same
    /// id, after every reconnect and every 10 s, so the message is stored once.
    ///
    /// When the user is over the server's send rate (`rate_limited`), the send
    /// waits the time the server names and tries again, within `request_timeout`.
    /// Fails with [`ClientError::Server`] when the bridge refuses it (e.g.
    /// `not_member`, `too_large`, or `rate_limited` past the timeout), and with [`ClientError::Timeout`] when no reply
    /// came within `request_timeout`; the message may still have been stored then,
    /// and calling this again with the same `id` is safe: it stores nothing new and
    /// returns the original ack. Apps that keep an outbox persist `id` (from
    /// [`new_request_id`](crate::new_request_id)) with the message before sending.
    pub async fn send_with_id(
        &self,
        id: RequestId,
        conv: &ConvId,
        body: &str,
    ) -> Result<Ack, ClientError> {
        self.send_message(id, conv, body, None, Vec::new()).await
    }

    /// Sends a message carrying files this user uploaded ([`WebFiles::upload`](crate::WebFiles::upload)),
    /// at most 10; `body` may then be empty. Otherwise as [`Client::send`].
    pub async fn send_files(
        &self,
        conv: &ConvId,
        body: &str,
        attachments: Vec<AttachmentRef>,
    ) -> Result<Ack, ClientError> {
        self.send_message(new_request_id(), conv, body, None, attachments)
            .await
    }

    /// Sends a message that replies to the message `reply_to` (its seq) of the
    /// same conversation; otherwise as [`Client::send`].
    pub async fn reply(
        &self,
        conv: &ConvId,
        reply_to: u64,
        body: &str,
    ) -> Result<Ack, ClientError> {
        self.send_message(new_request_id(), conv, body, Some(reply_to), Vec::new())
            .await
    }

    async fn send_message(
        &self,
        id: RequestId,
        conv: &ConvId,
        body: &str,
        reply_to: Option<u64>,
        attachments: Vec<AttachmentRef>,
    ) -> Result<Ack, ClientError> {
        let request = Request::Send {
            id: id.clone(),
            conv: conv.clone(),
            body: body.to_owned(),
            reply_to,
            attachments,
        };
        self.acked(conv, &request).await
    }

    /// Replaces the text of this user's message `target` in `conv` (within the
    /// server's edit window). Resolves with the `ack` of the `edit` event; retried
    /// with the same id like [`Client::send`].
    pub async fn edit(&self, conv: &ConvId, target: u64, body: &str) -> Result<Ack, ClientError> {
        let request = Request::Edit {
            id: new_request_id(),
            conv: conv.clone(),
            target,
            body: body.to_owned(),
        };
        self.acked(conv, &request).await
    }

    /// Deletes the message `target` of `conv` for everyone (this user's own, or
    /// any in a group this user administers): its text is erased on the server.
    pub async fn delete(&self, conv: &ConvId, target: u64) -> Result<Ack, ClientError> {
        let request = Request::Delete {
            id: new_request_id(),
            conv: conv.clone(),
            target,
        };
        self.acked(conv, &request).await
    }

    /// Reacts to the message `target` of `conv` with `emoji` (1 to 16 bytes),
    /// replacing this user's earlier reaction; `""` takes it back.
    pub async fn react(&self, conv: &ConvId, target: u64, emoji: &str) -> Result<Ack, ClientError> {
        let request = Request::React {
            id: new_request_id(),
            conv: conv.clone(),
            target,
            emoji: emoji.to_owned(),
        };
        self.acked(conv, &request).await
    }

    /// Publishes an idempotent request (until its reply, like a send) and reads its `ack`.
    /// A `rate_limited` answer is waited out (its `retry_after_ms`) and the same
    /// request, same id, published again, for as long as `request_timeout` allows
    /// from the first try; after that the `rate_limited` error is returned.
    async fn acked(&self, conv: &ConvId, request: &Request) -> Result<Ack, ClientError> {
        let id = request
            .id()
            .ok_or_else(|| ClientError::InvalidRequest("a request without an id".into()))?
            .as_str()
            .to_owned();
        let deadline = tokio::time::Instant::now() + self.inner.request_timeout;
        let reply = loop {
            match self.request(&id, request, Retry::Periodic).await {
                Err(ClientError::Server {
                    code: ErrorCode::RateLimited,
                    retry_after: Some(wait),
                    ..
                }) if tokio::time::Instant::now() + wait < deadline => {
                    debug!(id, ?wait, "rate limited; waiting to retry");
                    tokio::time::sleep(wait).await;
                }
                other => break other?,
            }
        };
        match reply {
            wire::Event::Ack {
                id,
                conv: acked,
                seq: Some(seq),
                ts: Some(ts),
            } => Ok(Ack {
                id,
                conv: acked.unwrap_or_else(|| conv.clone()),
                seq,
                ts,
            }),
            other => Err(unexpected("an ack with seq and ts", &other)),
        }
    }

    /// A page of the messages whose text holds every word of `query`
    /// (case-insensitively), newest first, in the conversations this user may
    /// read (only `conv` when given). Pass the page's `next` as `cursor` for
    /// the following one.
    pub async fn search(
        &self,
        query: &str,
        conv: Option<&ConvId>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<SearchPage, ClientError> {
        let id = new_request_id();
        let request = Request::Search {
            id: id.clone(),
            query: query.to_owned(),
            conv: conv.cloned(),
            cursor: cursor.map(str::to_owned),
            limit: Some(limit),
        };
        match self
            .request(id.as_str(), &request, Retry::OnReconnect)
            .await?
        {
            wire::Event::Search {
                results,
                more,
                next,
                ..
            } => Ok(SearchPage::from_wire(results, more, next)),
            other => Err(unexpected("search results", &other)),
        }
    }

    /// A page of `conv`'s history: up to `limit` messages and membership changes
    /// just before seq `before` (the newest when `None`), oldest first.
    pub async fn history(
        &self,
        conv: &ConvId,
        before: Option<u64>,
        limit: u32,
    ) -> Result<HistoryPage, ClientError> {
        let id = new_request_id();
        let request = Request::History {
            id: id.clone(),
            conv: conv.clone(),
            before,
            limit: Some(limit),
        };
        match self
            .request(id.as_str(), &request, Retry::OnReconnect)
            .await?
        {
            wire::Event::History {
                conv, events, more, ..
            } => Ok(HistoryPage::from_wire(conv, events, more)),
            other => Err(unexpected("a history page", &other)),
        }
    }

    /// The user's conversations, with their last seq, read receipt and unread count
    /// (every page of them).
    pub async fn conversations(&self) -> Result<Vec<ConversationItem>, ClientError> {
        let mut all = Vec::new();
        let mut cursor = None;
        loop {
            let id = new_request_id();
            let request = Request::Conversations {
                id: id.clone(),
                limit: None,
                cursor: cursor.take(),
            };
            match self
                .request(id.as_str(), &request, Retry::OnReconnect)
                .await?
            {
                wire::Event::Conversations {
                    items, more, next, ..
                } => {
                    all.extend(items);
                    match next {
                        Some(next) if more => cursor = Some(next),
                        _ => return Ok(all),
                    }
                }
                other => return Err(unexpected("a conversation list", &other)),
            }
        }
    }

    /// Blocks `user`: they can no longer send, edit or react in the 1-1 chat with
    /// this user, nor see this user's presence. Blocking someone blocked already
    /// succeeds and changes nothing.
    pub async fn block(&self, user: &UserId) -> Result<(), ClientError> {
        let id = new_request_id();
        let request = Request::Block {
            id: id.clone(),
            user: user.clone(),
        };
        self.ack_only(&id, &request).await
    }

    /// Takes back a block of `user` (succeeds if there was none).
    pub async fn unblock(&self, user: &UserId) -> Result<(), ClientError> {
        let id = new_request_id();
        let request = Request::Unblock {
            id: id.clone(),
            user: user.clone(),
        };
        self.ack_only(&id, &request).await
    }

    /// The users this user blocks, by user id.
    pub async fn blocks(&self) -> Result<Vec<UserId>, ClientError> {
        let id = new_request_id();
        let request = Request::Blocks { id: id.clone() };
        match self
            .request(id.as_str(), &request, Retry::OnReconnect)
            .await?
        {
            wire::Event::Blocks { users, .. } => Ok(users),
            other => Err(unexpected("a list of blocked users", &other)),
        }
    }

    /// Publishes a request that answers a bare `ack` and is harmless to repeat
    /// (again after a reconnect), and waits for that `ack`.
    async fn ack_only(&self, id: &RequestId, request: &Request) -> Result<(), ClientError> {
        match self
            .request(id.as_str(), request, Retry::OnReconnect)
            .await?
        {
            wire::Event::Ack { .. } => Ok(()),
            other => Err(unexpected("an ack", &other)),
        }
    }

    /// Sends any request that carries an id (`group_create`, `group_add`, `mute`,
    /// `push_register`, ...) and resolves with its reply; an `error` reply is
    /// [`ClientError::Server`]. Unlike [`Client::send`], such a request is published
    /// once (when connected) and never repeated, since not every request is idempotent.
    pub async fn call(&self, request: Request) -> Result<wire::Event, ClientError> {
        let id = request.id().ok_or_else(|| {
            ClientError::InvalidRequest("this request type has no id and gets no reply".into())
        })?;
        let id = id.as_str().to_owned();
        self.request(&id, &request, Retry::Never).await
    }

    /// Marks everything up to `seq` in `conv` read (a cumulative `read` receipt).
    /// Receipts are batched: several calls within 50 ms publish one receipt, and
    /// while disconnected the receipt waits for the next connection.
    pub async fn mark_read(&self, conv: &ConvId, seq: u64) -> Result<(), ClientError> {
        self.command(Command::Read {
            conv: conv.clone(),
            seq,
        })
        .await
    }

    /// Tells the other members that this user is typing (dropped while disconnected).
    pub async fn typing(&self, conv: &ConvId) -> Result<(), ClientError> {
        self.command(Command::Typing { conv: conv.clone() }).await
    }

    /// Follows `user`'s presence: [`ClientEvent::Status`] now (the retained value,
    /// if any) and on every change, across reconnects.
    pub async fn subscribe_status(&self, user: &UserId) -> Result<(), ClientError> {
        self.command(Command::Status {
            user: user.clone(),
            follow: true,
        })
        .await
    }

    /// Stops following `user`'s presence.
    pub async fn unsubscribe_status(&self, user: &UserId) -> Result<(), ClientError> {
        self.command(Command::Status {
            user: user.clone(),
            follow: false,
        })
        .await
    }

    /// Ends the session cleanly: publishes pending receipts and `offline`
    /// (retained; waits up to 2 s for the broker's PUBACK), then a clean MQTT
    /// DISCONNECT, which fires no last will. Every clone of this client is
    /// closed too; the [`EventStream`] ends. Requests still waiting fail with
    /// [`ClientError::Closed`].
    pub async fn disconnect(self) {
        let (done_tx, done_rx) = oneshot::channel();
        let asked = tokio::time::timeout(DISCONNECT_TIMEOUT, async {
            if self
                .inner
                .commands
                .send(Command::Disconnect { done: done_tx })
                .await
                .is_ok()
            {
                let _ = done_rx.await;
            }
        })
        .await;
        if asked.is_err() {
            debug!("graceful disconnect took too long; stopping");
        }
        self.inner.shutdown.cancel();
    }

    async fn command(&self, command: Command) -> Result<(), ClientError> {
        self.inner
            .commands
            .send(command)
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Publishes a request through the session and waits for the reply with `id`.
    async fn request(
        &self,
        id: &str,
        request: &Request,
        retry: Retry,
    ) -> Result<wire::Event, ClientError> {
        let payload = encode(request);
        let size = PUBLISH_OVERHEAD + self.inner.out_topic_len + payload.len();
        if size > self.inner.max_packet_bytes {
            return Err(ClientError::TooLarge {
                size,
                limit: self.inner.max_packet_bytes,
            });
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        let command = Command::Request {
            id: id.to_owned(),
            payload,
            retry,
            reply: reply_tx,
        };
        tokio::time::timeout(self.inner.request_timeout, async {
            self.command(command).await?;
            reply_rx.await.map_err(|_| ClientError::Closed)?
        })
        .await
        .map_err(|_| ClientError::Timeout)?
    }
}

/// Polls the fresh event loop for the first CONNACK (rumqttc bounds the attempt
/// with its connection timeout, 5 s).
async fn first_connack(eventloop: &mut EventLoop) -> Result<(), ClientError> {
    match eventloop.poll().await {
        Ok(Event::Incoming(Packet::ConnAck(_))) => Ok(()),
        Ok(other) => Err(ClientError::Decode(format!(
            "expected CONNACK, got {other:?}"
        ))),
        Err(ConnectionError::ConnectionRefused(code)) => match RefusalCode::from_mqtt(code) {
            Some(code) => Err(ClientError::Refused(code)),
            None => Err(ClientError::Mqtt(Box::new(
                ConnectionError::ConnectionRefused(code),
            ))),
        },
        Err(err) => Err(ClientError::Mqtt(Box::new(err))),
    }
}

fn unexpected(wanted: &str, got: &wire::Event) -> ClientError {
    let kind = serde_json::to_value(got)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
        .unwrap_or_default();
    ClientError::Decode(format!("expected {wanted}, got a {kind:?} reply"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_with_ids_can_be_called() {
        let conv = ConvId::parse("dm:alice:bob").unwrap();
        assert!(Request::Typing { conv: conv.clone() }.id().is_none());
        let id = new_request_id();
        assert_eq!(
            Request::GroupLeave {
                id: id.clone(),
                conv
            }
            .id(),
            Some(&id)
        );
    }

    #[test]
    fn unexpected_names_the_reply_type() {
        let got = wire::Event::Ack {
            id: new_request_id(),
            conv: None,
            seq: None,
            ts: None,
        };
        let err = unexpected("a history page", &got).to_string();
        assert!(err.contains("\"ack\""), "{err}");
    }
}
