//! The settings every front end shares, each parsed in one place.

use std::sync::Arc;
use std::time::Duration;

use crate::acl::TopicRule;
use crate::error::ParseError;
use crate::lifecycle::IssuancePolicy;
use crate::policy::Freshness;
use crate::store::{Actor, CachedStore, SecretsAtRest, Store, StoreError};

/// How the server decides: the settings every front end shares (`iotauth serve`'s flags, the
/// embedded broker, the Mosquitto plugin's `plugin_opt_*`), each parsed in one place
/// ([`ServerConfig::set`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// How often a secret may be delivered (`issuance`).
    pub issuance: IssuancePolicy,
    /// The timestamp window of logins (`max_skew_secs`).
    pub freshness: Freshness,
    /// The topics each device may use (`topic_template`).
    pub topics: TopicRule,
    /// How long a device read is reused ([`CachedStore`]); zero: never (`cache_ttl_secs`).
    pub cache_ttl: Duration,
    /// How the store keeps secrets (`master_key_file`, `previous_key_file`,
    /// `insecure_plaintext_secrets`).
    pub secrets: SecretsAtRest,
    /// Who the store's events name as having made the changes this process makes (`actor`):
    /// `server:HOST-PID` by default.
    pub actor: Actor,
    /// Whether `topic_template` was set: the first one replaces the defaults.
    templates_set: bool,
}

impl Default for ServerConfig {
    /// Issue once, no timestamp window, Alibaba's topics, no cache.
    fn default() -> Self {
        Self {
            issuance: IssuancePolicy::Once,
            freshness: Freshness::Unchecked,
            topics: TopicRule::alibaba(),
            cache_ttl: Duration::ZERO,
            secrets: SecretsAtRest::default(),
            actor: Actor::server(&Actor::this_node()).unwrap_or_else(|_| Actor::library()),
            templates_set: false,
        }
    }
}

/// A setting that [`ServerConfig::set`] refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No such setting.
    #[error("unknown setting")]
    Unknown,
    /// The value does not parse.
    #[error("expected {expected}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// What it takes.
        expected: &'static str,
    },
    /// A topic template is not a valid MQTT filter.
    #[error(transparent)]
    Topic(#[from] ParseError),
}

impl ServerConfig {
    /// Applies one setting by name:
    ///
    /// | key | value |
    /// |---|---|
    /// | `issuance` | `once` or `redeliver-until-first-login` ([`IssuancePolicy`]) |
    /// | `max_skew_secs` | seconds: refuse logins whose timestamp is further from now |
    /// | `cache_ttl_secs` | seconds a device read is reused; 0 turns the cache off |
    /// | `topic_template` | an MQTT filter with `{pk}`/`{dn}` levels; the first replaces Alibaba's defaults, later ones add to it |
    /// | `master_key_file` | the file of the master key secrets are sealed under ([`SecretsAtRest`]) |
    /// | `previous_key_file` | a file of an older master key whose sealed secrets still open; repeatable |
    /// | `insecure_plaintext_secrets` | `true` or `false`: keep secrets in clear |
    /// | `actor` | who the event log names for this process's changes: `server:NODE` or `plugin:NODE` ([`Actor`]) |
    ///
    /// # Errors
    /// [`ConfigError`]: an unknown key, or a value that does not parse.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let seconds = |key: &'static str| {
            value.parse::<u64>().map_err(|_| ConfigError::Invalid {
                key,
                expected: "a number of seconds",
            })
        };
        match key {
            "issuance" => {
                self.issuance = value.parse().map_err(|_| ConfigError::Invalid {
                    key: "issuance",
                    expected: "once or redeliver-until-first-login",
                })?;
            }
            "max_skew_secs" => {
                self.freshness = Freshness::Window {
                    max_skew_secs: seconds("max_skew_secs")?,
                };
            }
            "cache_ttl_secs" => self.cache_ttl = Duration::from_secs(seconds("cache_ttl_secs")?),
            "master_key_file" => self.secrets.master_key_file = Some(value.into()),
            "actor" => {
                self.actor = Actor::parse(value)
                    .ok()
                    .filter(|actor| actor.as_str().contains(':'))
                    .ok_or(ConfigError::Invalid {
                        key: "actor",
                        expected: "server:NODE or plugin:NODE (NODE: 1-64 of A-Za-z0-9._-)",
                    })?;
            }
            "previous_key_file" => self.secrets.previous_key_files.push(value.into()),
            "insecure_plaintext_secrets" => {
                self.secrets.insecure_plaintext =
                    value.parse().map_err(|_| ConfigError::Invalid {
                        key: "insecure_plaintext_secrets",
                        expected: "true or false",
                    })?;
            }
            "topic_template" => {
                let current = if self.templates_set {
                    self.topics.templates()
                } else {
                    &[][..]
                };
                let templates = current.iter().map(String::as_str).chain([value]);
                self.topics = TopicRule::new(templates)?;
                self.templates_set = true;
            }
            _ => return Err(ConfigError::Unknown),
        }
        Ok(())
    }

    /// The store at `url` ([`crate::store::open_with`] with [`ServerConfig::secrets`] and
    /// [`ServerConfig::actor`]); [`Services::new`](super::Services::new) puts the cache in front of it.
    ///
    /// # Errors
    /// As [`crate::store::open`].
    pub async fn open_store(&self, url: &str) -> Result<Arc<dyn Store>, StoreError> {
        crate::store::open_with(url, &self.secrets, self.actor.clone()).await
    }

    /// `store` as the services use it: logins through a cache of [`ServerConfig::cache_ttl`]
    /// (none when zero), registrations and operators' changes reading the store itself (see
    /// [`CachedStore::with_fresh_reads`]).
    pub fn service_stores(&self, store: Arc<dyn Store>) -> ServiceStores {
        if self.cache_ttl.is_zero() {
            return ServiceStores {
                logins: store.clone(),
                decisions: store,
            };
        }
        let cached = CachedStore::new(store, self.cache_ttl);
        ServiceStores {
            decisions: Arc::new(cached.with_fresh_reads()),
            logins: Arc::new(cached),
        }
    }
}

/// A store as the services use it ([`ServerConfig::service_stores`]).
#[derive(Clone)]
#[non_exhaustive]
pub struct ServiceStores {
    /// For logins: cached. It is the handle to follow the event log with
    /// ([`crate::store::follow`]), so that the cache drops what changed.
    pub logins: Arc<dyn Store>,
    /// For registrations and operators' changes: reading the store itself, dropping the
    /// cache's entries when writing.
    pub decisions: Arc<dyn Store>,
}
