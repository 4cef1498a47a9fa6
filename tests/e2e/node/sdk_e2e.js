#!/usr/bin/env node
'use strict';
/*
 * Alibaba's Node device SDKs, unmodified from npm, against `iotauth serve`.
 *
 *   node tests/e2e/node/sdk_e2e.js '<case JSON>'
 *
 * The SDKs are configured only through their own public options; TLS trust comes only from
 * NODE_EXTRA_CA_CERTS. Prints exactly ONE JSON line on stdout (anything the SDKs log goes to
 * stderr) and exits 0 whenever the driver itself worked, whatever the outcome; it exits 2 (after
 * printing {"outcome":"driver_error","message":...}) only when the case is malformed or the driver
 * broke. It never hangs: after `timeoutMs` (default 15000) it prints {"outcome":"timeout",...}.
 *
 * Case fields (argv[2]):
 *   case          "login" | "register"
 *   sdk           "alibabacloud" (alibabacloud-iot-device-sdk 1.2.8)
 *                 | "aliyun"     (aliyun-iot-device-sdk 1.0.1)
 *   timeoutMs     optional overall limit, default 15000
 *
 *   login:
 *     productKey, deviceName, deviceSecret
 *     brokerUrl      "mqtt://127.0.0.1:PORT" or "mqtts://localhost:PORT" (the SDK's `brokerUrl`;
 *                    an mqtts:// URL also makes the SDK send securemode=2, otherwise 3)
 *     signAlgorithm  optional, the SDK's `signAlgorithm` option: "md5" | "sha1" | "sha256"
 *                    (SDK default "sha1"). The client id advertises `signmethod=hmac<value>`;
 *                    the aliyun SDK signs with it, the alibabacloud SDK always signs HMAC-SHA1.
 *     clientId       optional, the SDK's `clientId` option (the client id CORE)
 *     keepalive      optional, the SDK's `keepalive` option in seconds (SDK default 60)
 *   register:
 *     productKey, productSecret, deviceName
 *     registerURL    "http://127.0.0.1:PORT/auth/register/device" or "https://localhost:PORT/..."
 *     signMethod     optional, the register option `signMethod`: only the form field's value
 *                    (SDK default "hmacsha1"); both SDKs sign HMAC-SHA1 whatever it says
 *     random         optional, the register option `random`
 *
 * Results (one line):
 *   login    {"outcome":"connected", "sdk", "clientId", "username", "signmethod" (as advertised
 *             in the client id), "passwordAlgorithm" ("md5"|"sha1"|"sha256"|null: which HMAC the
 *             password really is, recomputed here from the client id), "published" (QoS 1 PUBACK
 *             on /{pk}/{dn}/user/update), "subscribed" (SUBACK granted a QoS < 128 for
 *             /{pk}/{dn}/user/get), "granted", "received" (a message published to
 *             /{pk}/{dn}/user/get came back on the subscription), "ended", "events"}
 *            {"outcome":"error", "code" (the `.code` of the Error the SDK emits: the CONNACK
 *             return code for a refusal, or a Node error code such as "ECONNREFUSED"),
 *             "message", plus "sdk", "clientId", "username", "signmethod", "passwordAlgorithm",
 *             "events"}
 *            {"outcome":"closed", ...} the connection closed before any CONNACK or error
 *   register {"outcome":"registered", "deviceSecret", "response" (the reply body)}
 *            {"outcome":"error", "code" (the reply's `code`, or a Node error code), "message",
 *             "httpStatus" (when the SDK surfaced an HTTP error status), "response" (the reply
 *             body when there was one)}
 *   both     {"outcome":"timeout", "events", ...what was learnt so far}
 *   `events` lists the SDK's events in order (connect, error, close, offline, reconnect, ...).
 */

const crypto = require('crypto');

// Keep stdout for the one result line: the SDKs' DEBUG output goes to console.log.
console.log = (...args) => console.error(...args);
console.info = (...args) => console.error(...args);

let finished = false;
const partial = {};

function emit(result, exitCode) {
  if (finished) return;
  finished = true;
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(exitCode));
  // Fallback in case the write callback never fires.
  setTimeout(() => process.exit(exitCode), 1000).unref();
}

