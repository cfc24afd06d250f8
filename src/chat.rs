//! `messenger send | download | edit | delete | react | search | listen | history | chat |
//! block | unblock | blocks`:
//! one device of a user, through the
//! client library, on the command line.
//!
//! Each run signs in as `--user` on `--device` (default `cli`). The inbox cursor
//! of each broker, user and device is kept in a small file between runs of
//! `listen` and `chat`, so that they print what arrived since the last run once,
//! not the whole inbox every time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use messenger_client::{
    Client, ClientConfig, ClientEvent, EventStream, HistoryItem, Trust, WebFiles,
};
use messenger_protocol::wire::AttachmentRef;
use messenger_protocol::{ConvId, DeviceId, FileId, UserId};
use tokio::sync::mpsc;
use tracing::warn;

mod commands;
mod lines;

pub(crate) use lines::format_ts;

use crate::cli::{Account, ChatCommand, GroupCommand};
use crate::settings::Settings;
use lines::{
    chat_message_line, chat_receipt_line, delete_line, edit_line, event_line, member_line,
    message_line, reaction_line,
};

/// Messages of history shown when `chat` starts.
const CHAT_BACKLOG: u32 = 10;

/// Runs one chat command on its own runtime.
pub(crate) fn run(settings: &Settings, cmd: ChatCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        match cmd {
            ChatCommand::Send {
                account,
                to,
                text,
                reply_to,
                files,
            } => send(settings, &account, &to, &text, reply_to, &files).await,
            ChatCommand::Download { account, file, out } => {
                download(settings, &account, &file, out).await
            }
            ChatCommand::Edit {
                account,
                conv,
                seq,
                text,
            } => act(settings, &account, &conv, seq, Act::Edit(&text)).await,
            ChatCommand::Delete { account, conv, seq } => {
                act(settings, &account, &conv, seq, Act::Delete).await
            }
            ChatCommand::React {
                account,
                conv,
                seq,
                emoji,
            } => act(settings, &account, &conv, seq, Act::React(&emoji)).await,
            ChatCommand::Search {
                account,
                query,
                conv,
                cursor,
                limit,
            } => {
                search(
                    settings,
                    &account,
                    &query,
                    conv.as_deref(),
                    cursor.as_deref(),
                    limit,
                )
                .await
            }
            ChatCommand::Listen { account } => listen(settings, &account).await,
            ChatCommand::History {
                account,
                with,
                before,
                limit,
            } => history(settings, &account, &with, before, limit).await,
            ChatCommand::Chat { account, with } => chat(settings, &account, &with).await,
            ChatCommand::Status {
                account,
                users,
                follow,
            } => status(settings, &account, &users, follow).await,
            ChatCommand::Group(cmd) => group(settings, cmd).await,
            ChatCommand::Block { account, who } => {
                blocking(settings, &account, Some((&who, true))).await
            }
            ChatCommand::Unblock { account, who } => {
                blocking(settings, &account, Some((&who, false))).await
            }
            ChatCommand::Blocks { account } => blocking(settings, &account, None).await,
        }
    });
    // The stdin reader of `chat` may still be blocked in a read; do not wait for it.
    runtime.shutdown_background();
    result
}

/// A signed-in client with its cursor file.
struct Session {
    client: Client,
    events: EventStream,
    cursor: CursorFile,
}

impl Session {
    fn me(&self) -> &UserId {
        self.client.user()
    }

    /// Saves the cursor (for `listen` and `chat`, which show what they applied)
    /// and disconnects cleanly.
    async fn close(self, save_cursor: bool) {
        if save_cursor {
            self.cursor.save(self.client.cursor());
        }
        self.client.disconnect().await;
    }
}

async fn connect(settings: &Settings, account: &Account) -> anyhow::Result<Session> {
    let user = UserId::parse(&account.user).context("--user")?;
    let device = DeviceId::parse(&account.device).context("--device")?;
    let broker = match &account.broker {
        Some(b) => b.clone(),
        None => default_broker(settings, account.tls)?,
    };
    let cursor = CursorFile::new(account.state_dir.as_deref(), &broker, &user, &device);
    let mut config = ClientConfig::new(
        broker.clone(),
        user.clone(),
        device,
        account.password.clone(),
    );
    config.tls = trust(account);
    config.start_after_useq = cursor.load();
    config.max_packet_bytes = settings.broker.max_packet_bytes;
    let (client, events) = Client::connect(config)
        .await
        .with_context(|| format!("cannot sign in to {broker} as {user}"))?;
    Ok(Session {
        client,
        events,
        cursor,
    })
}

