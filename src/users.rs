//! `messenger user ...`: the account store from the command line.

use messenger_protocol::{DeviceId, UserId};

use crate::chat::format_ts;
use crate::cli::UserCommand;
use crate::settings::Settings;

/// Runs one account command against the configured store (the SQLite file, or
/// the PostgreSQL database).
pub(crate) fn run(settings: &Settings, cmd: UserCommand) -> anyhow::Result<()> {
    let path = &settings.storage.path;
    let postgres = settings.storage.postgres_url();
    match (cmd, postgres) {
        (UserCommand::Remove { name, erase }, Some(url)) => {
            let user = UserId::parse(&name)?;
            let mut client = crate::database::open(url)?;
            if erase {
                let files = settings.storage.files_dir();
                let erased = messenger_store::postgres::erase_user(&mut client, &files, &user)?;
                println!("removed {user}; erased the text of {erased} messages");
            } else {
                messenger_store::postgres::remove_user(&mut client, &user)?;
                println!("removed {user}");
            }
            Ok(())
        }
        (UserCommand::List, Some(url)) => {
            let mut client = crate::database::open(url)?;
            print!(
                "{}",
                list(messenger_store::postgres::list_users(&mut client)?)
            );
            Ok(())
        }
        (cmd, _) => account_command(settings, path, cmd),
    }
}

/// The commands that go through the account store (and, on SQLite, removal and
/// the list, which read and write the shared file).
fn account_command(
    settings: &Settings,
    path: &std::path::Path,
    cmd: UserCommand,
) -> anyhow::Result<()> {
    let accounts = crate::database::accounts(settings)?;
    match cmd {
        UserCommand::Add { name, password } => {
            let user = UserId::parse(&name)?;
            accounts.add(&user, &password)?;
            println!("added {user}");
        }
        UserCommand::Passwd { name, password } => {
            let user = UserId::parse(&name)?;
            accounts.set_password(&user, &password)?;
            println!("password changed for {user}; their devices were signed out");
        }
        UserCommand::Remove { name, erase: false } => {
            let user = UserId::parse(&name)?;
            messenger_store::remove_user(path, &user)?;
            println!("removed {user}");
        }
        UserCommand::Remove { name, erase: true } => {
            let user = UserId::parse(&name)?;
            let erased = messenger_store::erase_user(path, &settings.storage.files_dir(), &user)?;
            println!("removed {user}; erased the text of {erased} messages");
        }
        UserCommand::List => print!("{}", list(messenger_store::list_users(path)?)),
        UserCommand::Disable { name } => {
            let user = UserId::parse(&name)?;
            if accounts.set_disabled(&user, true)? {
                println!("disabled {user}; their devices are signed out and cannot sign in");
            } else {
                println!("{user} was already disabled");
            }
        }
        UserCommand::Enable { name } => {
            let user = UserId::parse(&name)?;
            if accounts.set_disabled(&user, false)? {
                println!("enabled {user}");
            } else {
                println!("{user} was not disabled");
            }
        }
        UserCommand::Token { name, device } => {
            let user = UserId::parse(&name)?;
            let device = DeviceId::parse(&device)?;
            println!("{}", accounts.issue_token(&user, &device)?);
        }
    }
    Ok(())
}

/// `messenger user list`: a header, then one line per account (the same on
/// both engines).
fn list(summaries: Vec<messenger_store::UserSummary>) -> String {
    let time = |ms: i64| format_ts(u64::try_from(ms).unwrap_or(0));
    let mut out = format!(
        "{:<32}  {:<19}  {:<19}  {:>7}  {:>6}\n",
        "USER", "CREATED (UTC)", "DISABLED SINCE", "DEVICES", "ONLINE"
    );
    for summary in summaries {
        let account = &summary.account;
        out.push_str(&format!(
            "{:<32}  {:<19}  {:<19}  {:>7}  {:>6}\n",
            account.user.as_str(),
            time(account.created_ms),
            account.disabled_ms.map_or_else(|| "-".to_owned(), time),
            summary.devices,
            summary.online,
        ));
    }
    out
}
