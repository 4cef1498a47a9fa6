//! The per-device topic rule: allowed inside the device's own templates, refused everywhere
//! else, including through wildcards.

use iotauth::*;

fn me() -> DeviceIdentity {
    DeviceIdentity::new(
        ProductKey::new("a1pk").unwrap(),
        DeviceName::new("dev-1").unwrap(),
    )
}

#[test]
fn a_device_publishes_and_subscribes_inside_every_default_template() {
    let rule = TopicRule::alibaba();
    for topic in [
        "/a1pk/dev-1/user/update",
        "/a1pk/dev-1",
        "/sys/a1pk/dev-1/thing/event/property/post",
        "/ext/rrpc/a1pk/dev-1/123",
        "/shadow/update/a1pk/dev-1",
        "/ota/device/upgrade/a1pk/dev-1",
    ] {
        assert!(rule.may_publish(&me(), topic), "{topic}");
        assert!(rule.may_subscribe(&me(), topic), "{topic}");
    }
    for filter in [
        "/a1pk/dev-1/#",
        "/a1pk/dev-1/+/get",
        "/sys/a1pk/dev-1/#",
        "/ext/+/a1pk/dev-1/#",
        "/shadow/+/a1pk/dev-1",
        "/ota/device/+/a1pk/dev-1",
    ] {
        assert!(rule.may_subscribe(&me(), filter), "{filter}");
    }
}

#[test]
fn reject_another_devices_or_products_topics() {
    let rule = TopicRule::alibaba();
    for topic in [
        "/a1pk/dev-2/user/update",
        "/b2pk/dev-1/user/update",
        "/sys/a1pk/dev-10/x",
        "/shadow/update/a1pk/dev-1/extra",
        "/a1pk",
        "/other",
    ] {
        assert!(!rule.may_publish(&me(), topic), "{topic}");
        assert!(!rule.may_subscribe(&me(), topic), "{topic}");
    }
}

#[test]
fn reject_wildcards_that_reach_outside() {
    let rule = TopicRule::alibaba();
    for filter in [
        "#",
        "+",
        "/+/dev-1/#",
        "/a1pk/+/#",
        "/a1pk/#",
        "/sys/#",
        "/ext/#",
        "/shadow/+/a1pk/+",
        "/+/+/+/+",
        "/a1pk/dev-1/#/x",
        "/a1pk/dev-1/a+",
    ] {
        assert!(!rule.may_subscribe(&me(), filter), "{filter}");
    }
}

#[test]
fn reject_wildcards_in_a_published_topic() {
    let rule = TopicRule::alibaba();
    assert!(!rule.may_publish(&me(), "/a1pk/dev-1/#"));
    assert!(!rule.may_publish(&me(), "/a1pk/dev-1/+/get"));
}

#[test]
fn reject_empty_overlong_or_nul_topics() {
    let rule = TopicRule::alibaba();
    assert!(!rule.may_publish(&me(), ""));
    assert!(!rule.may_publish(
        &me(),
        &format!("/a1pk/dev-1/{}", "x".repeat(TopicRule::MAX_TOPIC_LEN))
    ));
    assert!(!rule.may_publish(&me(), "/a1pk/dev-1/a\0b"));
}

#[test]
fn custom_templates_are_validated_and_applied() {
    let rule = TopicRule::new(["devices/{pk}/{dn}/+"]).unwrap();
    assert!(rule.may_publish(&me(), "devices/a1pk/dev-1/telemetry"));
    assert!(!rule.may_publish(&me(), "devices/a1pk/dev-1/a/b"));
    assert!(!rule.may_publish(&me(), "/a1pk/dev-1/user/update"));
    assert!(TopicRule::new(["a/#/b"]).is_err());
    assert!(TopicRule::new(Vec::<String>::new()).is_err());
}
