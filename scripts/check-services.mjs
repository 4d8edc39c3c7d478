#!/usr/bin/env node
// `pnpm check:services`: is every backing service of this configuration reachable?
//
// Reads .env.infrastructure, then .env.backend (if present), then what a running `make run`
// (standalone) wrote about its embedded servers ($VAR_DIR or ./var, standalone.env), then the
// environment (strongest), and probes each configured service with its own protocol, using
// Node's built-ins only:
// PostgreSQL (signs in as the URL's user to its database: trust, password, md5 or SCRAM),
// Redis (PING), RabbitMQ (AMQP 0-9-1: logs in and opens the URL's virtual host; and the
// management API when RABBITMQ_MANAGEMENT_URL is set), Neo4j (Bolt handshake), MinIO
// (/minio/health/live), Chroma (/api/v2/heartbeat) and the gateway (/health, which must be
// Switchyard's report: any HTTP 200 is not enough). Every probe is
// bounded by --timeout. A service that answers but refuses the credentials, the database or
// the virtual host is `auth failed`, not `down`. Prints a table, or JSON with --json; exits 1
// when a required service is not up.
//
// Usage: node scripts/check-services.mjs [--json] [--timeout MS] [--require a,b,...]

import { createHash, createHmac, pbkdf2Sync, randomBytes } from "node:crypto";
import { readFileSync, existsSync } from "node:fs";
import net from "node:net";
import { performance } from "node:perf_hooks";

// PostgreSQL, Redis and the broker: RabbitMQ, or Redis as standalone's broker.
const DEFAULT_REQUIRED = ["postgres", "redis", "broker"];

export function parseEnvFile(text) {
  const values = {};
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const match = line.match(/^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$/);
    if (!match) continue;
    let value = match[2].trim();
    if ((value.startsWith('"') && value.endsWith('"')) || (value.startsWith("'") && value.endsWith("'"))) {
      value = value.slice(1, -1);
    }
    values[match[1]] = value;
  }
  return values;
}

export function loadSettings(cwd = process.cwd(), env = process.env) {
  const settings = {};
  for (const name of [".env.infrastructure", ".env.backend"]) {
    const path = `${cwd}/${name}`;
    if (existsSync(path)) Object.assign(settings, parseEnvFile(readFileSync(path, "utf8")));
  }
  // A standalone running here says where its embedded servers listen (it removes the file
  // when it stops): those are the services of this checkout while it runs.
  const varDir = env.VAR_DIR || settings.VAR_DIR || `${cwd}/var`;
  const standalone = `${varDir.startsWith("/") ? "" : `${cwd}/`}${varDir}/standalone.env`;
  if (existsSync(standalone)) Object.assign(settings, parseEnvFile(readFileSync(standalone, "utf8")));
  for (const [key, value] of Object.entries(env)) {
    if (value !== undefined && value !== "") settings[key] = value;
  }
  return settings;
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms${what ? ` (${what})` : ""}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Connect, send `hello`, and resolve with what `accept` makes of the first bytes; the socket
// is destroyed on every outcome, the timeout included, so nothing keeps the process alive.
function tcpExchange(host, port, hello, accept, ms) {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection({ host, port });
    let received = Buffer.alloc(0);
    const finish = (error, value) => {
      clearTimeout(timer);
      socket.destroy();
      if (error) reject(error);
      else resolve(value);
    };
    const timer = setTimeout(() => finish(new Error(`no answer within ${ms} ms`)), ms);
    socket.on("connect", () => socket.write(hello));
    socket.on("data", (chunk) => {
      received = Buffer.concat([received, chunk]);
      try {
        const verdict = accept(received, socket);
        if (verdict !== undefined) finish(null, verdict);
      } catch (error) {
        finish(error);
      }
    });
    socket.on("error", (error) => finish(new Error(error.code || error.message)));
    socket.on("close", () => finish(new Error("connection closed without an answer")));
  });
}