/// The configuration's listener for this transport, when `--broker` is not given.
fn default_broker(settings: &Settings, tls: bool) -> anyhow::Result<String> {
    let listen = if tls {
        settings
            .broker
            .tls_listen
            .context("--tls without --broker needs broker.tls_listen in the configuration")?
    } else {
        settings.broker.listen.context(
            "broker.listen is empty (plain MQTT is off): give --tls (and broker.tls_listen) or --broker",
        )?
    };
    Ok(connect_addr(listen).to_string())
}

/// Where to connect for a listen address: a wildcard address means this machine.
fn connect_addr(listen: SocketAddr) -> SocketAddr {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    addr
}

/// The conversation `target` names for `account`'s user, checked before signing in.
fn target(account: &Account, target: &str) -> anyhow::Result<ConvId> {
    let me = UserId::parse(&account.user).context("--user")?;
    conversation(&me, target)
}

/// A user id means the 1-1 conversation with that user; `g:...` (or `dm:...`) is taken as is.
fn conversation(me: &UserId, target: &str) -> anyhow::Result<ConvId> {
    if target.starts_with("g:") || target.starts_with("dm:") {
        return ConvId::parse(target).map_err(Into::into);
    }
    let other = UserId::parse(target)?;
    ConvId::direct(me, &other).map_err(|_| anyhow!("that is you: pick another user"))
}

async fn send(
    settings: &Settings,
    account: &Account,
    to: &str,
    text: &str,
    reply_to: Option<u64>,
    files: &[PathBuf],
) -> anyhow::Result<()> {
    let conv = target(account, to)?;
    if reply_to.is_some() && !files.is_empty() {
        return Err(anyhow!("--reply-to and --file cannot be combined yet"));
    }
    let attachments = if files.is_empty() {
        Vec::new()
    } else {
        upload_all(&web_files(settings, account)?, files).await?
    };
    let session = connect(settings, account).await?;
    let result = match reply_to {
        Some(seq) => session.client.reply(&conv, seq, text).await,
        None if !attachments.is_empty() => {
            session.client.send_files(&conv, text, attachments).await
        }
        None => session.client.send(&conv, text).await,
    };
    session.close(false).await;
    let ack = result.context("not sent")?;
    println!(
        "sent to {}: seq {}, ts {} ({})",
        ack.conv,
        ack.seq,
        ack.ts,
        format_ts(ack.ts)
    );
    Ok(())
}

/// The web listener for `account`: `--web`, or the configuration's
/// `broker.ws_listen` (`broker.wss_listen` over HTTPS with `--tls`).
fn web_files(settings: &Settings, account: &Account) -> anyhow::Result<WebFiles> {
    let listen = if account.tls {
        settings.broker.wss_listen
    } else {
        settings.broker.ws_listen
    };
    let web = match (&account.web, listen) {
        (Some(web), _) => web.clone(),
        (None, Some(listen)) => connect_addr(listen).to_string(),
        (None, None) if account.tls => {
            return Err(anyhow!(
                "no web listener over TLS: pass --web host:port (broker.wss_listen is off)"
            ))
        }
        (None, None) => {
            return Err(anyhow!(
                "no web listener: pass --web host:port (broker.ws_listen is off)"
            ))
        }
    };
    Ok(WebFiles {
        web,
        user: UserId::parse(&account.user).context("--user")?,
        secret: account.password.clone(),
        tls: trust(account),
    })
}

/// What `--tls` and `--ca-file` ask a client to trust; `None` without `--tls`.
fn trust(account: &Account) -> Option<Trust> {
    account.tls.then(|| match &account.ca_file {
        Some(path) => Trust::CaFile(path.clone()),
        None => Trust::SystemRoots,
    })
}

/// Uploads each file; the attachments that name them (by their file names).
async fn upload_all(web: &WebFiles, paths: &[PathBuf]) -> anyhow::Result<Vec<AttachmentRef>> {
    let mut attachments = Vec::with_capacity(paths.len());
    for path in paths {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| anyhow!("{} names no file", path.display()))?;
        let uploaded = web
            .upload(path, media_type_of(path))
            .await
            .with_context(|| format!("cannot upload {}", path.display()))?;
        attachments.push(AttachmentRef {
            file: uploaded.file,
            name,
        });
    }
    Ok(attachments)
}

