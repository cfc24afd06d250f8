//! The process's configuration: `config/messenger.toml` (or `--config FILE`),
//! then `MESSENGER_*` environment variables (`__` between levels), which win.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use messenger_bridge::config::{BridgeConfig, Limits, NatsConfig, PushConfig, StorageConfig};
use messenger_broker::{BrokerConfig, TlsConfig};
use serde::Deserialize;

use crate::admin::AdminConfig;

/// The default configuration file, read when present.
pub(crate) const DEFAULT_FILE: &str = "config/messenger.toml";

/// Every setting of every role; each command uses the tables it needs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Settings {
    /// The embedded broker.
    pub(crate) broker: BrokerConfig,
    /// The certificate of the broker's TLS listeners.
    pub(crate) tls: TlsConfig,
    /// The bridge's connection to the broker.
    pub(crate) bridge: BridgeConfig,
    /// The SQLite file.
    pub(crate) storage: StorageConfig,
    /// Request limits.
    pub(crate) limits: Limits,
    /// Push notifications to offline users.
    pub(crate) push: PushConfig,
    /// The admin HTTP listener (metrics, health).
    pub(crate) admin: AdminConfig,
    /// The broker tier on a NATS cluster (`messenger bridge` with `nats.servers`).
    pub(crate) nats: NatsConfig,
}

/// Room in an MQTT packet for what is not the payload: the fixed header, the
/// topic (`chat/<user>/dev/<device>` is at most 107 bytes) and the packet id.
const PACKET_OVERHEAD: usize = 256;