function endpoint(url, defaultPort) {
  const parsed = new URL(url);
  return {
    host: parsed.hostname.replace(/^\[|\]$/g, ""),
    port: Number(parsed.port || defaultPort),
    username: decodeURIComponent(parsed.username),
    password: decodeURIComponent(parsed.password),
  };
}

// A refusal of the credentials (or of the database, the virtual host): the service is there.
class AuthFailed extends Error {
  constructor(message) {
    super(message);
    this.status = "auth failed";
  }
}

function pgMessage(type, body) {
  const head = Buffer.alloc(5);
  head.write(type, 0, "latin1");
  head.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([head, body]);
}

function cstring(text) {
  return Buffer.from(`${text}\0`, "utf8");
}

function pgError(body) {
  const fields = {};
  let at = 0;
  while (at < body.length && body[at] !== 0) {
    const end = body.indexOf(0, at + 1);
    fields[String.fromCharCode(body[at])] = body.subarray(at + 1, end).toString("utf8");
    at = end + 1;
  }
  return fields;
}

// SQLSTATEs that mean the server refused who we are or what we asked for.
const PG_AUTH_CODES = new Set(["28000", "28P01", "3D000", "42501"]);

function scram(password, nonce) {
  const clientFirstBare = `n=,r=${nonce}`;
  return {
    first: `n,,${clientFirstBare}`,
    final(serverFirst) {
      const parts = Object.fromEntries(serverFirst.split(",").map((kv) => [kv[0], kv.slice(2)]));
      if (!parts.r || !parts.r.startsWith(nonce)) throw new Error("SCRAM: the server's nonce is not ours");
      const salted = pbkdf2Sync(password, Buffer.from(parts.s, "base64"), Number(parts.i), 32, "sha256");
      const clientKey = createHmac("sha256", salted).update("Client Key").digest();
      const storedKey = createHash("sha256").update(clientKey).digest();
      const withoutProof = `c=biws,r=${parts.r}`;
      const authMessage = `${clientFirstBare},${serverFirst},${withoutProof}`;
      const signature = createHmac("sha256", storedKey).update(authMessage).digest();
      const proof = Buffer.from(clientKey.map((byte, i) => byte ^ signature[i])).toString("base64");
      return `${withoutProof},p=${proof}`;
    },
  };
}

async function probePostgres(url, ms) {
  const { host, port, username, password } = endpoint(url.replace(/^postgres(ql)?(\+\w+)?:/, "http:"), 5432);
  const parsed = new URL(url.replace(/^postgres(ql)?(\+\w+)?:/, "http:"));
  const user = username || "postgres";
  const database = decodeURIComponent(parsed.pathname.slice(1)) || user;
  const params = Buffer.concat([cstring("user"), cstring(user), cstring("database"), cstring(database), Buffer.from([0])]);
  const startup = Buffer.alloc(8);
  startup.writeInt32BE(8 + params.length, 0);
  startup.writeInt32BE(196608, 4); // protocol 3.0
  let offset = 0;
  let sasl = null;
  const answer = await tcpExchange(host, port, Buffer.concat([startup, params]), (bytes, socket) => {
    while (bytes.length - offset >= 5) {
      const type = String.fromCharCode(bytes[offset]);
      const length = bytes.readInt32BE(offset + 1);
      if (bytes.length - offset < 1 + length) return undefined;
      const body = bytes.subarray(offset + 5, offset + 1 + length);
      offset += 1 + length;
      if (type === "E") {
        const error = pgError(body);
        const message = `${error.M || "error"} (${error.C || "?"})`;
        if (PG_AUTH_CODES.has(error.C)) throw new AuthFailed(message);
        throw new Error(message);
      }
      if (type === "Z") {
        socket.write(pgMessage("X", Buffer.alloc(0)));
        return `signed in as ${user} to ${database}`;
      }
      if (type !== "R") continue; // parameter status, backend key data, notices
      const code = body.readInt32BE(0);
      if (code === 0) continue; // authenticated; ReadyForQuery follows
      if (code === 3) socket.write(pgMessage("p", cstring(password)));
      else if (code === 5) {
        const inner = createHash("md5").update(password + user).digest("hex");
        const outer = createHash("md5").update(Buffer.concat([Buffer.from(inner), body.subarray(4, 8)])).digest("hex");
        socket.write(pgMessage("p", cstring(`md5${outer}`)));
      } else if (code === 10) {
        const mechanisms = body.subarray(4).toString("utf8").split("\0");
        if (!mechanisms.includes("SCRAM-SHA-256")) throw new Error(`no supported SASL mechanism (${mechanisms.join(" ")})`);
        sasl = scram(password, randomBytes(18).toString("base64"));
        const first = Buffer.from(sasl.first);
        const length32 = Buffer.alloc(4);
        length32.writeInt32BE(first.length, 0);
        socket.write(pgMessage("p", Buffer.concat([cstring("SCRAM-SHA-256"), length32, first])));
      } else if (code === 11) {
        socket.write(pgMessage("p", Buffer.from(sasl.final(body.subarray(4).toString("utf8")))));
      } else if (code !== 12) {
        throw new Error(`unsupported authentication method ${code}`);
      }
    }
    return undefined;
  }, ms);
  return { address: `${host}:${port}`, detail: answer };
}

