//! `ServerConfig::set`: the one parser of the settings `iotauth serve`'s flags and the Mosquitto
//! plugin's `plugin_opt_*` share.
#![cfg(feature = "server")]

use std::time::Duration;

use iotauth::http::{ConfigError, ServerConfig};
use iotauth::*;

fn me() -> DeviceIdentity {
    DeviceIdentity::new(
        ProductKey::new("a1pk").unwrap(),
        DeviceName::new("dev-1").unwrap(),
    )
}

#[test]
fn defaults_are_issue_once_no_window_alibabas_topics_no_cache() {
    let config = ServerConfig::default();
    assert_eq!(config.issuance, IssuancePolicy::Once);
    assert_eq!(config.freshness, Freshness::Unchecked);
    assert_eq!(config.topics, TopicRule::alibaba());
    assert_eq!(config.cache_ttl, Duration::ZERO);
}

#[test]
fn each_setting_parses_its_value() {
    let mut config = ServerConfig::default();
    config
        .set("issuance", "redeliver-until-first-login")
        .unwrap();
    config.set("max_skew_secs", "900").unwrap();
    config.set("cache_ttl_secs", "5").unwrap();
    assert_eq!(config.issuance, IssuancePolicy::RedeliverUntilFirstLogin);
    assert_eq!(config.freshness, Freshness::Window { max_skew_secs: 900 });
    assert_eq!(config.cache_ttl, Duration::from_secs(5));
    config.set("issuance", "once").unwrap();
    assert_eq!(config.issuance, IssuancePolicy::Once);
}

#[test]
fn the_first_topic_template_replaces_the_defaults_and_later_ones_add() {
    let mut config = ServerConfig::default();
    config.set("topic_template", "devices/{pk}/{dn}/+").unwrap();
    assert!(config.topics.may_publish(&me(), "devices/a1pk/dev-1/up"));
    assert!(!config.topics.may_publish(&me(), "/a1pk/dev-1/user/update"));
    config.set("topic_template", "/{pk}/{dn}/#").unwrap();
    assert!(config.topics.may_publish(&me(), "devices/a1pk/dev-1/up"));
    assert!(config.topics.may_publish(&me(), "/a1pk/dev-1/user/update"));
}

#[test]
fn alibabas_templates_given_explicitly_are_kept_when_more_are_added() {
    let mut config = ServerConfig::default();
    for template in TopicRule::alibaba().templates() {
        config.set("topic_template", template).unwrap();
    }
    config.set("topic_template", "devices/{pk}/{dn}/+").unwrap();
    assert!(config.topics.may_publish(&me(), "/a1pk/dev-1/user/update"));
    assert!(config.topics.may_publish(&me(), "devices/a1pk/dev-1/up"));
}

#[test]
fn reject_an_unknown_setting() {
    let mut config = ServerConfig::default();
    assert!(matches!(
        config.set("max_skew", "900"),
        Err(ConfigError::Unknown)
    ));
}

#[test]
fn reject_values_that_do_not_parse_naming_what_is_expected() {
    let mut config = ServerConfig::default();
    for (key, value) in [
        ("issuance", "twice"),
        ("max_skew_secs", "-1"),
        ("max_skew_secs", "15m"),
        ("cache_ttl_secs", ""),
    ] {
        let error = config.set(key, value).unwrap_err();
        assert!(
            matches!(error, ConfigError::Invalid { .. }),
            "{key}={value}"
        );
        assert!(!error.to_string().contains(value) || value.is_empty());
    }
    assert!(matches!(
        config.set("topic_template", "a/#/b"),
        Err(ConfigError::Topic(_))
    ));
    // Nothing changed.
    assert_eq!(config.issuance, IssuancePolicy::Once);
    assert_eq!(config.freshness, Freshness::Unchecked);
    assert_eq!(config.topics, TopicRule::alibaba());
}
