//! The storage settings: the `[storage]` and `[limits]` tables.

use std::path::PathBuf;

use serde::Deserialize;

pub use messenger_protocol::config::ConfigError;

/// When a commit counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Every commit is fsynced before its acks go out (`synchronous = FULL`):
    /// nothing acked is lost even if the machine loses power.
    Fsync,
    /// Commits reach the OS but are not fsynced (`synchronous = NORMAL` in WAL
    /// mode): survives a crash of the process, not of the machine.
    Os,
}

/// Which engine keeps accounts and conversations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// One SQLite file (`storage.path`): no server to install.
    #[default]
    Sqlite,
    /// A PostgreSQL database (`storage.url`) shared by every node.
    Postgres,
}

/// Where and how conversations are stored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// The engine.
    pub backend: Backend,
    /// The PostgreSQL connection string, for `backend = "postgres"`.
    pub url: Option<String>,
    /// The SQLite file (shared with the account store).
    pub path: PathBuf,
    /// The durability policy.
    pub durability: Durability,
    /// Events older than this many days are removed in the background; 0 keeps
    /// them for ever.
    pub retention_days: u32,
    /// The directory of uploaded files' bytes; `files` beside the database when absent.
    pub files_path: Option<PathBuf>,
    /// How long an upload that no message carries is kept, in seconds.
    pub unreferenced_file_secs: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Sqlite,
            url: None,
            path: PathBuf::from("data/messenger.db"),
            durability: Durability::Fsync,
            retention_days: 0,
            files_path: None,
            unreferenced_file_secs: 24 * 3600,
        }
    }
}

/// The longest retention that is not a mistake: 100 years.
pub const MAX_RETENTION_DAYS: u32 = 36_500;

impl StorageConfig {
    /// Where uploaded files' bytes live: `files_path`, or `files` beside the database.
    pub fn files_dir(&self) -> PathBuf {
        match &self.files_path {
            Some(dir) => dir.clone(),
            None => self
                .path
                .parent()
                .map_or_else(|| PathBuf::from("files"), |dir| dir.join("files")),
        }
    }

    /// How long an upload no message carries is kept, in milliseconds.
    pub fn unreferenced_file_ms(&self) -> u64 {
        self.unreferenced_file_secs.saturating_mul(1000)
    }

    /// The PostgreSQL connection string, when the backend is PostgreSQL (checked
    /// by [`StorageConfig::validate`] to be there and to parse).
    pub fn postgres_url(&self) -> Option<&str> {
        match self.backend {
            Backend::Postgres => self.url.as_deref(),
            Backend::Sqlite => None,
        }
    }

    /// Checks values that parse but make no sense, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match (self.backend, self.url.as_deref()) {
            (Backend::Postgres, None | Some("")) => {
                return Err(ConfigError::invalid(
                    "storage.url",
                    "be set when storage.backend is \"postgres\" (postgres://USER:PASSWORD@HOST:PORT/DATABASE)",
                ));
            }
            // The string itself is not quoted: it may hold a password.
            (_, Some(url)) if !url.is_empty() && url.parse::<postgres::Config>().is_err() => {
                return Err(ConfigError::invalid(
                    "storage.url",
                    "be a PostgreSQL connection string (postgres://USER:PASSWORD@HOST:PORT/DATABASE)",
                ));
            }
            _ => {}
        }
        if self.retention_days > MAX_RETENTION_DAYS {
            return Err(ConfigError::invalid(
                "storage.retention_days",
                format!("be between 0 (keep for ever) and {MAX_RETENTION_DAYS} days"),
            ));
        }
        if self
            .files_path
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(ConfigError::invalid(
                "storage.files_path",
                "be a directory path (omit it for `files` beside the database)",
            ));
        }
        if self.unreferenced_file_secs == 0 || self.unreferenced_file_secs > 366 * 24 * 3600 {
            return Err(ConfigError::invalid(
                "storage.unreferenced_file_secs",
                "be between 1 and 31622400 (366 days)",
            ));
        }
        Ok(())
    }
}