async function probeRedis(url, ms) {
  const { host, port, username, password } = endpoint(url.replace(/^rediss?:/, "http:"), 6379);
  let hello = "";
  if (password) hello += username ? `AUTH ${username} ${password}\r\n` : `AUTH ${password}\r\n`;
  hello += "PING\r\n";
  const answer = await tcpExchange(host, port, hello, (bytes) => {
    const text = bytes.toString("latin1");
    if (!text.includes("\r\n")) return undefined;
    const lines = text.split("\r\n").filter(Boolean);
    const error = lines.find((line) => line.startsWith("-"));
    if (error) throw new Error(error.slice(1));
    if (lines.includes("+PONG")) return "PONG";
    return undefined;
  }, ms);
  return { address: `${host}:${port}`, detail: answer };
}

function amqpFrame(classId, methodId, args) {
  const payload = Buffer.concat([Buffer.from([classId >> 8, classId & 0xff, methodId >> 8, methodId & 0xff]), args]);
  const head = Buffer.alloc(7);
  head.writeUInt8(1, 0); // method frame
  head.writeUInt16BE(0, 1); // channel 0
  head.writeUInt32BE(payload.length, 3);
  return Buffer.concat([head, payload, Buffer.from([0xce])]);
}

function shortstr(text) {
  const bytes = Buffer.from(text, "utf8");
  return Buffer.concat([Buffer.from([bytes.length]), bytes]);
}

function longstr(bytes) {
  const size = Buffer.alloc(4);
  size.writeUInt32BE(bytes.length, 0);
  return Buffer.concat([size, bytes]);
}

// {capabilities: {authentication_failure_close: true}}: a refused login is answered with
// Connection.Close 403, not a silently closed socket.
function clientProperties() {
  const capability = Buffer.concat([shortstr("authentication_failure_close"), Buffer.from("t"), Buffer.from([1])]);
  const entries = Buffer.concat([shortstr("capabilities"), Buffer.from("F"), longstr(capability), shortstr("product"), Buffer.from("S"), longstr(Buffer.from("switchyard check-services"))]);
  return longstr(entries);
}

