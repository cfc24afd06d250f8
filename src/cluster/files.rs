//! The files `cluster up` writes: `DIR/messenger.toml` for the bridges and
//! the commands, files readable by their owner only, random passwords.

use std::path::Path;

use anyhow::Context;
use rand::RngCore;

use super::NodePorts;
use crate::config_failure;
use crate::nats_config::Credentials;

/// A random password (hex).
pub(super) fn password() -> String {
    let mut raw = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut raw);
    hex::encode(raw)
}

/// `DIR/messenger.toml`: the bridges' configuration, which the chat and user
/// commands can use too (`--config DIR/messenger.toml`).
pub(super) fn messenger_toml(
    dir: &Path,
    postgres: &str,
    ports: &[NodePorts],
    seed: &Path,
    credentials: &Credentials,
) -> anyhow::Result<String> {
    // A JSON string is a TOML basic string (the same escapes).
    let s = |v: &str| serde_json::to_string(v).unwrap_or_default();
    let list = |items: Vec<String>| {
        let quoted: Vec<String> = items.iter().map(|i| s(i)).collect();
        format!("[{}]", quoted.join(", "))
    };
    let first = ports
        .first()
        .context("a cluster has a node")?
        .mqtt
        .to_string();
    Ok(format!(
        "# Written by `messenger cluster up` for the cluster in this directory. Holds passwords.\n\
         [storage]\n\
         backend = \"postgres\"\n\
         url = {url}\n\
         files_path = {files}\n\
         \n\
         # Node 1's MQTT listener: `messenger send`, `chat` ... need no --broker.\n\
         [broker]\n\
         listen = {first}\n\
         \n\
         [bridge]\n\
         broker = {first}\n\
         username = {user}\n\
         password = {password}\n\
         \n\
         # Each bridge gets its own through MESSENGER_ADMIN__LISTEN.\n\
         [admin]\n\
         listen = \"\"\n\
         \n\
         [nats]\n\
         servers = {servers}\n\
         mqtt = {mqtt}\n\
         issuer_seed_file = {seed}\n\
         account = {account}\n\
         auth_user = {auth_user}\n\
         auth_password = {auth_password}\n\
         system_user = {system_user}\n\
         system_password = {system_password}\n",
        url = s(postgres),
        files = s(utf8(&dir.join("files"))?),
        first = s(&first),
        user = s(&credentials.bridge_user),
        password = s(&credentials.bridge_password),
        servers = list(ports.iter().map(|p| p.client.to_string()).collect()),
        mqtt = list(ports.iter().map(|p| p.mqtt.to_string()).collect()),
        seed = s(utf8(seed)?),
        account = s(&credentials.account),
        auth_user = s(&credentials.auth_user),
        auth_password = s(&credentials.auth_password),
        system_user = s(&credentials.system_user),
        system_password = s(&credentials.system_password),
    ))
}

/// `path` as UTF-8 (the generated files name paths in TOML and JSON).
pub(super) fn utf8(path: &Path) -> anyhow::Result<&str> {
    path.to_str().ok_or_else(|| {
        config_failure(anyhow::anyhow!(
            "--dir must be a UTF-8 path (got {})",
            path.display()
        ))
    })
}

/// Writes a new file readable by its owner only (it holds passwords).
pub(super) fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Sets `path`'s permission bits.
pub(super) fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}