function done(result) {
  emit(Object.assign({ outcome: result.outcome }, partial, result), 0);
}

function driverError(message) {
  emit({ outcome: 'driver_error', message: String(message) }, 2);
}

process.on('uncaughtException', (e) => driverError((e && e.stack) || e));
process.on('unhandledRejection', (e) => driverError((e && e.stack) || e));

function need(c, names) {
  for (const n of names) {
    if (typeof c[n] !== 'string' || c[n] === '') throw new Error(`case field "${n}" (string) is required`);
  }
}

function loadSdk(name) {
  const pkg = { alibabacloud: 'alibabacloud-iot-device-sdk', aliyun: 'aliyun-iot-device-sdk' }[name];
  if (!pkg) throw new Error(`unknown sdk "${name}" (alibabacloud | aliyun)`);
  try {
    return require(pkg);
  } catch (e) {
    throw new Error(`${e.message} (run \`npm ci\` in ${__dirname})`);
  }
}

/* Which HMAC the password really is, from the content rule of PROTOCOL.md a.4. */
function passwordAlgorithm(clientId, username, password, deviceSecret) {
  const bar = clientId.indexOf('|');
  if (bar < 0) return null;
  const core = clientId.slice(0, bar);
  const params = {};
  for (const item of clientId.slice(bar + 1).replace(/\|\s*$/, '').split(',')) {
    const eq = item.indexOf('=');
    if (eq > 0) params[item.slice(0, eq).trim()] = item.slice(eq + 1).trim();
  }
  const [dn, pk] = username.split('&');
  let content = `clientId${core}deviceName${dn}productKey${pk}`;
  if (params.timestamp !== undefined) content += `timestamp${params.timestamp}`;
  for (const alg of ['md5', 'sha1', 'sha256']) {
    const mac = crypto.createHmac(alg, deviceSecret).update(content).digest('hex');
    if (mac.toLowerCase() === String(password).toLowerCase()) return alg;
  }
  return null;
}

function signmethodOf(clientId) {
  const m = /signmethod\s*=\s*([^,|\s]*)/.exec(clientId);
  return m ? m[1] : null;
}

function login(c, sdk) {
  need(c, ['productKey', 'deviceName', 'deviceSecret', 'brokerUrl']);
  const options = {
    productKey: c.productKey,
    deviceName: c.deviceName,
    deviceSecret: c.deviceSecret,
    brokerUrl: c.brokerUrl,
  };
  if (c.signAlgorithm !== undefined) options.signAlgorithm = c.signAlgorithm;
  if (c.clientId !== undefined) options.clientId = c.clientId;
  if (c.keepalive !== undefined) options.keepalive = c.keepalive;

  const events = [];
  partial.events = events;
  const device = sdk.device(options);
  // Both SDKs keep the mqtt.js client in `_mqttClient` (1.2.8 also has a `mqttClient` getter);
  // its options are exactly what the SDK's genConnectPrarms() produced.
  const client = device._mqttClient;
  const o = client.options;
  partial.clientId = o.clientId;
  partial.username = o.username;
  partial.signmethod = signmethodOf(o.clientId);
  partial.passwordAlgorithm = passwordAlgorithm(o.clientId, o.username, String(o.password), c.deviceSecret);

  const topicUpdate = `/${c.productKey}/${c.deviceName}/user/update`;
  const topicGet = `/${c.productKey}/${c.deviceName}/user/get`;
  let settled = false;

  const finish = (result) => {
    if (settled) return;
    settled = true;
    // end(force=true) after a refusal, so mqtt.js does not reconnect; a clean DISCONNECT otherwise.
    const force = result.outcome !== 'connected';
    let ended = false;
    const report = () => done(Object.assign(result, { ended }));
    try {
      device.end(force, () => {
        ended = true;
        report();
      });
    } catch (e) {
      result.endError = String(e);
      report();
    }
    setTimeout(report, 3000).unref();
  };

  // The SDKs re-emit mqtt.js events with the listener's arguments packed in ONE array.
  for (const name of ['close', 'offline', 'reconnect']) {
    device.on(name, () => {
      events.push(name);
      if (name === 'close' && !settled) finish({ outcome: 'closed' });
    });
  }
  device.on('error', (args) => {
    events.push('error');
    const err = Array.isArray(args) ? args[0] : args;
    finish({
      outcome: 'error',
      code: err && err.code !== undefined ? err.code : null,
      message: err && err.message !== undefined ? err.message : String(err),
    });
  });
  device.on('connect', () => {
    events.push('connect');
    if (settled) return;
    // Kept in `partial`, so that a timeout still reports how far the session got.
    const r = Object.assign(partial, { published: false, subscribed: false, received: false });
    // Two branches, each completing once: the publish, and subscribe + echo.
    const pending = new Set(['publish', 'echo']);
    const complete = (branch) => {
      if (pending.delete(branch) && pending.size === 0) finish({ outcome: 'connected' });
    };
    device.on('message', (topic, payload) => {
      if (topic === topicGet && String(payload) === 'echo') {
        r.received = true;
        complete('echo');
      }
    });
    device.publish(topicUpdate, JSON.stringify({ hello: 'from ' + c.sdk }), { qos: 1 }, (err) => {
      r.published = !err;
      if (err) r.publishError = String(err);
      complete('publish');
    });
    device.subscribe(topicGet, { qos: 1 }, (err, granted) => {
      r.granted = (granted || []).map((g) => g.qos);
      r.subscribed = !err && r.granted.length > 0 && r.granted.every((q) => q < 128);
      if (err) r.subscribeError = String(err);
      if (!r.subscribed) return complete('echo'); // nothing to wait for
      device.publish(topicGet, 'echo', { qos: 1 });
      setTimeout(() => complete('echo'), 3000).unref();
    });
  });
}