async function probeAmqp(url, ms) {
  const { host, port, username, password } = endpoint(url.replace(/^(py)?amqps?:/, "http:"), 5672);
  const path = new URL(url.replace(/^(py)?amqps?:/, "http:")).pathname;
  const vhost = path.length > 1 ? decodeURIComponent(path.slice(1)) : "/";
  const user = username || "guest";
  const secret = username ? password : "guest";
  const header = Buffer.from([0x41, 0x4d, 0x51, 0x50, 0, 0, 9, 1]); // "AMQP" 0-9-1
  let offset = 0;
  let started = false;
  const answer = await tcpExchange(host, port, header, (bytes, socket) => {
    if (!started && bytes.length >= 4 && bytes.subarray(0, 4).toString("latin1") === "AMQP") {
      if (bytes.length < 8) return undefined;
      throw new Error(`the broker wants protocol ${[...bytes.subarray(4, 8)].join(".")}`);
    }
    while (bytes.length - offset >= 7) {
      const type = bytes[offset];
      const size = bytes.readUInt32BE(offset + 3);
      if (bytes.length - offset < 8 + size) return undefined;
      const payload = bytes.subarray(offset + 7, offset + 7 + size);
      offset += 8 + size;
      if (type !== 1) {
        if (!started) throw new Error("not an AMQP server");
        continue;
      }
      const method = `${payload.readUInt16BE(0)}.${payload.readUInt16BE(2)}`;
      if (method === "10.10") {
        started = true;
        const response = Buffer.from(`\0${user}\0${secret}`, "utf8");
        socket.write(amqpFrame(10, 11, Buffer.concat([clientProperties(), shortstr("PLAIN"), longstr(response), shortstr("en_US")])));
      } else if (method === "10.30") {
        const tune = Buffer.alloc(8);
        tune.writeUInt16BE(payload.readUInt16BE(4), 0);
        tune.writeUInt32BE(payload.readUInt32BE(6), 2);
        tune.writeUInt16BE(0, 6); // no heartbeats: the probe is over in a moment
        socket.write(amqpFrame(10, 31, tune));
        socket.write(amqpFrame(10, 40, Buffer.concat([shortstr(vhost), shortstr(""), Buffer.from([0])])));
      } else if (method === "10.41") {
        socket.write(amqpFrame(10, 50, Buffer.concat([Buffer.from([0, 200]), shortstr("bye"), Buffer.alloc(4)])));
        return `logged in as ${user}, virtual host ${vhost} open`;
      } else if (method === "10.50") {
        const code = payload.readUInt16BE(4);
        const text = payload.subarray(7, 7 + payload[6]).toString("utf8");
        if (code === 403 || code === 530) throw new AuthFailed(`${text} (${code})`);
        throw new Error(`${text} (${code})`);
      } else if (!started) {
        throw new Error("not an AMQP server");
      }
    }
    return undefined;
  }, ms);
  return { address: `${host}:${port}`, detail: answer };
}

async function probeBolt(url, ms) {
  const { host, port } = endpoint(url.replace(/^(bolt|neo4j)(\+s|\+ssc)?:/, "http:"), 7687);
  const hello = Buffer.alloc(20);
  hello.writeUInt32BE(0x6060b017, 0);
  hello.writeUInt32BE(0x00000405, 4); // 5.4, then 5.0, 4.4, 4.3
  hello.writeUInt32BE(0x00000005, 8);
  hello.writeUInt32BE(0x00000404, 12);
  hello.writeUInt32BE(0x00000403, 16);
  const answer = await tcpExchange(host, port, hello, (bytes) => {
    if (bytes.length < 4) return undefined;
    const version = bytes.readUInt32BE(0);
    if (version === 0) throw new Error("no common Bolt version");
    return `Bolt ${version & 0xff}.${(version >> 8) & 0xff}`;
  }, ms);
  return { address: `${host}:${port}`, detail: answer };
}

// A GET bounded by `ms`: its response and body text, or an error that says why not.
async function fetchText(url, ms, headers = {}) {
  const response = await withTimeout(
    fetch(url, { headers, signal: AbortSignal.timeout(ms) }).catch((error) => {
      const cause = error.cause && (error.cause.code || error.cause.message);
      throw new Error(error.name === "TimeoutError" ? `no answer within ${ms} ms` : cause || error.message);
    }),
    ms,
    "HTTP",
  );
  return { response, body: await response.text().catch(() => "") };
}

