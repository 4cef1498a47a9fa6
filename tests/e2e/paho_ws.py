#!/usr/bin/env python3
"""paho-mqtt (1.6, the client linkkit is built on) over WebSocket against `iotauth serve --mqtt-ws`.

Driven by tests/serve_e2e.rs. Logs in with the given credentials (MQTT 3.1.1 over ws://, the
transport of the SDKs' browser and mini-program builds), subscribes to TOPIC, publishes one
message to it, and also tries a FORBIDDEN filter. Prints one JSON line: the CONNACK code, the
SUBACK codes of TOPIC and FORBIDDEN, and the payload received on TOPIC (or null).

Environment: PORT, CLIENT_ID, USERNAME, PASSWORD, TOPIC, FORBIDDEN; with CAFILE, over wss://
to `localhost`, the server's certificate checked against CAFILE.
"""
import json
import os
import threading

import paho.mqtt.client as mqtt

env = os.environ
TIMEOUT = 10
result = {"connack": None, "granted": {}, "received": None}
connected, subscribed, received = threading.Event(), threading.Event(), threading.Event()
pending = {}
# The SUBACK can arrive (on paho's loop thread) before subscribe() returns its message id: the
# callback waits for the id to be recorded.
pending_lock = threading.Lock()


def on_connect(client, userdata, flags, rc):
    result["connack"] = rc
    connected.set()


def on_subscribe(client, userdata, mid, granted_qos):
    with pending_lock:
        result["granted"][pending.pop(mid)] = list(granted_qos)
        if len(result["granted"]) == 2:
            subscribed.set()


def on_message(client, userdata, message):
    result["received"] = message.payload.decode()
    received.set()


client = mqtt.Client(client_id=env["CLIENT_ID"], transport="websockets", protocol=mqtt.MQTTv311)
client.username_pw_set(env["USERNAME"], env["PASSWORD"])
host = "127.0.0.1"
if env.get("CAFILE"):
    client.tls_set(ca_certs=env["CAFILE"])
    host = "localhost"
client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
client.connect(host, int(env["PORT"]), keepalive=60)
client.loop_start()
try:
    if connected.wait(TIMEOUT) and result["connack"] == 0:
        for name in ("TOPIC", "FORBIDDEN"):
            with pending_lock:
                _, mid = client.subscribe(env[name], qos=0)
                pending[mid] = name
        if subscribed.wait(TIMEOUT):
            client.publish(env["TOPIC"], "over websocket", qos=0)
            received.wait(TIMEOUT)
finally:
    client.disconnect()
    client.loop_stop()
print(json.dumps(result))