/// Limits on requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest message body, in bytes.
    pub max_body_bytes: usize,
    /// Largest page of `sync` and `history`.
    pub max_page: u32,
    /// Largest group.
    pub max_group_members: usize,
    /// Longest group name, in characters.
    pub max_group_name_chars: usize,
    /// Most devices (distinct device ids with presence or a device token) per user.
    pub max_devices_per_user: usize,
    /// How long after sending its author may edit a message, in seconds.
    pub edit_window_secs: u64,
    /// Largest uploaded file (`POST /files`), in bytes.
    pub max_file_bytes: u64,
    /// Devices of one user connected at once (the broker refuses the next sign-in
    /// with CONNACK 5); at most `max_devices_per_user`, the device ids a user may have.
    pub max_devices: usize,
    /// Sustained requests per second that store a timeline event (`send`, `edit`,
    /// `delete`, `react`, `group_add`, `group_remove`, `group_leave`), per user; 0: no limit.
    pub sends_per_sec: u32,
    /// How many such requests a user may make at once, above the sustained rate.
    pub sends_burst: u32,
    /// `group_create` requests per hour, per user; 0: no limit.
    pub group_creates_per_hour: u32,
    /// How many `group_create` requests a user may make at once; absent: `group_creates_per_hour`.
    pub group_creates_burst: Option<u32>,
    /// `token` requests per minute, per user; 0: no limit.
    pub token_requests_per_min: u32,
    /// How many `token` requests a user may make at once; absent: `token_requests_per_min`.
    pub token_requests_burst: Option<u32>,
    /// `POST /files` uploads per minute, per user (counted by the web listener); 0: no limit.
    pub uploads_per_min: u32,
    /// How many uploads a user may make at once; absent: `uploads_per_min`.
    pub uploads_burst: Option<u32>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024,
            max_page: 500,
            max_group_members: 1024,
            max_group_name_chars: 100,
            max_devices_per_user: 50,
            edit_window_secs: 15 * 60,
            max_file_bytes: 25 * 1024 * 1024,
            max_devices: 10,
            sends_per_sec: 10,
            sends_burst: 50,
            group_creates_per_hour: 30,
            group_creates_burst: None,
            token_requests_per_min: 10,
            token_requests_burst: None,
            uploads_per_min: 20,
            uploads_burst: None,
        }
    }
}

impl Limits {
    /// The largest request payload the bridge accepts: a body at its limit,
    /// JSON-escaped in the worst case (`\u00XX`, 6 bytes a byte), plus the envelope.
    pub fn max_request_bytes(&self) -> usize {
        self.max_body_bytes * 6 + 4096
    }

    /// The largest reply the bridge publishes (a page of `sync` or `history` is cut to fit):
    /// room for the largest single event plus its envelope.
    pub fn max_reply_bytes(&self) -> usize {
        self.max_request_bytes() + 8 * 1024
    }

    /// Checks values that parse but make no sense, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_body_bytes == 0 || self.max_body_bytes > 1024 * 1024 {
            return Err(ConfigError::invalid(
                "limits.max_body_bytes",
                "be between 1 and 1048576",
            ));
        }
        if self.max_page == 0 || self.max_page > 10_000 {
            return Err(ConfigError::invalid(
                "limits.max_page",
                "be between 1 and 10000",
            ));
        }
        if self.max_group_members < 2 || self.max_group_members > 100_000 {
            return Err(ConfigError::invalid(
                "limits.max_group_members",
                "be between 2 and 100000",
            ));
        }
        if self.max_group_name_chars == 0 {
            return Err(ConfigError::invalid(
                "limits.max_group_name_chars",
                "be at least 1",
            ));
        }
        if self.max_devices_per_user == 0 || self.max_devices_per_user > 10_000 {
            return Err(ConfigError::invalid(
                "limits.max_devices_per_user",
                "be between 1 and 10000",
            ));
        }
        if self.max_devices == 0 || self.max_devices > self.max_devices_per_user {
            return Err(ConfigError::invalid(
                "limits.max_devices",
                "be between 1 and limits.max_devices_per_user",
            ));
        }
        if self.sends_per_sec > 0 && self.sends_burst == 0 {
            return Err(ConfigError::invalid(
                "limits.sends_burst",
                "be at least 1 while limits.sends_per_sec is above 0",
            ));
        }
        if self.group_creates_burst == Some(0) {
            return Err(ConfigError::invalid(
                "limits.group_creates_burst",
                "be at least 1",
            ));
        }
        if self.token_requests_burst == Some(0) {
            return Err(ConfigError::invalid(
                "limits.token_requests_burst",
                "be at least 1",
            ));
        }
        if self.uploads_burst == Some(0) {
            return Err(ConfigError::invalid(
                "limits.uploads_burst",
                "be at least 1",
            ));
        }
        if self.edit_window_secs > 366 * 24 * 3600 {
            return Err(ConfigError::invalid(
                "limits.edit_window_secs",
                "be at most 31622400 (366 days)",
            ));
        }
        if self.max_file_bytes == 0 || self.max_file_bytes > 1 << 40 {
            return Err(ConfigError::invalid(
                "limits.max_file_bytes",
                "be between 1 and 1099511627776 (1 TiB)",
            ));
        }
        Ok(())
    }

    /// The edit window in milliseconds, the unit of `ts`.
    pub fn edit_window_ms(&self) -> u64 {
        self.edit_window_secs * 1000
    }
}
