//! Accounts for the simulated devices, written into a server's SQLite file (or
//! its PostgreSQL database) before it starts.
//!
//! One user is created the normal way (argon2id, ~20 ms); the others get a copy of
//! its password hash, since they share its password. Every device signs in with a
//! device token, issued in one transaction: sign-ins then cost no argon2, as for
//! real devices that reconnect with their token.

use std::collections::HashSet;
use std::path::Path;

use anyhow::Context;
use messenger_accounts::Accounts;
use messenger_protocol::{DeviceId, UserId};

/// The password every simulated user shares.
const PASSWORD: &str = "bench-password";

/// A simulated device's identity.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    /// The user id.
    pub(crate) user: String,
    /// The device id.
    pub(crate) device: String,
    /// The device token (its MQTT password).
    pub(crate) token: String,
}

/// The user id of simulated user `n`.
pub(crate) fn user_name(n: usize) -> String {
    format!("u{n:05}")
}

/// Creates the users of `devices` (user, device) and a token for each device, in order.
pub(crate) fn seed(db: &Path, devices: &[(String, String)]) -> anyhow::Result<Vec<Identity>> {
    let mut seen = HashSet::new();
    let users: Vec<UserId> = devices
        .iter()
        .filter(|(user, _)| seen.insert(user.as_str()))
        .map(|(user, _)| UserId::parse(user))
        .collect::<Result<_, _>>()?;
    let Some(first) = users.first() else {
        return Ok(Vec::new());
    };
    Accounts::open(db)
        .context("opening the account store")?
        .add(first, PASSWORD)
        .context("creating the first simulated user")?;

    let conn = messenger_accounts::open_sqlite(db)?;
    conn.execute_batch("BEGIN")?;
    for user in &users[1..] {
        conn.execute(
            "INSERT INTO users (name, phc, created_ms) SELECT ?1, phc, created_ms FROM users WHERE name = ?2",
            [user.as_str(), first.as_str()],
        )?;
    }
    let mut identities = Vec::with_capacity(devices.len());
    for (user, device) in devices {
        let token = messenger_accounts::issue_token(
            &conn,
            &UserId::parse(user)?,
            &DeviceId::parse(device)?,
        )?;
        identities.push(Identity {
            user: user.clone(),
            device: device.clone(),
            token,
        });
    }
    conn.execute_batch("COMMIT")?;
    Ok(identities)
}

/// [`seed`] into the PostgreSQL database at `url` (its schema made first).
pub(crate) fn seed_postgres(
    url: &str,
    devices: &[(String, String)],
) -> anyhow::Result<Vec<Identity>> {
    let mut seen = HashSet::new();
    let users: Vec<UserId> = devices
        .iter()
        .filter(|(user, _)| seen.insert(user.as_str()))
        .map(|(user, _)| UserId::parse(user))
        .collect::<Result<_, _>>()?;
    let Some(first) = users.first() else {
        return Ok(Vec::new());
    };
    let mut client = messenger_store::postgres::connect(url)?;
    messenger_store::postgres::migrate(&mut client)?;
    let url_again = url.to_owned();
    let reconnect =
        move || messenger_store::postgres::connect(&url_again).map_err(|e| e.to_string());
    Accounts::on_postgres(
        messenger_store::postgres::connect(url)?,
        Box::new(reconnect),
    )
    .context("opening the account store")?
    .add(first, PASSWORD)
    .context("creating the first simulated user")?;
    let mut tx = client.transaction()?;
    for user in &users[1..] {
        tx.execute(
            "INSERT INTO users (name, phc, created_ms) SELECT $1, phc, created_ms FROM users WHERE name = $2",
            &[&user.as_str(), &first.as_str()],
        )
        .with_context(|| format!("adding {user}"))?;
    }
    let mut identities = Vec::with_capacity(devices.len());
    for (user, device) in devices {
        let token = messenger_accounts::issue_token_postgres(
            &mut tx,
            &UserId::parse(user)?,
            &DeviceId::parse(device)?,
        )?;
        identities.push(Identity {
            user: user.clone(),
            device: device.clone(),
            token,
        });
    }
    tx.commit()?;
    Ok(identities)
}