/// A media type from a file name's extension, for the common kinds.
fn media_type_of(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "md" => "text/plain",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "json" => "application/json",
        "mp4" => "video/mp4",
        "mp3" => "audio/mpeg",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    }
}

/// `download`: writes the file to `out` (or its id), which must not exist.
async fn download(
    settings: &Settings,
    account: &Account,
    file: &str,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    let file = FileId::parse(file).context("FILE")?;
    let out = out.unwrap_or_else(|| PathBuf::from(file.as_str()));
    if out.exists() {
        return Err(anyhow!("{} already exists", out.display()));
    }
    let web = web_files(settings, account)?;
    let bytes = web
        .download(&file, &out)
        .await
        .with_context(|| format!("cannot download {file}"))?;
    println!("saved {file} to {} ({bytes} bytes)", out.display());
    Ok(())
}

/// An action on a stored message.
enum Act<'a> {
    Edit(&'a str),
    Delete,
    React(&'a str),
}

/// `edit`, `delete`, `react`: prints the new event's seq.
async fn act(
    settings: &Settings,
    account: &Account,
    conv: &str,
    seq: u64,
    act: Act<'_>,
) -> anyhow::Result<()> {
    let conv = target(account, conv)?;
    let session = connect(settings, account).await?;
    let result = match act {
        Act::Edit(text) => session.client.edit(&conv, seq, text).await,
        Act::Delete => session.client.delete(&conv, seq).await,
        Act::React(emoji) => session.client.react(&conv, seq, emoji).await,
    };
    session.close(false).await;
    let ack = result.context("refused")?;
    println!("{}: seq {}", ack.conv, ack.seq);
    Ok(())
}

async fn search(
    settings: &Settings,
    account: &Account,
    query: &str,
    conv: Option<&str>,
    cursor: Option<&str>,
    limit: u32,
) -> anyhow::Result<()> {
    let conv = conv.map(|c| target(account, c)).transpose()?;
    let session = connect(settings, account).await?;
    let result = session
        .client
        .search(query, conv.as_ref(), cursor, limit)
        .await;
    session.close(false).await;
    let page = result.context("no search")?;
    for m in &page.results {
        println!("{}", message_line(m));
    }
    if page.results.is_empty() {
        eprintln!("(nothing found)");
    }
    if let (true, Some(next)) = (page.more, &page.next) {
        eprintln!("(more: --cursor {next})");
    }
    Ok(())
}

async fn history(
    settings: &Settings,
    account: &Account,
    with: &str,
    before: Option<u64>,
    limit: u32,
) -> anyhow::Result<()> {
    let conv = target(account, with)?;
    let session = connect(settings, account).await?;
    let result = session.client.history(&conv, before, limit).await;
    session.close(false).await;
    let page = result.context("no history")?;
    for item in &page.events {
        match item {
            HistoryItem::Message(m) => println!("{}", message_line(m)),
            HistoryItem::Member(m) => println!("{}", member_line(m)),
            HistoryItem::Edit(e) => println!("{}", edit_line(e)),
            HistoryItem::Delete(d) => println!("{}", delete_line(d)),
            HistoryItem::Reaction(r) => println!("{}", reaction_line(r)),
        }
    }
    if page.more {
        if let Some(first) = page.events.first() {
            eprintln!("(older: --before {})", first.seq());
        }
    }
    Ok(())
}

/// How long `status` waits for a user's retained status before saying "never seen".
const STATUS_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

async fn status(
    settings: &Settings,
    account: &Account,
    users: &[String],
    follow: bool,
) -> anyhow::Result<()> {
    let users = users
        .iter()
        .map(|u| UserId::parse(u).with_context(|| format!("user {u:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut session = connect(settings, account).await?;
    for user in &users {
        session.client.subscribe_status(user).await?;
    }
    let mut pending: std::collections::BTreeSet<UserId> = users.iter().cloned().collect();
    let deadline = tokio::time::Instant::now() + STATUS_PATIENCE;
    let outcome = loop {
        let event = tokio::select! {
            event = session.events.next() => event,
            () = tokio::time::sleep_until(deadline), if !pending.is_empty() => {
                for user in std::mem::take(&mut pending) {
                    println!("{user}: never seen");
                }
                if follow { continue } else { break Ok(()) }
            }
            _ = tokio::signal::ctrl_c(), if follow => break Ok(()),
        };
        match event {
            Some(ClientEvent::Status(s)) => {
                pending.remove(&s.user);
                println!("{}", event_line(&ClientEvent::Status(s)));
                if pending.is_empty() && !follow {
                    break Ok(());
                }
            }
            Some(ClientEvent::Refused(code)) => break Err(anyhow!("signed out: {code}")),
            Some(_) => {}
            None => break Err(anyhow!("the connection ended")),
        }
    };
    session.close(false).await;
    outcome
}

async fn group(settings: &Settings, cmd: GroupCommand) -> anyhow::Result<()> {
    use messenger_protocol::wire::{Event, Request};
    let id = messenger_client::new_request_id();
    let group = |g: &str| ConvId::parse(g).with_context(|| format!("group {g:?}"));
    let user = |u: &str| UserId::parse(u).with_context(|| format!("user {u:?}"));
    let (account, request) = match cmd {
        GroupCommand::Create {
            account,
            name,
            members,
        } => {
            let members = members
                .iter()
                .map(|m| user(m))
                .collect::<anyhow::Result<Vec<_>>>()?;
            (account, Request::GroupCreate { id, name, members })
        }
        GroupCommand::Add {
            account,
            group: g,
            member: u,
        } => {
            let (conv, user) = (group(&g)?, user(&u)?);
            (account, Request::GroupAdd { id, conv, user })
        }
        GroupCommand::Remove {
            account,
            group: g,
            member: u,
        } => {
            let (conv, user) = (group(&g)?, user(&u)?);
            (account, Request::GroupRemove { id, conv, user })
        }
        GroupCommand::Leave { account, group: g } => (
            account,
            Request::GroupLeave {
                id,
                conv: group(&g)?,
            },
        ),
    };
    let session = connect(settings, &account).await?;
    let result = session.client.call(request).await;
    session.close(false).await;
    match result.context("refused")? {
        Event::Ack {
            conv: Some(conv),
            seq: Some(seq),
            ..
        } => {
            println!("{conv}: seq {seq}");
            Ok(())
        }
        other => Err(anyhow!("unexpected reply: {other:?}")),
    }
}

async fn listen(settings: &Settings, account: &Account) -> anyhow::Result<()> {
    let mut session = connect(settings, account).await?;
    eprintln!(
        "listening as {} on {}; Ctrl-C to stop",
        session.me(),
        session.client.device()
    );
    let mut first = true;
    let outcome = loop {
        tokio::select! {
            event = session.events.next() => match event {
                Some(ClientEvent::Refused(code)) => break Err(anyhow!("signed out: {code}")),
                Some(ClientEvent::Connected) if first => first = false,
                Some(event) => println!("{}", event_line(&event)),
                None => break Err(anyhow!("the connection ended")),
            },
            _ = tokio::signal::ctrl_c() => break Ok(()),
        }
    };
    session.close(true).await;
    outcome
}

async fn chat(settings: &Settings, account: &Account, with: &str) -> anyhow::Result<()> {
    let conv = target(account, with)?;
    let mut session = connect(settings, account).await?;
    let me = session.me().clone();
    let my_device = session.client.device().to_string();
    if let Some((a, b)) = conv.direct_members() {
        let other = if *a == me { b } else { a };
        session.client.subscribe_status(other).await?;
    }
    eprintln!("chatting in {conv} as {me}; type a line and Enter to send it, /quit to leave");
    eprintln!("{}", commands::USAGE);

    // The last few messages, marked read.
    let mut shown = 0;
    let backlog = match session.client.history(&conv, None, CHAT_BACKLOG).await {
        Ok(page) => page.events,
        Err(err) => {
            eprintln!("(no history: {err})");
            Vec::new()
        }
    };
    let mut last_from_others = None;
    for item in &backlog {
        match item {
            HistoryItem::Message(m) => {
                println!("{}", chat_message_line(&me, m));
                if m.from != me {
                    last_from_others = Some(m.seq);
                }
            }
            HistoryItem::Member(m) => println!("{}", member_line(m)),
            // The messages above already show their current state.
            HistoryItem::Edit(_) | HistoryItem::Delete(_) | HistoryItem::Reaction(_) => {}
        }
        shown = item.seq();
    }
    if let Some(seq) = last_from_others {
        session.client.mark_read(&conv, seq).await?;
    }

    // Lines from stdin, sent one after the other (in order) by their own task.
    let (lines_tx, mut lines_rx) = mpsc::channel::<String>(64);
    std::thread::spawn(move || read_lines(lines_tx));
    // `/file` needs the web listener; without one it says so when used.
    let web = web_files(settings, account).map_err(|e| e.to_string());
    let sender = {
        let client = session.client.clone();
        let conv = conv.clone();
        tokio::spawn(async move {
            while let Some(line) = lines_rx.recv().await {
                if let Err(err) = typed(&client, &web, &conv, commands::parse(&line)).await {
                    eprintln!("not done ({err}): {line}");
                }
            }
        })
    };
    tokio::pin!(sender);

    let mut first = true;
    let outcome = loop {
        tokio::select! {
            event = session.events.next() => {
                let Some(event) = event else { break Err(anyhow!("the connection ended")) };
                match event {
                    ClientEvent::Message(m) if m.conv == conv => {
                        if m.seq <= shown {
                            continue;
                        }
                        shown = m.seq;
                        if m.from == me && m.device == my_device {
                            continue; // our own line, already on the screen
                        }
                        println!("{}", chat_message_line(&me, &m));
                        if m.from != me {
                            session.client.mark_read(&conv, m.seq).await?;
                        }
                    }
                    ClientEvent::Receipt(r) if r.conv == conv => {
                        if r.user != me {
                            println!("{}", chat_receipt_line(&conv, &r));
                        }
                    }
                    ClientEvent::Typing { conv: c, user } if c == conv => {
                        println!("{user} is typing…");
                    }
                    ClientEvent::Member(m) if m.conv == conv => {
                        shown = shown.max(m.seq);
                        println!("{}", member_line(&m));
                    }
                    ClientEvent::Edit(e) if e.conv == conv && e.seq > shown => {
                        shown = e.seq;
                        println!("{}", edit_line(&e));
                    }
                    ClientEvent::Delete(d) if d.conv == conv && d.seq > shown => {
                        shown = d.seq;
                        println!("{}", delete_line(&d));
                    }
                    ClientEvent::Reaction(r) if r.conv == conv && r.seq > shown => {
                        shown = r.seq;
                        println!("{}", reaction_line(&r));
                    }
                    ClientEvent::Message(m) => println!("{}", message_line(&m)),
                    ClientEvent::Receipt(_) | ClientEvent::Typing { .. } => {}
                    ClientEvent::Connected if first => first = false,
                    ClientEvent::Refused(code) => break Err(anyhow!("signed out: {code}")),
                    event => println!("{}", event_line(&event)),
                }
            }
            _ = &mut sender => break Ok(()),
            _ = tokio::signal::ctrl_c() => break Ok(()),
        }
    };
    session.close(true).await;
    outcome
}

/// Carries out a typed line in `conv`.
async fn typed(
    client: &Client,
    web: &Result<WebFiles, String>,
    conv: &ConvId,
    line: commands::Line,
) -> anyhow::Result<()> {
    use commands::Line;
    match line {
        Line::File(path) => {
            let web = web.as_ref().map_err(|e| anyhow!("{e}"))?;
            let attachments = upload_all(web, &[PathBuf::from(&path)]).await?;
            let ack = client.send_files(conv, "", attachments).await?;
            // Our own lines are not echoed back; say where the file went.
            println!("(sent {path} as #{})", ack.seq);
            Ok(())
        }
        Line::Send(text) => Ok(client.send(conv, &text).await.map(drop)?),
        Line::Reply(seq, text) => Ok(client.reply(conv, seq, &text).await.map(drop)?),
        Line::Edit(seq, text) => Ok(client.edit(conv, seq, &text).await.map(drop)?),
        Line::Delete(seq) => Ok(client.delete(conv, seq).await.map(drop)?),
        Line::React(seq, emoji) => Ok(client.react(conv, seq, &emoji).await.map(drop)?),
        Line::Search(words) => {
            let page = client.search(&words, Some(conv), None, 10).await?;
            if page.results.is_empty() {
                println!("(no message matches {words:?})");
            }
            for m in &page.results {
                println!("found: {}", message_line(m));
            }
            Ok(())
        }
        Line::Block(user, block) => {
            let Ok(user) = UserId::parse(&user) else {
                eprintln!("not a user id: {user:?}");
                return Ok(());
            };
            if block {
                client.block(&user).await?;
                println!("(blocked {user})");
            } else {
                client.unblock(&user).await?;
                println!("(unblocked {user})");
            }
            Ok(())
        }
        Line::Help(text) => {
            eprintln!("{text}");
            Ok(())
        }
    }
}

/// `block USER`, `unblock USER` (`change`: the user and whether to block), or
/// `blocks` (no change): prints what was done, or the blocked users one a line.
async fn blocking(
    settings: &Settings,
    account: &Account,
    change: Option<(&str, bool)>,
) -> anyhow::Result<()> {
    let change = match change {
        Some((user, block)) => Some((
            UserId::parse(user).with_context(|| format!("user {user:?}"))?,
            block,
        )),
        None => None,
    };
    let session = connect(settings, account).await?;
    let result = match &change {
        Some((user, true)) => session.client.block(user).await.map(|()| Vec::new()),
        Some((user, false)) => session.client.unblock(user).await.map(|()| Vec::new()),
        None => session.client.blocks().await,
    };
    session.close(false).await;
    let users = result.context("refused")?;
    match change {
        Some((user, true)) => println!("blocked {user}"),
        Some((user, false)) => println!("unblocked {user}"),
        None => {
            for user in users {
                println!("{user}");
            }
        }
    }
    Ok(())
}

/// Reads stdin line by line until end of input or `/quit`.
fn read_lines(lines: mpsc::Sender<String>) {
    use std::io::BufRead;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { return };
        let line = line.trim_end().to_owned();
        if line == "/quit" {
            return;
        }
        if line.is_empty() {
            continue;
        }
        if lines.blocking_send(line).is_err() {
            return;
        }
    }
}

/// The inbox cursor of one broker, user and device, kept between runs.
struct CursorFile {
    /// `None` when no state directory is known: every run starts from 0.
    path: Option<PathBuf>,
}

impl CursorFile {
    fn new(dir: Option<&Path>, broker: &str, user: &UserId, device: &DeviceId) -> Self {
        let dir = dir.map(Path::to_path_buf).or_else(default_state_dir);
        // Ids contain no '.', so the name is unambiguous; ':' would upset some file systems.
        let broker: String = broker
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Self {
            path: dir.map(|d| d.join(format!("{user}.{device}.{broker}.cursor"))),
        }
    }

    fn load(&self) -> u64 {
        let Some(path) = &self.path else { return 0 };
        match std::fs::read_to_string(path) {
            Ok(text) => text.trim().parse().unwrap_or_else(|_| {
                warn!(path = %path.display(), "unreadable cursor file; starting from 0");
                0
            }),
            Err(_) => 0,
        }
    }

    fn save(&self, cursor: u64) {
        let Some(path) = &self.path else { return };
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(path, format!("{cursor}\n")));
        if let Err(err) = written {
            warn!(path = %path.display(), cause = %err, "cannot save the inbox cursor");
        }
    }
}

/// `$XDG_STATE_HOME/messenger`, else `~/.local/state/messenger`.
fn default_state_dir() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_STATE_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".local/state"),
    };
    Some(base.join("messenger"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let alice = UserId::parse("alice").unwrap();
        assert_eq!(
            conversation(&alice, "bob").unwrap().to_string(),
            "dm:alice:bob"
        );
        assert_eq!(
            conversation(&alice, "aaron").unwrap().to_string(),
            "dm:aaron:alice"
        );
        assert_eq!(
            conversation(&alice, "g:team").unwrap().to_string(),
            "g:team"
        );
        assert!(conversation(&alice, "alice").is_err());
        assert!(conversation(&alice, "Bob").is_err());
        assert!(conversation(&alice, "g:a.b").is_err());
    }

    #[test]
    fn wildcard_listen_addresses_connect_locally() {
        let a: SocketAddr = "0.0.0.0:1883".parse().unwrap();
        assert_eq!(connect_addr(a).to_string(), "127.0.0.1:1883");
        let a: SocketAddr = "[::]:1883".parse().unwrap();
        assert_eq!(connect_addr(a).to_string(), "[::1]:1883");
        let a: SocketAddr = "10.0.0.5:1".parse().unwrap();
        assert_eq!(connect_addr(a), a);
    }

    #[test]
    fn cursor_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let user = UserId::parse("alice").unwrap();
        let device = DeviceId::parse("cli").unwrap();
        let f = CursorFile::new(Some(dir.path()), "127.0.0.1:1883", &user, &device);
        assert_eq!(f.load(), 0);
        f.save(42);
        assert_eq!(f.load(), 42);
        let other = CursorFile::new(Some(dir.path()), "127.0.0.1:1884", &user, &device);
        assert_eq!(other.load(), 0);
    }
}
