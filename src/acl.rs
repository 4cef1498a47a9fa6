//! The per-device topic rule: which topics a device may publish to and which filters it may
//! subscribe to. A pure function, shared by every broker integration.

use crate::error::ParseError;
use crate::verified::DeviceIdentity;

impl TopicRule {
    /// Cap on a topic or filter, in bytes.
    pub const MAX_TOPIC_LEN: usize = 1024;
}

/// The topics a device may use, as MQTT filters in which the whole segments `{pk}` and `{dn}`
/// stand for the device's ProductKey and DeviceName.
///
/// A device may publish to a topic that one of its templates matches, and subscribe to a
/// filter only if everything the filter can match lies inside one of its templates: never
/// another device's topics, never a `#` or `+` that reaches outside.
///
/// ```
/// # use iotauth::*;
/// let rule = TopicRule::alibaba();
/// let me = DeviceIdentity::new(ProductKey::new("a1pk")?, DeviceName::new("dev-1")?);
/// assert!(rule.may_publish(&me, "/a1pk/dev-1/user/update"));
/// assert!(rule.may_subscribe(&me, "/sys/a1pk/dev-1/#"));
/// assert!(rule.may_subscribe(&me, "/ext/+/a1pk/dev-1/x"));
/// assert!(!rule.may_publish(&me, "/a1pk/dev-2/user/update")); // another device
/// assert!(!rule.may_subscribe(&me, "/a1pk/+/user/get"));      // reaches other devices
/// assert!(!rule.may_subscribe(&me, "#"));
/// # Ok::<(), ParseError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRule {
    templates: Vec<String>,
}

/// What a client asks to do with a topic: the brokers' ACL requests (EMQX's `action`,
/// go-auth's `acc`, VerneMQ's hooks, Mosquitto's `MOSQ_ACL_*`) in one type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access {
    /// Publish to a topic name.
    Publish,
    /// Subscribe to a filter (and receive what it matches).
    Subscribe,
    /// Both (go-auth's `acc` 3).
    PublishAndSubscribe,
}

impl TopicRule {
    /// Alibaba's topic classes: `/{pk}/{dn}/#`, `/sys/{pk}/{dn}/#`, `/ext/+/{pk}/{dn}/#`,
    /// `/shadow/+/{pk}/{dn}`, `/ota/device/+/{pk}/{dn}`.
    pub fn alibaba() -> Self {
        Self {
            templates: [
                "/{pk}/{dn}/#",
                "/sys/{pk}/{dn}/#",
                "/ext/+/{pk}/{dn}/#",
                "/shadow/+/{pk}/{dn}",
                "/ota/device/+/{pk}/{dn}",
            ]
            .map(String::from)
            .to_vec(),
        }
    }

    /// A rule from templates, each a valid MQTT filter.
    ///
    /// # Errors
    /// [`ParseError`] (field `topic template`) for an invalid filter or an empty list.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(
        templates: I,
    ) -> Result<Self, ParseError> {
        let templates: Vec<String> = templates.into_iter().map(Into::into).collect();
        if templates.is_empty() {
            return Err(ParseError::Missing {
                field: "topic template",
            });
        }
        for template in &templates {
            check_filter(template, "topic template")?;
        }
        Ok(Self { templates })
    }

    /// The templates.
    pub fn templates(&self) -> &[String] {
        &self.templates
    }

    /// Whether `device` may have `access` to `topic`: [`TopicRule::may_publish`],
    /// [`TopicRule::may_subscribe`], or both for [`Access::PublishAndSubscribe`].
    pub fn allows(&self, device: &DeviceIdentity, topic: &str, access: Access) -> bool {
        match access {
            Access::Publish => self.may_publish(device, topic),
            Access::Subscribe => self.may_subscribe(device, topic),
            Access::PublishAndSubscribe => {
                self.may_publish(device, topic) && self.may_subscribe(device, topic)
            }
        }
    }

    /// Whether `device` may publish to `topic` (a topic name: no wildcards).
    pub fn may_publish(&self, device: &DeviceIdentity, topic: &str) -> bool {
        check_topic(topic).is_ok() && self.covered(device, topic)
    }

    /// Whether `device` may subscribe to `filter`: everything it matches lies inside one of the
    /// device's templates.
    pub fn may_subscribe(&self, device: &DeviceIdentity, filter: &str) -> bool {
        check_filter(filter, "topic filter").is_ok() && self.covered(device, filter)
    }

    /// Whether one of the device's templates covers a valid filter.
    fn covered(&self, device: &DeviceIdentity, filter: &str) -> bool {
        self.templates
            .iter()
            .any(|template| covers(template, device, filter))
    }
}

impl Default for TopicRule {
    fn default() -> Self {
        Self::alibaba()
    }
}

/// A topic name: 1–[`TopicRule::MAX_TOPIC_LEN`] bytes, no NUL, no wildcards.
fn check_topic(topic: &str) -> Result<(), ParseError> {
    check_filter(topic, "topic")?;
    if topic.contains(['+', '#']) {
        return Err(ParseError::InvalidCharacter { field: "topic" });
    }
    Ok(())
}

/// An MQTT filter: 1–[`TopicRule::MAX_TOPIC_LEN`] bytes, no NUL, `+` and `#` only as whole segments and
/// `#` only last.
fn check_filter(filter: &str, field: &'static str) -> Result<(), ParseError> {
    if filter.len() > TopicRule::MAX_TOPIC_LEN {
        return Err(ParseError::TooLong {
            field,
            max: TopicRule::MAX_TOPIC_LEN,
        });
    }
    if filter.is_empty() {
        return Err(ParseError::Missing { field });
    }
    if filter.contains('\0') {
        return Err(ParseError::InvalidCharacter { field });
    }
    let mut segments = filter.split('/').peekable();
    while let Some(segment) = segments.next() {
        let wildcard_inside = segment.len() > 1 && segment.contains(['+', '#']);
        if wildcard_inside || (segment == "#" && segments.peek().is_some()) {
            return Err(ParseError::Malformed {
                field,
                expected: "'+' and '#' as whole levels, '#' last",
            });
        }
    }
    Ok(())
}

/// Whether every topic `filter` matches is matched by `template` for this device.
fn covers(template: &str, device: &DeviceIdentity, filter: &str) -> bool {
    let (pk, dn) = (device.product_key(), device.device_name());
    let mut wanted = filter.split('/');
    for allowed in template.split('/') {
        let allowed = match allowed {
            "{pk}" => pk.as_str(),
            "{dn}" => dn.as_str(),
            other => other,
        };
        if allowed == "#" {
            // Everything below (and the level itself) is inside.
            return true;
        }
        match wanted.next() {
            // The filter stops above the template: what it matches is not inside.
            None => return false,
            Some("#") => return false,
            Some("+") if allowed != "+" => return false,
            Some(level) if allowed != "+" && level != allowed => return false,
            Some(_) => {}
        }
    }
    wanted.next().is_none()
}
