#!/usr/bin/env python3
"""Writes the seed corpora fuzz/corpus/<target>/ from tests/vectors (the SDK vectors)."""
import hashlib
import json
import pathlib

root = pathlib.Path(__file__).resolve().parent
vectors = root.parent / "tests" / "vectors"
mqtt = json.loads((vectors / "mqtt-sign.json").read_text())["cases"]
dynreg = json.loads((vectors / "dynreg-sign.json").read_text())["cases"]
connects = [c for c in mqtt + dynreg if "mqttClientId" in c]
seeds = {
    "mqtt_client_id": [c["mqttClientId"] for c in connects],
    "mqtt_username": [c["username"] for c in connects],
    "mqtt_connect": ["\0".join([c["mqttClientId"], c["username"], c["password"]]) for c in connects],
    "register_form": [c["body"] for c in dynreg if "body" in c],
    "register_response": [
        '{"code":200,"data":{"productKey":"a2SHaReD0k1","deviceName":"shared-reg-01","deviceSecret":"Sh4r3dS3cr3tV4lu3F0rT3st1ngXyZ09"},"message":"success"}',
        '{"code":6602,"message":"device secret already issued"}',
        '{"code":460,"message":"invalid request parameters"}',
    ],
    # Structured targets: any bytes are a valid input; these reach both branches.
    "sign_verify_roundtrip": [bytes(range(i, i + 200)).hex() for i in (0, 1, 7)],
    "lifecycle": [bytes((i * 37 + k) % 256 for k in range(300)).hex() for i in (0, 1, 2, 3)],
}
for target, inputs in seeds.items():
    folder = root / "corpus" / target
    folder.mkdir(parents=True, exist_ok=True)
    for text in inputs:
        data = bytes.fromhex(text) if target in ("sign_verify_roundtrip", "lifecycle") else text.encode()
        (folder / f"seed-{hashlib.sha1(data).hexdigest()[:16]}").write_bytes(data)
