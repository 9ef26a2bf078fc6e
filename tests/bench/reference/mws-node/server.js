// The reference of the `mws-fanout` benchmark: a Node.js broadcast server on the `ws` package,
// with the same REST shape as an MWS gateway for what the benchmark uses, so one Rust client
// drives both the same way:
//
//   POST /v1/gateways/ID/sockets   {"tags": [...]}  -> 201 {"id","uri","expiresAt","tags"}
//   GET  /v1/gateways/ID/websocket_uri              -> 200 {"uri","expiresAt","tags"}
//   POST /v1/gateways/ID/messages  {"data": "...", "receivers": {"sockets": ["*"]} or {"tags": [...]}}
//   GET  /v1/gateways/ID/socket?token=T[&envelope=1][&since=N&epoch=E]   (WebSocket)
//
// Fan-out is what a Node developer would write: a Set of sockets and a Map tag -> Set, the
// message's bytes made once per message and handed to `ws.send` for each socket. Pings every
// --ping-ms (the heartbeat from ws's README: a socket that did not answer the last ping is
// terminated). Like MWS, `envelope=1` frames each message as {"seq","epoch","data"} and
// `since=N&epoch=E` replays what was missed from a history of the last 1,000 messages (the
// envelope is made once per message here). Unlike MWS, a slow consumer is not cut: ws
// buffers what the kernel does not take, without bound (that is the reference's behaviour).
//
// Usage: node server.js [--port 0] [--id ID] [--secret S] [--ping-ms 45000]
// Prints "mws-node listening on 127.0.0.1:PORT" once listening.

'use strict';

const http = require('http');
const crypto = require('crypto');
const { WebSocketServer } = require('ws');

function arg(name, dflt) {
  const i = process.argv.indexOf('--' + name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
}

const PORT = Number(arg('port', '0'));
const GATEWAY = arg('id', 'bench');
const SECRET = arg('secret', 'secret');
const PING_MS = Number(arg('ping-ms', '45000'));
const HISTORY = 1000;
const RESERVATION_MS = 300000;

const epoch = crypto.randomBytes(12).toString('hex');
let nextSeq = 1;
// The last HISTORY messages, {seq, data (string), envelope (Buffer, made lazily)}, in a ring
// (an array's shift() per publish would cost the reference at 20k publishes/s).
const history = new Array(HISTORY);
const reservations = new Map(); // token -> {id, tags, expires}
const sockets = new Set();
const byTag = new Map(); // tag -> Set of ws

function json(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

function authed(req) {
  return req.headers.authorization === 'Bearer ' + SECRET;
}

function reserve(req, res, tags, status) {
  const id = crypto.randomBytes(12).toString('hex');
  const token = crypto.randomBytes(24).toString('hex');
  const expires = Date.now() + RESERVATION_MS;
  reservations.set(token, { id, tags, expires });
  const host = req.headers.host || 'localhost';
  const body = {
    uri: `ws://${host}/v1/gateways/${GATEWAY}/socket?token=${token}`,
    expiresAt: new Date(expires).toISOString(),
    tags,
  };
  if (status === 201) body.id = id;
  json(res, status, body);
}

function envelopeOf(m) {
  if (!m.envelope) {
    m.envelope = Buffer.from(JSON.stringify({ seq: m.seq, epoch, data: m.data }));
  }
  return m.envelope;
}

function deliver(ws, m, raw) {
  ws.send(ws.envelope ? envelopeOf(m) : raw, { binary: false });
}

function publish(data, receivers) {
  const m = { seq: nextSeq++, data, envelope: null };
  history[m.seq % HISTORY] = m;
  const raw = Buffer.from(data);
  const all = Array.isArray(receivers.sockets) && receivers.sockets.includes('*');
  if (all) {
    for (const ws of sockets) deliver(ws, m, raw);
    return;
  }
  const seen = new Set();
  for (const t of Array.isArray(receivers.tags) ? receivers.tags : []) {
    const set = byTag.get(String(t));
    if (!set) continue;
    for (const ws of set) {
      if (seen.has(ws)) continue;
      seen.add(ws);
      deliver(ws, m, raw);
    }
  }
}

function readBody(req, done) {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const text = Buffer.concat(chunks).toString();
    try {
      done(text ? JSON.parse(text) : {});
    } catch (e) {
      done(null);
    }
  });
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  const parts = url.pathname.replace(/\/+$/, '').split('/');
  // ['', 'v1', 'gateways', ID, resource]
  if (parts[1] !== 'v1' || parts[2] !== 'gateways' || parts[3] !== GATEWAY) {
    return json(res, 404, { error: { reason: 'NotFound', message: 'no such gateway' } });
  }
  const resource = parts[4];
  if (req.method === 'GET' && resource === 'websocket_uri') {
    return reserve(req, res, [], 200);
  }
  if (req.method === 'POST' && (resource === 'sockets' || resource === 'messages')) {
    if (!authed(req)) {
      return json(res, 401, { error: { reason: 'AccessDenied', message: 'Access denied' } });
    }
    return readBody(req, (body) => {
      if (body === null) {
        return json(res, 422, { errors: [{ reason: 'ValidationFailed', property: 'body' }] });
      }
      if (resource === 'sockets') {
        const tags = (Array.isArray(body.tags) ? body.tags : []).map(String);
        return reserve(req, res, tags, 201);
      }
      if (typeof body.data !== 'string' || typeof body.receivers !== 'object' || !body.receivers) {
        return json(res, 422, { errors: [{ reason: 'ValidationFailed', property: 'data' }] });
      }
      publish(body.data, body.receivers);
      return json(res, 201, { data: body.data, receivers: body.receivers });
    });
  }
  return json(res, 404, { error: { reason: 'NotFound', message: 'no such resource' } });
});
// The publisher keeps its connections between runs.
server.keepAliveTimeout = 600000;
server.headersTimeout = 610000;
server.maxRequestsPerSocket = 0;

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });

