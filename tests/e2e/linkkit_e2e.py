#!/usr/bin/env python3
"""Alibaba's own Python device SDK (aliyun-iot-linkkit, unmodified) against `iotauth serve`.

Driven by tests/linkkit_e2e.rs. Only the endpoints are local: the MQTT host and port are the
SDK's own settings, and its fixed HTTPS registration URL is redirected to the local server;
the SDK builds every request and parses every reply itself. Prints one JSON line of results.

Environment: IOTAUTH_HTTP, IOTAUTH_MQTT, IOTAUTH_MQTT_REGISTER (ports), PK, PS,
DN_LOGIN + DS_LOGIN (a registered device with its secret), DN_HTTP and DN_MQTT (registered,
never issued), DN_NWL (for registration without pre-registration: not registered), SCENARIOS
(comma-separated: login, http, mqtt, mqtt_again, regnwl; default the first three).
"""
import importlib.metadata
import json
import os
import sys
import threading
import urllib.request

from linkkit import linkkit

env = os.environ
TIMEOUT = 20
real_urlopen = urllib.request.urlopen  # linkkit's `urllib` is this very module
results = {"linkkit_version": importlib.metadata.version("aliyun-iot-linkkit")}


def local_urlopen(url, data=None, context=None, **kwargs):
    assert url.endswith("/auth/register/device"), url
    local = "http://127.0.0.1:%s/auth/register/device" % env["IOTAUTH_HTTP"]
    return real_urlopen(local, data, **kwargs)


def login_and_publish(dn, ds="", **credentials):
    """Per-device login (or, with client_id, username and password from a regnwl reply, a
    connwl token login), then one publish on the device's own topic; True when acknowledged."""
    lk = linkkit.LinkKit(host_name="127.0.0.1", product_key=env["PK"], device_name=dn, device_secret=ds,
                         **credentials)
    lk.config_mqtt(port=int(env["IOTAUTH_MQTT"]), secure="", keep_alive=60)
    connected, published = threading.Event(), threading.Event()
    lk.on_connect = lambda session_flag, rc, userdata: rc == 0 and connected.set()
    lk.on_publish_topic = lambda mid, userdata: published.set()
    lk.connect_async()
    try:
        if not connected.wait(TIMEOUT):
            return False
        rc, _ = lk.publish_topic("/%s/%s/user/update" % (env["PK"], dn), "hello from linkkit", qos=1)
        return rc == 0 and published.wait(TIMEOUT)
    finally:
        lk.disconnect()
        lk.destruct()


def await_registration(lk, port):
    """Starts `lk` (configured for a registration) and waits for the secret; the secret or None.

    After an HTTP registration the SDK goes on to log in at Alibaba's endpoint, which this test
    does not reach: it is stopped once the secret is in.
    """
    got = {}
    done = threading.Event()

    def on_register(rc, value, userdata):
        got["rc"], got["secret"] = rc, value
        done.set()

    lk.on_device_dynamic_register = on_register
    lk.config_mqtt(port=port, secure="")
    lk.connect_async()
    done.wait(TIMEOUT)
    lk.disconnect()
    lk.destruct()
    return got.get("secret") if got.get("rc") == 0 else None


def http_registration(dn):
    """HTTPS-style dynamic registration (redirected to local HTTP); the secret or None."""
    urllib.request.urlopen = local_urlopen
    lk = linkkit.LinkKit(host_name="cn-shanghai", product_key=env["PK"], device_name=dn,
                         device_secret="", product_secret=env["PS"])
    return await_registration(lk, int(env["IOTAUTH_MQTT"]))


def mqtt_registration(dn):
    """MQTT dynamic registration (authType=register) on IOTAUTH_MQTT_REGISTER (the broker's port); the secret or None."""
    lk = linkkit.LinkKit(host_name="127.0.0.1", product_key=env["PK"], device_name=dn,
                         device_secret="", product_secret=env["PS"], auth_type="register")
    return await_registration(lk, int(env["IOTAUTH_MQTT_REGISTER"]))


def regnwl_registration(dn):
    """MQTT registration without pre-registration (authType=regnwl) on the broker's port; the
    SDK's connwl credentials (client_id, username, password) or None."""
    lk = linkkit.LinkKit(host_name="127.0.0.1", product_key=env["PK"], device_name=dn,
                         device_secret="", product_secret=env["PS"], auth_type="regnwl")
    got = {}
    done = threading.Event()

    def on_reply(rc, client_id, username, password):
        got.update(rc=rc, client_id=client_id, username=username, password=password)
        done.set()

    lk.on_device_dynamic_register_nwl_reply = on_reply
    lk.config_mqtt(port=int(env["IOTAUTH_MQTT_REGISTER"]), secure="")
    lk.connect_async()
    done.wait(TIMEOUT)
    lk.disconnect()
    lk.destruct()
    if got.get("rc") != 0:
        return None
    return {k: got[k] for k in ("client_id", "username", "password")}


scenarios = env.get("SCENARIOS", "login,http,mqtt").split(",")
if "login" in scenarios:
    results["login_publish"] = login_and_publish(env["DN_LOGIN"], env["DS_LOGIN"])
if "http" in scenarios:
    secret = http_registration(env["DN_HTTP"])
    results["http_registration_secret"] = secret
    results["http_registered_login"] = bool(secret) and login_and_publish(env["DN_HTTP"], secret)
if "mqtt" in scenarios:
    secret = mqtt_registration(env["DN_MQTT"])
    results["mqtt_registration_secret"] = secret
    results["mqtt_registered_login"] = bool(secret) and login_and_publish(env["DN_MQTT"], secret)
if "regnwl" in scenarios:
    credentials = regnwl_registration(env["DN_NWL"])
    results["regnwl_client_id"] = credentials and credentials["client_id"]
    results["regnwl_token"] = credentials and credentials["password"]
    results["connwl_login"] = bool(credentials) and login_and_publish(env["DN_NWL"], **credentials)
if "mqtt_again" in scenarios:
    results["mqtt_second_registration_secret"] = mqtt_registration(env["DN_MQTT"])
print(json.dumps(results))
sys.stdout.flush()
os._exit(0)  # linkkit leaves non-daemon threads behind
