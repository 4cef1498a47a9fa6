#!/usr/bin/env python3
"""Writes sdk-families.json: one per-device login per Alibaba SDK family, its client id built
the way that family's published source builds it (the file is named in each case's `source`),
its password computed here with Python's hmac module, independently of iotauth. These are not
captured from running the SDKs (the C SDKs, Android LinkKit and the Living Platform SDK were
not run); mqtt-sign.json holds the captured ones. Run: python3 tests/vectors/sdk_families.py
"""
import hashlib
import hmac
import json
import os

PK, DN, SECRET = "a1B2c3D4e5F", "dev-01", "Fam1lyS3cr3tF0rV3ct0rsAbCdEf0123"
HASHES = {"hmacmd5": hashlib.md5, "hmacsha1": hashlib.sha1, "hmacsha256": hashlib.sha256}

# id, family, source, core, block (between the `|`s), timestamp signed (None: not sent),
# sign method, hex case, and optional overrides of the identity.
CASES = [
    ("fam-linksdk-c-4.0", "Link SDK C 4.0 (no extended client id: a trailing empty item)",
     "core/utils/core_auth.c core_auth_mqtt_clientid, core_sprintf (NULL becomes \"\")",
     f"{PK}.{DN}", "timestamp=2524608000000,_ss=1,_v=sdk-c-4.0.0,securemode=2,signmethod=hmacsha256,ext=3,",
     "2524608000000", "hmacsha256", "upper"),
    ("fam-linksdk-c-4.2", "Link SDK C 4.2 (extended client id and _conn statistics)",
     "core/utils/core_auth.c; core/aiot_mqtt_api.c _core_mqtt_add_extend_clientid, _core_mqtt_add_netstats_extend",
     f"{PK}.{DN}", "timestamp=2524608000000,_ss=1,_v=sdk-c-4.2.0,securemode=3,signmethod=hmacsha256,ext=3,mid=ML302,pid=qx,os=freertos,_conn=tcp_2c_-50e",
     "2524608000000", "hmacsha256", "upper"),
    ("fam-linksdk-c-4-itls", "Link SDK C 4.x iTLS (authtype=id2, securemode 8)",
     "core/aiot_mqtt_api.c AIOT_MQTTOPT_EXTEND_CLIENTID, AIOT_MQTTOPT_SECURITY_MODE (the SDK's own unit test)",
     f"{PK}.{DN}", "timestamp=2524608000000,_ss=1,_v=sdk-c-4.2.0,securemode=8,signmethod=hmacsha256,ext=3,authtype=id2,_conn=tls_0",
     "2524608000000", "hmacsha256", "upper"),
    ("fam-iotkit-3-tls", "iotkit-embedded 3.0.1, TLS, Thing model",
     "aliyun/iotkit-embedded src/dev_sign/dev_sign_mqtt.c clientid_kv",
     f"{PK}.{DN}", "timestamp=2524608000000,_v=sdk-c-3.0.1,securemode=2,signmethod=hmacsha256,lan=C,v=20",
     "2524608000000", "hmacsha256", "upper"),
    ("fam-iotkit-3-tcp", "iotkit-embedded 3.0.1, plain TCP, classic model",
     "aliyun/iotkit-embedded src/dev_sign/dev_sign_mqtt.c clientid_kv",
     f"{PK}.{DN}", "timestamp=2524608000000,_v=sdk-c-3.0.1,securemode=3,signmethod=hmacsha256,lan=C,gw=0,ext=0",
     "2524608000000", "hmacsha256", "upper"),
    ("fam-iotkit-3-itls", "iotkit-embedded 3.x iTLS (customize_info authtype=id2)",
     "aliyun/iotkit-embedded mqtt_api.c _sign_get_clientid custom_kv; IOTX_IOCTL_SET_CUSTOMIZE_INFO",
     f"{PK}.{DN}", "timestamp=2524608000000,_v=sdk-c-3.0.1,securemode=8,signmethod=hmacsha256,lan=C,v=20,authtype=id2",
     "2524608000000", "hmacsha256", "upper"),
    ("fam-iotkit-3.0-uptime", "iotkit-embedded 3.0 development build (timestamp = uptime in ms)",
     "iotkit-embedded 3.0 dev_sign_mqtt.c IOT_Sign_MQTT with HAL_UptimeMs()",
     f"{PK}.{DN}", "securemode=3,timestamp=83456,signmethod=hmacsha256,gw=0,ext=0,ver=c-sdk-3.0.0",
     "83456", "hmacsha256", "upper"),
    ("fam-iotkit-2", "iotkit-embedded 2.x (partner and module ids)",
     "aliyun/iotkit-embedded src/infra/system/guider.c _ident_partner, _ident_module, _calc_hmac_signature",
     f"{PK}.{DN}", "securemode=2,timestamp=2524608000000,signmethod=hmacsha1,gw=0,ext=0,partner_id=example.partner,module_id=example.module",
     "2524608000000", "hmacsha1", "lower"),
    ("fam-iotkit-1", "iotkit-embedded 1.x (hmacmd5, pid)",
     "iotkit-embedded 1.x src/mqtt/aliot_mqtt_client.c",
     f"{PK}.{DN}", "securemode=2,gw=0,signmethod=hmacmd5,pid=P1,timestamp=2524608000000",
     "2524608000000", "hmacmd5", "lower"),
    ("fam-android-linkkit", "Android LinkKit (channel-core MqttNet: no timestamp)",
     "decompiled com.aliyun.alink.linksdk.channel.core.persistent.mqtt MqttNet (closed AAR)",
     f"{DN}&{PK}", "securemode=2,_v=1.7.0,lan=Android,os=12,signmethod=hmacsha1,ext=1",
     None, "hmacsha1", "upper"),
    ("fam-android-linkkit-ts", "Android LinkKit, older (timestamp signed, dotted os)",
     "decompiled com.aliyun.alink.linksdk.channel.core.persistent.mqtt MqttNet, older build",
     f"{DN}&{PK}", "securemode=2,_v=1.5.0,lan=Android,os=8.1.0,signmethod=hmacsha1,ext=1,timestamp=1700000000000",
     "1700000000000", "hmacsha1", "upper"),
    ("fam-living-1.3", "Living Platform (smart-home) device SDK 1.3",
     "espressif/esp-ali-smartliving ali-smartliving-device-sdk-c/src/infra/system/guider.c; LIVING_SDK_VERSION",
     f"{PK}.{DN}", "securemode=2,timestamp=2524608000000,signmethod=hmacsha1,gw=0,ext=0,_fy=1.3.0,_ss=1",
     "2524608000000", "hmacsha1", "lower"),
    ("fam-living-1.6", "Living Platform device SDK 1.6 (redirected URL: authtype=custom-ilop; empty pid and mid)",
     "Living SDK 1.6 src/infra/system/guider.c (p_dynamic_mqtt_url branch)",
     f"{PK}.{DN}", "securemode=2,tokenType=0,token=AB12,_v=sdk-c-2.3.0_FY_1.6.6-20,timestamp=2524608000000,signmethod=hmacsha1,lan=C,pid=,mid=,authtype=custom-ilop,_fy=1.6.6-20,_ss=1",
     "2524608000000", "hmacsha1", "lower"),
    ("fam-alios-things", "AliOS Things linkkit component",
     "alibaba/AliOS-Things components/linkkit/dev_sign/dev_sign_mqtt.c",
     f"{PK}.{DN}", "timestamp=2524608000000,_v=sdk-c-3.0.1,securemode=2,signmethod=hmacsha1,lan=C,_ss=1,gw=0,ext=0",
     "2524608000000", "hmacsha1", "lower"),
    ("fam-paho-java", "Alibaba's Paho Java sample",
     "help.aliyun.com MQTT-TCP connection sample (Paho Java)",
     f"{PK}.{DN}", "timestamp=1700000000000,_v=paho-java-1.0.0,securemode=2,signmethod=hmacsha256",
     "1700000000000", "hmacsha256", "lower"),
    ("fam-esp-at", "ESP-AT firmware (fields computed by the host: md5, no timestamp)",
     "docs.espressif.com MQTT AT commands, AT+MQTTUSERCFG; worked Alibaba example",
     "c82b968ebe5c", "securemode=3,signmethod=hmacmd5",
     None, "hmacmd5", "lower", "a1gh70UicfD", "c82b968ebe5c"),
    ("fam-node-ext", "Node SDK with the ext=1 Alibaba's RRPC document adds",
     "alibabacloud-iot-device-sdk lib/model.js genConnectPrarms, edited as the RRPC document says",
     "mini-9", "securemode=2,signmethod=hmacsha1,timestamp=1711111111333,lan=NodeJS,_v=1.2.8,ext=1",
     "1711111111333", "hmacsha1", "lower"),
    ("fam-linkkit-python-old", "linkkit Python, older (plain TCP)",
     "aliyun-iot-linkkit linkkit/linkkit.py, older release",
     f"{PK}&{DN}", "securemode=3,signmethod=hmacsha1,ext=1,timestamp=1700000000",
     "1700000000", "hmacsha1", "lower"),
    ("fam-linkkit-python-sii-comma", "linkkit Python 1.2.x with a comma in its unescaped sii",
     "aliyun-iot-linkkit linkkit/linkkit.py config_device_info (sii inserted unescaped)",
     f"{PK}&{DN}", "securemode=2,signmethod=hmacsha1,ext=1,_ss=1,lan=Python,_v=1.2.13,sii=board a,rev 2,timestamp=1710000000",
     "1710000000", "hmacsha1", "lower"),
]


def case(id, family, source, core, block, ts, method, hexcase, pk=PK, dn=DN):
    content = f"clientId{core}deviceName{dn}productKey{pk}" + (f"timestamp{ts}" if ts else "")
    digest = hmac.new(SECRET.encode(), content.encode(), HASHES[method]).hexdigest()
    return {
        "id": id, "family": family, "source": source, "productKey": pk, "deviceName": dn,
        "deviceSecret": SECRET, "clientIdCore": core, "timestamp": ts, "signmethod": method,
        "sign_content": content, "mqttClientId": f"{core}|{block}|", "username": f"{dn}&{pk}",
        "password": digest.upper() if hexcase == "upper" else digest,
    }


document = {
    "source": "Client ids built as each Alibaba SDK family's published source builds them (see each "
              "case's source); passwords computed by tests/vectors/sdk_families.py with Python's "
              "hmac module, not by iotauth and not captured from the SDKs. Secrets are synthetic.",
    "format": "as mqtt-sign.json; timestamp is null when the family sends none",
    "cases": [case(*c) for c in CASES],
}
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sdk-families.json")
with open(path, "w") as out:
    json.dump(document, out, indent=1)
    out.write("\n")