impl Settings {
    /// Loads the file (required if named explicitly) and the environment, then validates.
    pub(crate) fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let (path, required) = match file {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_FILE), false),
        };
        let env: HashMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("MESSENGER_") && k.contains("__"))
            .collect();
        Self::from_sources(&path, required, env)
    }

    /// Loads from an explicit file and environment map (what tests call).
    pub(crate) fn from_sources(
        path: &Path,
        required: bool,
        env: HashMap<String, String>,
    ) -> anyhow::Result<Self> {
        if required && !path.exists() {
            bail!("config file {} does not exist", path.display());
        }
        let mut settings: Settings = config::Config::builder()
            .add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(required),
            )
            .add_source(
                config::Environment::with_prefix("MESSENGER")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(env)),
            )
            .build()
            .and_then(|c| c.try_deserialize())
            .with_context(|| {
                format!(
                    "invalid configuration (file {}, MESSENGER_* environment)",
                    path.display()
                )
            })?;
        // The broker enforces `limits.max_devices` (connected devices per user).
        settings.broker.max_devices = settings.limits.max_devices;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.broker.validate()?;
        self.limits.validate()?;
        self.storage.validate()?;
        self.push.validate()?;
        self.bridge.validate()?;
        self.admin.address()?;
        // Every reply's payload is at most max_reply_bytes; the packet adds its topic
        // (at most ~110 bytes) and a fixed header.
        let needed = self.limits.max_reply_bytes() + PACKET_OVERHEAD;
        if self.broker.max_packet_bytes < needed {
            bail!(
                "broker.max_packet_bytes ({}) must be at least {needed} to carry a body of limits.max_body_bytes",
                self.broker.max_packet_bytes,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn every_shipped_config_file_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Settings::from_sources(&path, true, HashMap::new()).unwrap();
                n += 1;
            }
        }
        assert!(n >= 1);
    }

    #[test]
    fn environment_wins_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.toml");
        std::fs::write(&file, "[broker]\nlisten = \"127.0.0.1:1\"\n").unwrap();
        let s = Settings::from_sources(
            &file,
            true,
            env(&[
                ("MESSENGER_BROKER__LISTEN", "127.0.0.1:2"),
                ("MESSENGER_STORAGE__PATH", "/tmp/x.db"),
            ]),
        )
        .unwrap();
        assert_eq!(s.broker.listen.map(|a| a.port()), Some(2));
        assert_eq!(s.storage.path, PathBuf::from("/tmp/x.db"));
    }

    #[test]
    fn bad_values_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.toml");
        std::fs::write(&file, "[broker]\nlistne = \"127.0.0.1:1\"\n").unwrap();
        let err = format!(
            "{:#}",
            Settings::from_sources(&file, true, HashMap::new()).unwrap_err()
        );
        assert!(err.contains("listne"), "{err}");
        let none = dir.path().join("none.toml");
        let err = format!(
            "{:#}",
            Settings::from_sources(
                &none,
                false,
                env(&[("MESSENGER_BROKER__LISTEN", "nowhere")])
            )
            .unwrap_err()
        );
        assert!(err.contains("broker.listen"), "{err}");
        let err = format!(
            "{:#}",
            Settings::from_sources(&none, false, env(&[("MESSENGER_LIMITS__MAX_PAGE", "0")]))
                .unwrap_err()
        );
        assert!(err.contains("limits.max_page"), "{err}");
        for (key, value) in [
            ("MESSENGER_BROKER__SERVICE_INFLIGHT", "0"),
            ("MESSENGER_BROKER__SERVICE_INFLIGHT", "70000"),
            ("MESSENGER_BROKER__SERVICE_INFLIGHT", "many"),
        ] {
            let err = format!(
                "{:#}",
                Settings::from_sources(&none, false, env(&[(key, value)])).unwrap_err()
            );
            assert!(err.contains("service_inflight"), "{value}: {err}");
        }
        let s = Settings::from_sources(
            &none,
            false,
            env(&[("MESSENGER_BROKER__SERVICE_INFLIGHT", "65535")]),
        )
        .unwrap();
        assert_eq!(s.broker.service_inflight, 65535);
        assert!(Settings::from_sources(&none, true, HashMap::new()).is_err());
    }

    #[test]
    fn file_settings_default_beside_the_database_and_bad_ones_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let none = dir.path().join("none.toml");
        let s = Settings::from_sources(
            &none,
            false,
            env(&[("MESSENGER_STORAGE__PATH", "/srv/m/messenger.db")]),
        )
        .unwrap();
        assert_eq!(s.storage.files_dir(), PathBuf::from("/srv/m/files"));
        assert_eq!(s.limits.max_file_bytes, 25 * 1024 * 1024);
        assert_eq!(s.storage.unreferenced_file_secs, 86_400);
        for (key, value, named) in [
            (
                "MESSENGER_LIMITS__MAX_FILE_BYTES",
                "0",
                "limits.max_file_bytes",
            ),
            ("MESSENGER_LIMITS__MAX_FILE_BYTES", "-1", "max_file_bytes"),
            (
                "MESSENGER_STORAGE__UNREFERENCED_FILE_SECS",
                "0",
                "storage.unreferenced_file_secs",
            ),
            ("MESSENGER_STORAGE__FILES_PATH", "", "storage.files_path"),
        ] {
            let err = format!(
                "{:#}",
                Settings::from_sources(&none, false, env(&[(key, value)])).unwrap_err()
            );
            assert!(err.contains(named), "{key}={value}: {err}");
        }
    }

    #[test]
    fn the_storage_backend_is_sqlite_unless_postgres_is_asked_for_with_a_url() {
        let dir = tempfile::tempdir().unwrap();
        let none = dir.path().join("none.toml");
        let s = Settings::from_sources(&none, false, HashMap::new()).unwrap();
        assert_eq!(s.storage.postgres_url(), None);
        let url = "postgres://m:secret@127.0.0.1:5432/m";
        let s = Settings::from_sources(
            &none,
            false,
            env(&[
                ("MESSENGER_STORAGE__BACKEND", "postgres"),
                ("MESSENGER_STORAGE__URL", url),
            ]),
        )
        .unwrap();
        assert_eq!(s.storage.postgres_url(), Some(url));
        for (vars, named) in [
            (&[("MESSENGER_STORAGE__BACKEND", "mysql")][..], "backend"),
            (
                &[("MESSENGER_STORAGE__BACKEND", "postgres")][..],
                "storage.url",
            ),
            (
                &[
                    ("MESSENGER_STORAGE__BACKEND", "postgres"),
                    ("MESSENGER_STORAGE__URL", "postgres://m:secret@host:port/m"),
                ][..],
                "storage.url",
            ),
        ] {
            let err = format!(
                "{:#}",
                Settings::from_sources(&none, false, env(vars)).unwrap_err()
            );
            assert!(err.contains(named), "{vars:?}: {err}");
            assert!(
                !err.contains("secret"),
                "the password is never shown: {err}"
            );
        }
    }

    #[test]
    fn empty_listeners_are_off_and_bad_ones_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let none = dir.path().join("none.toml");
        let s = Settings::from_sources(&none, false, HashMap::new()).unwrap();
        assert!(s.broker.listen.is_some() && s.broker.tls_listen.is_none());
        assert!(s.broker.wss_listen.is_none() && !s.broker.needs_tls());
        let s = Settings::from_sources(
            &none,
            false,
            env(&[
                ("MESSENGER_BROKER__LISTEN", ""),
                ("MESSENGER_BROKER__WS_LISTEN", " "),
                ("MESSENGER_BROKER__TLS_LISTEN", "0.0.0.0:8883"),
            ]),
        )
        .unwrap();
        assert_eq!((s.broker.listen, s.broker.ws_listen), (None, None));
        assert!(s.broker.needs_tls());
        let internet = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/internet.toml");
        let s = Settings::from_sources(&internet, true, HashMap::new()).unwrap();
        assert!(s.broker.listen.is_none() && s.broker.tls_listen.is_some());
        assert!(s.tls.cert_path.is_some() && s.tls.key_path.is_some());
        for key in ["TLS_LISTEN", "WSS_LISTEN"] {
            let var = format!("MESSENGER_BROKER__{key}");
            let err = format!(
                "{:#}",
                Settings::from_sources(&none, false, env(&[(&var, "nowhere")])).unwrap_err()
            );
            assert!(err.contains(&key.to_lowercase()), "{err}");
        }
        std::fs::write(
            dir.path().join("t.toml"),
            "[tls]\ncert_path = \"a\"\nkey_pth = \"b\"\n",
        )
        .unwrap();
        let err = format!(
            "{:#}",
            Settings::from_sources(&dir.path().join("t.toml"), true, HashMap::new()).unwrap_err()
        );
        assert!(err.contains("key_pth"), "{err}");
    }

    #[test]
    fn push_is_off_by_default_and_checked_when_configured() {
        let dir = tempfile::tempdir().unwrap();
        let none = dir.path().join("none.toml");
        let s = Settings::from_sources(&none, false, HashMap::new()).unwrap();
        assert!(!s.push.enabled());
        assert!(s.push.preview);

        let file = dir.path().join("m.toml");
        std::fs::write(
            &file,
            "[push]\npreview = false\n[push.apns]\nkey_path = \"k.p8\"\nkey_id = \"K\"\nteam_id = \"T\"\n",
        )
        .unwrap();
        let err = format!(
            "{:#}",
            Settings::from_sources(&file, true, HashMap::new()).unwrap_err()
        );
        assert!(err.contains("push.apns.topic"), "{err}");
        let s = Settings::from_sources(
            &file,
            true,
            env(&[
                ("MESSENGER_PUSH__APNS__TOPIC", "com.example.app"),
                ("MESSENGER_PUSH__FCM__SERVICE_ACCOUNT_PATH", "sa.json"),
            ]),
        )
        .unwrap();
        assert!(s.push.enabled() && !s.push.preview);
        let apns = s.push.apns.unwrap();
        assert_eq!(apns.base_url, "https://api.push.apple.com");
        assert_eq!(apns.topic, "com.example.app");
        assert_eq!(s.push.fcm.unwrap().base_url, "https://fcm.googleapis.com");

        std::fs::write(
            &file,
            "[push.fcm]\nbase_url = \"ftp://x\"\nservice_account_path = \"a\"\n",
        )
        .unwrap();
        let err = format!(
            "{:#}",
            Settings::from_sources(&file, true, HashMap::new()).unwrap_err()
        );
        assert!(err.contains("push.fcm.base_url"), "{err}");
        std::fs::write(&file, "[push]\ncoalesce = 5\n").unwrap();
        let err = format!(
            "{:#}",
            Settings::from_sources(&file, true, HashMap::new()).unwrap_err()
        );
        assert!(err.contains("coalesce"), "{err}");
    }
}