server.on('upgrade', (req, socket, head) => {
  const url = new URL(req.url, 'http://x');
  const token = url.searchParams.get('token') || '';
  const r = reservations.get(token);
  reservations.delete(token);
  wss.handleUpgrade(req, socket, head, (ws) => {
    if (!r || r.expires < Date.now()) {
      ws.close(1008, 'unknown or already used token');
      return;
    }
    const since = url.searchParams.get('since');
    ws.envelope = since !== null || url.searchParams.get('envelope') === '1';
    ws.tags = r.tags;
    ws.isAlive = true;
    ws.on('pong', () => {
      ws.isAlive = true;
    });
    ws.on('error', () => {});
    ws.on('close', () => {
      sockets.delete(ws);
      for (const t of ws.tags) {
        const set = byTag.get(t);
        if (set) {
          set.delete(ws);
          if (set.size === 0) byTag.delete(t);
        }
      }
    });
    if (since !== null) {
      // Everything after `since`, or a resync when the history no longer reaches back.
      const after = Number(since);
      const oldest = Math.max(1, nextSeq - HISTORY);
      const ok = url.searchParams.get('epoch') === epoch && (after + 1 >= nextSeq || oldest <= after + 1);
      const missed = [];
      for (let seq = Math.max(after + 1, oldest); ok && seq < nextSeq; seq++) {
        missed.push(history[seq % HISTORY]);
      }
      ws.send(JSON.stringify(ok ? { recovered: true, epoch, missed: missed.length } : { recovered: false, epoch }));
      for (const m of missed) ws.send(envelopeOf(m), { binary: false });
    }
    sockets.add(ws);
    for (const t of r.tags) {
      let set = byTag.get(t);
      if (!set) byTag.set(t, (set = new Set()));
      set.add(ws);
    }
  });
});

setInterval(() => {
  for (const ws of sockets) {
    if (!ws.isAlive) {
      ws.terminate();
      continue;
    }
    ws.isAlive = false;
    ws.ping();
  }
}, PING_MS).unref();

server.listen(PORT, '127.0.0.1', 4096, () => {
  console.log(`mws-node listening on 127.0.0.1:${server.address().port}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
