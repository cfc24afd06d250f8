//! What every crate's settings share: the error for a value that parses but
//! makes no sense, naming its key as written in the configuration.

/// A setting that parses but makes no sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The value breaks the setting's rule.
    #[error("{key} must {rule}")]
    Invalid {
        /// The setting, as written in the configuration (`limits.max_page`).
        key: &'static str,
        /// What it must be.
        rule: String,
    },
}

impl ConfigError {
    /// The value of `key` breaks `rule`.
    pub fn invalid(key: &'static str, rule: impl Into<String>) -> Self {
        Self::Invalid {
            key,
            rule: rule.into(),
        }
    }
}