async function probeHttp(url, ms, { headers = {}, okStatus = (s) => s >= 200 && s < 300 } = {}) {
  const started = new URL(url);
  const { response, body } = await fetchText(url, ms, headers);
  if (!okStatus(response.status)) {
    let detail = `HTTP ${response.status}`;
    try {
      const parsed = JSON.parse(body);
      if (parsed.status) detail += ` (${parsed.status})`;
    } catch {
      // not JSON: the status code says enough
    }
    throw new Error(detail);
  }
  return { address: started.host, detail: `HTTP ${response.status}` };
}

// Another program on the gateway's port may answer 200 too: up only for Switchyard's report.
async function probeGateway(url, ms) {
  const { response, body } = await fetchText(url, ms);
  let report;
  try {
    report = JSON.parse(body);
  } catch {
    report = null;
  }
  if (!report || typeof report.service_type !== "string" || typeof report.checks !== "object") {
    throw new Error(`HTTP ${response.status}, not a Switchyard health report (another program on this port?)`);
  }
  if (response.status !== 200) throw new Error(`HTTP ${response.status} (${report.status})`);
  return { address: new URL(url).host, detail: `${report.service_type} ${report.version || ""}, ${report.status}`.replace(" ,", ",") };
}

export function plannedChecks(settings) {
  const checks = [];
  const add = (name, target, run) => checks.push({ name, target, run });
  if (settings.DATABASE_URL) add("postgres", settings.DATABASE_URL, (ms) => probePostgres(settings.DATABASE_URL, ms));
  if (settings.REDIS_URL) add("redis", settings.REDIS_URL, (ms) => probeRedis(settings.REDIS_URL, ms));
  const broker = settings.CELERY_BROKER_URL || "";
  if (/^(py)?amqps?:/.test(broker)) add("rabbitmq", broker, (ms) => probeAmqp(broker, ms));
  if (/^rediss?:/.test(broker)) add("broker", broker, (ms) => probeRedis(broker, ms));
  if (settings.RABBITMQ_MANAGEMENT_URL) {
    const management = new URL(settings.RABBITMQ_MANAGEMENT_URL);
    const auth = Buffer.from(`${decodeURIComponent(management.username)}:${decodeURIComponent(management.password)}`).toString("base64");
    management.username = "";
    management.password = "";
    const overview = new URL("/api/overview", management).toString();
    add("rabbitmq-management", overview, (ms) => probeHttp(overview, ms, { headers: { Authorization: `Basic ${auth}` } }));
  }
  if (settings.NEO4J_URI) add("neo4j", settings.NEO4J_URI, (ms) => probeBolt(settings.NEO4J_URI, ms));
  if (settings.MINIO_ENDPOINT) {
    const scheme = /^(true|1|yes)$/i.test(settings.MINIO_SECURE || "") ? "https" : "http";
    const url = `${scheme}://${settings.MINIO_ENDPOINT}/minio/health/live`;
    add("minio", url, (ms) => probeHttp(url, ms));
  }
  if (settings.CHROMA_HOST) {
    const scheme = /^(true|1|yes)$/i.test(settings.CHROMA_SSL || "") ? "https" : "http";
    const url = `${scheme}://${settings.CHROMA_HOST}:${settings.CHROMA_PORT || 8000}/api/v2/heartbeat`;
    add("chroma", url, (ms) => probeHttp(url, ms));
  }
  const gateway =
    settings.SWITCHYARD_API_URL ||
    `http://${settings.API_HOST && settings.API_HOST !== "0.0.0.0" ? settings.API_HOST : "127.0.0.1"}:${settings.API_PORT || 8000}`;
  const health = `${gateway.replace(/\/$/, "")}/health`;
  add("gateway", health, (ms) => probeGateway(health, ms));
  return checks;
}

