//! The messenger client: what an app links to be one device of a user.
//!
//! [`Client::connect`] signs in over MQTT and returns a [`Client`] (requests:
//! send and reply, send with files, edit, delete, react, history, search,
//! conversations, receipts, typing, presence) and an [`EventStream`] (messages, edits,
//! deletions, reactions, receipts, membership changes, typing, presence,
//! connection changes). The client keeps the device's inbox cursor, drops
//! repeated events and fills gaps with `sync`, publishes cumulative `delivered`
//! receipts in batches, retries unacknowledged sends with the same id, and
//! reconnects with backoff, using a device token instead of the password once
//! the bridge has issued one.
//!
//! # Layout
//!
//! - [`config`]: [`ClientConfig`], [`Transport`] and [`Trust`] (TLS); rumqttc's options from them.
//! - `client`: the public handle [`Client`] and the [`EventStream`].
//! - [`event`]: what the app receives: [`ClientEvent`], [`Message`], [`Edit`],
//!   [`Deletion`], [`Reaction`], [`Receipt`], [`Member`], [`HistoryPage`],
//!   [`SearchPage`], [`Ack`].
//! - [`error`]: [`ClientError`] and [`RefusalCode`].
//! - `files`: [`WebFiles`], uploads and downloads over HTTP on the web listener.
//! - `connection`: the task that drives rumqttc's event loop, reconnects with
//!   backoff (`backoff`) and switches credentials.
//! - `session`: the task that owns the protocol state: pending requests
//!   (`requests`), the inbox cursor (`inbox`), batched receipts (`receipts`).
//!
//! # Example
//!
//! ```no_run
//! use messenger_client::{Client, ClientConfig, ClientEvent};
//! use messenger_protocol::{ConvId, DeviceId, UserId};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let alice = UserId::parse("alice")?;
//! let config = ClientConfig::new("127.0.0.1:1883", alice.clone(), DeviceId::parse("phone")?, "pw");
//! let (client, mut events) = Client::connect(config).await?;
//!
//! let dm = ConvId::direct(&alice, &UserId::parse("bob")?)?;
//! let ack = client.send(&dm, "hello").await?;
//! println!("stored as #{} at {}", ack.seq, ack.ts);
//!
//! while let Some(event) = events.next().await {
//!     match event {
//!         ClientEvent::Message(m) if m.from != alice => {
//!             println!("{}: {}", m.from, m.body);
//!             client.mark_read(&m.conv, m.seq).await?;
//!         }
//!         ClientEvent::Receipt(r) => println!("{} {:?} up to #{}", r.user, r.status, r.seq),
//!         _ => {}
//!     }
//!     # break;
//! }
//! client.disconnect().await;
//! # Ok(())
//! # }
//! ```

pub mod config;
pub mod error;
pub mod event;

mod backoff;
mod client;
mod connection;
mod files;
mod inbox;
mod receipts;
mod requests;
mod session;

pub use client::{Client, EventStream};
pub use config::{ClientConfig, Transport, Trust};
pub use error::{ClientError, RefusalCode};
pub use event::{
    Ack, ClientEvent, Deletion, Edit, HistoryItem, HistoryPage, Member, Message, Reaction, Receipt,
    SearchPage,
};
pub use files::WebFiles;
pub use requests::new_request_id;
