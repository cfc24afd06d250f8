//! `messenger export USER --out FILE`: everything one user may read, as JSON
//! (the store's `export_user`, on either engine), for data-portability requests.

use std::fs::OpenOptions;
use std::io::BufWriter;
use std::path::Path;

use anyhow::Context;
use messenger_protocol::UserId;

use crate::settings::Settings;

/// Writes `user`'s export to `out`, which must not exist; a failed export
/// leaves no file behind.
pub(crate) fn run(settings: &Settings, user: &str, out: &Path) -> anyhow::Result<()> {
    let user = UserId::parse(user)?;
    let postgres = settings.storage.postgres_url();
    // Reached (and its schema brought up to date) before the file is made.
    let mut client = postgres.map(crate::database::open).transpose()?;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .with_context(|| {
            format!(
                "creating {} (an export never overwrites a file)",
                out.display()
            )
        })?;
    let mut writer = BufWriter::new(file);
    let written = match client.as_mut() {
        Some(client) => {
            messenger_store::postgres::export_user(client, &user, &settings.limits, &mut writer)
                .with_context(|| format!("exporting {user} from storage.url"))
        }
        None => {
            let path = &settings.storage.path;
            messenger_store::export_user(path, &user, &settings.limits, &mut writer)
                .with_context(|| format!("exporting {user} from {}", path.display()))
        }
    };
    drop(writer);
    match written {
        Ok(summary) => {
            println!(
                "exported {user} to {}: {} conversations, {} events",
                out.display(),
                summary.conversations,
                summary.events
            );
            Ok(())
        }
        Err(err) => {
            let _ = std::fs::remove_file(out);
            Err(err)
        }
    }
}
