//! `messenger admin sessions|kick`: the client of the admin listener's control
//! routes (`admin/control.rs`), on the address `admin.listen` names. A server
//! that is not running, or runs with the listener off, is a clear error within
//! [`CONNECT_TIMEOUT`], never a hang.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use messenger_protocol::{DeviceId, UserId};
use serde::de::DeserializeOwned;

use crate::admin::{ErrorReply, KickReply, SessionItem, SessionsReply, CALLER_HEADER};
use crate::chat::format_ts;
use crate::cli::AdminCommand;
use crate::settings::Settings;

/// How long the admin listener may take to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a whole request may take (a kick waits for the broker's takeover).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs one admin command against the running server.
pub(crate) fn run(settings: &Settings, cmd: AdminCommand) -> anyhow::Result<()> {
    let admin = target(settings)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cmd {
            AdminCommand::Sessions { user } => {
                let query = match user {
                    Some(user) => format!("?user={}", UserId::parse(&user)?),
                    None => String::new(),
                };
                let reply: SessionsReply =
                    call(admin, reqwest::Method::GET, &format!("/sessions{query}")).await?;
                if reply.sessions.is_empty() {
                    println!("no connected devices");
                }
                for session in &reply.sessions {
                    println!("{}", line(session));
                }
            }
            AdminCommand::Kick { target } => {
                let (user, device) = parse_target(&target)?;
                let mut query = format!("?user={user}");
                if let Some(device) = device {
                    query.push_str(&format!("&device={device}"));
                }
                let reply: KickReply =
                    call(admin, reqwest::Method::POST, &format!("/kick{query}")).await?;
                for session in &reply.kicked {
                    println!("kicked {}", line(session));
                }
            }
        }
        Ok(())
    })
}

/// `USER` or `USER:DEVICE`, each a valid id.
fn parse_target(target: &str) -> anyhow::Result<(UserId, Option<DeviceId>)> {
    let (user, device) = match target.split_once(':') {
        Some((user, device)) => (user, Some(device)),
        None => (target, None),
    };
    let user = UserId::parse(user).with_context(|| format!("bad user id {user:?}"))?;
    let device = device
        .map(|d| DeviceId::parse(d).with_context(|| format!("bad device id {d:?}")))
        .transpose()?;
    Ok((user, device))
}

/// One session as a line: `user:device  address  since YYYY-MM-DD HH:MM:SS UTC`.
fn line(s: &SessionItem) -> String {
    format!(
        "{}:{}  {}  since {} UTC",
        s.user,
        s.device,
        s.address.as_deref().unwrap_or("-"),
        format_ts(u64::try_from(s.since_ms).unwrap_or(0))
    )
}

/// Where the admin listener is: `admin.listen`, an unspecified address (`0.0.0.0`)
/// reached through loopback.
fn target(settings: &Settings) -> anyhow::Result<SocketAddr> {
    let Some(mut addr) = settings.admin.address()? else {
        bail!("admin.listen is empty: the admin commands reach the server through its admin listener; set admin.listen (e.g. 127.0.0.1:9464) for the server and this command");
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(addr)
}

/// One control request; its JSON answer, or the server's error as the error.
async fn call<T: DeserializeOwned>(
    admin: SocketAddr,
    method: reqwest::Method,
    path: &str,
) -> anyhow::Result<T> {
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .no_proxy()
        .build()?;
    let response = client
        .request(method, format!("http://{admin}{path}"))
        .header(CALLER_HEADER, "1")
        .send()
        .await
        .map_err(|err| {
            let why = if err.is_connect() {
                "nothing answers there (is the server running, with this admin.listen?)"
            } else if err.is_timeout() {
                "it did not answer in time"
            } else {
                "the request failed"
            };
            anyhow!("cannot reach the server's admin listener at {admin}: {why}")
        })?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .with_context(|| format!("reading the answer of {admin}"))?;
    if !status.is_success() {
        let error = serde_json::from_slice::<ErrorReply>(&body).map_or_else(
            |_| format!("{status}: {}", String::from_utf8_lossy(&body).trim()),
            |e| e.error,
        );
        bail!("{error}");
    }
    serde_json::from_slice(&body)
        .with_context(|| format!("{admin} answered something else than the admin listener would"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let (user, device) = parse_target("ann:phone").unwrap();
        assert_eq!((user.as_str(), device.unwrap().as_str()), ("ann", "phone"));
        assert!(parse_target("ann").unwrap().1.is_none());
        assert!(parse_target("Bad User").is_err());
        assert!(parse_target("ann:").is_err());
    }
}