function redact(target) {
  try {
    const url = new URL(target);
    if (url.password) url.password = "***";
    return url.toString();
  } catch {
    return target;
  }
}

const SETTING_OF = { postgres: "DATABASE_URL", redis: "REDIS_URL", broker: "CELERY_BROKER_URL", rabbitmq: "CELERY_BROKER_URL (amqp://)", neo4j: "NEO4J_URI", minio: "MINIO_ENDPOINT", chroma: "CHROMA_HOST" };

export async function runChecks(settings, { timeout = 3000, required = DEFAULT_REQUIRED } = {}) {
  const planned = plannedChecks(settings);
  // "broker" is whichever the broker URL names: RabbitMQ's check, or Redis's (standalone).
  const brokerCheck = planned.some((check) => check.name === "rabbitmq") ? "rabbitmq" : "broker";
  required = required.map((name) => (name === "broker" ? brokerCheck : name));
  const missing = required
    .filter((name) => !planned.some((check) => check.name === name))
    .map((name) => ({
      service: name,
      required: true,
      target: "",
      address: "",
      status: "down",
      latency_ms: 0,
      detail: `not configured: set ${SETTING_OF[name] || name}`,
    }));
  const probed = await Promise.all(
    planned.map(async ({ name, target, run }) => {
      const started = performance.now();
      const result = { service: name, required: required.includes(name), target: redact(target) };
      try {
        const { address, detail } = await run(timeout);
        return { ...result, address, status: "up", latency_ms: Math.round((performance.now() - started) * 10) / 10, detail };
      } catch (error) {
        let address = "";
        try {
          address = new URL(target.replace(/^[a-z0-9+]+:/i, "http:")).host;
        } catch {
          address = "";
        }
        return {
          ...result,
          address,
          status: error.status || "down",
          latency_ms: Math.round((performance.now() - started) * 10) / 10,
          detail: String(error.message || error).slice(0, 200),
        };
      }
    }),
  );
  return [...probed, ...missing];
}

function table(results) {
  const rows = [["service", "address", "status", "latency", "detail"]];
  for (const r of results) {
    rows.push([r.service + (r.required ? " *" : ""), r.address, r.status, `${r.latency_ms} ms`, r.detail]);
  }
  const widths = rows[0].map((_, i) => Math.max(...rows.map((row) => String(row[i]).length)));
  const lines = rows.map((row) => row.map((cell, i) => String(cell).padEnd(widths[i])).join("  ").trimEnd());
  lines.splice(1, 0, widths.map((w) => "-".repeat(w)).join("  "));
  return `${lines.join("\n")}\n* required: a required service that is down fails the check\n`;
}

function parseArgs(argv) {
  const options = { json: false, timeout: 3000, required: DEFAULT_REQUIRED };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--json") options.json = true;
    else if (arg === "--timeout") options.timeout = Number(argv[++i]);
    else if (arg === "--require") options.required = argv[++i].split(",").map((s) => s.trim()).filter(Boolean);
    else if (arg === "-h" || arg === "--help") options.help = true;
    else throw new Error(`unknown argument ${arg}`);
  }
  if (!Number.isFinite(options.timeout) || options.timeout <= 0) throw new Error("--timeout needs a positive number of ms");
  return options;
}

async function main() {
  let options;
  try {
    options = parseArgs(process.argv.slice(2));
  } catch (error) {
    process.stderr.write(`check-services: ${error.message}\n`);
    process.exit(2);
  }
  if (options.help) {
    process.stdout.write("usage: check-services [--json] [--timeout MS] [--require a,b,...]\n");
    return;
  }
  const results = await runChecks(loadSettings(), options);
  const failed = results.some((r) => r.required && r.status !== "up");
  if (options.json) process.stdout.write(`${JSON.stringify({ ok: !failed, services: results }, null, 2)}\n`);
  else process.stdout.write(table(results));
  process.exitCode = failed ? 1 : 0;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  await main();
}