function register(c, sdk) {
  need(c, ['productKey', 'productSecret', 'deviceName', 'registerURL']);
  if (typeof sdk.register !== 'function') {
    return done({ outcome: 'unsupported', message: `${c.sdk} has no register()` });
  }
  const options = {
    productKey: c.productKey,
    productSecret: c.productSecret,
    deviceName: c.deviceName,
    registerURL: c.registerURL,
  };
  if (c.signMethod !== undefined) options.signMethod = c.signMethod;
  if (c.random !== undefined) options.random = c.random;
  // register() calls back once with either the reply body (code == 200), the reply body it threw
  // (code != 200), or the axios Error (network failure or an HTTP status outside 2xx).
  sdk.register(options, (res) => {
    if (res instanceof Error) {
      const out = { outcome: 'error', code: res.code !== undefined ? res.code : null, message: res.message };
      if (res.response) {
        out.httpStatus = res.response.status;
        out.response = res.response.data;
        if (res.response.data && typeof res.response.data === 'object') {
          if (res.response.data.code !== undefined) out.code = res.response.data.code;
          if (res.response.data.message !== undefined) out.message = res.response.data.message;
        }
      }
      return done(out);
    }
    if (res && res.code == 200 && res.data && res.data.deviceSecret) {
      return done({ outcome: 'registered', deviceSecret: res.data.deviceSecret, response: res });
    }
    done({
      outcome: 'error',
      code: res && res.code !== undefined ? res.code : null,
      message: res && res.message !== undefined ? res.message : null,
      response: res,
    });
  });
}

function main() {
  let c;
  try {
    c = JSON.parse(process.argv[2] || '');
  } catch (e) {
    return driverError(`argv[2] must be the case as JSON: ${e.message}`);
  }
  const timeoutMs = c.timeoutMs !== undefined ? Number(c.timeoutMs) : 15000;
  // A referenced timer: it also keeps the process alive until a result is printed.
  setTimeout(() => done({ outcome: 'timeout', timeoutMs }), timeoutMs);
  partial.case = c.case;
  partial.sdk = c.sdk;
  try {
    const sdk = loadSdk(c.sdk);
    if (c.case === 'login') login(c, sdk);
    else if (c.case === 'register') register(c, sdk);
    else throw new Error(`unknown case "${c.case}" (login | register)`);
  } catch (e) {
    return driverError(e.message);
  }
}

main();
