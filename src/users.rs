//! `messenger user ...`: the account store from the command line.

use anyhow::Context;
use messenger_accounts::Accounts;
use messenger_protocol::{DeviceId, UserId};

use crate::cli::UserCommand;
use crate::settings::Settings;

/// Runs one account command against the configured SQLite file.
pub(crate) fn run(settings: &Settings, cmd: UserCommand) -> anyhow::Result<()> {
    let path = &settings.storage.path;
    let accounts = Accounts::open(path).with_context(|| format!("opening {}", path.display()))?;
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
        UserCommand::List => {
            for user in accounts.list()? {
                println!("{user}");
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
