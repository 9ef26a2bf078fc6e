// The todo app of the 2014 Qt Cloud Services talk, on mini-MAR: todos live in an EDS backend,
// and every change is pushed to the clients through an MWS gateway.
//
// Private flow (the default, as in the talk): a user signs in through this server, which
// signs in against EDS, reserves an MWS socket tagged `users.<id>` for that user, and hands
// the page both. The server registers an EDS webhook to itself and relays each change to the
// gateway's enginio receiver, which pushes it to the sockets of the object's readers: a
// user's todos reach only that user's pages.
//
// Public flow (`/?public=1`): no sign-in and no server code in the loop; with the backend
// linked to the gateway (`mar services:link todo-data todo-push`), anyone's change reaches
// every page.
//
// Needs the backend and the gateway attached: EDS_ADDRESS, EDS_BACKEND_ID, EDS_SECRET,
// MWS_ADDRESS, MWS_GATEWAY_ID, MWS_SECRET. No npm dependencies (Node 18's fetch).
"use strict";

const http = require("http");
const fs = require("fs");
const path = require("path");
const crypto = require("crypto");

const E = process.env;
for (const v of ["EDS_ADDRESS", "EDS_BACKEND_ID", "EDS_SECRET", "MWS_ADDRESS", "MWS_GATEWAY_ID", "MWS_SECRET"]) {
  if (!E[v]) {
    console.error(`todo: ${v} is not set: attach an EDS backend and an MWS gateway (mar services:attach NAME -a APP)`);
    process.exit(1);
  }
}
// The webhook's own secret, so nobody else can feed this server changes.
const HOOK_SECRET = crypto.createHash("sha256").update(`todo-hook:${E.EDS_SECRET}`).digest("hex");
const page = fs.readFileSync(path.join(__dirname, "public", "index.html"));

async function call(url, { method = "GET", headers = {}, body } = {}) {
  const res = await fetch(url, { method, headers, body });
  const text = await res.text();
  let v = text;
  try {
    v = JSON.parse(text);
  } catch (_) {}
  return { status: res.status, body: v };
}

const eds = (method, p, body, headers = {}) =>
  call(`${E.EDS_ADDRESS}/v1/${p}`, {
    method,
    headers: { "Enginio-Backend-Id": E.EDS_BACKEND_ID, Authorization: `Bearer ${E.EDS_SECRET}`, ...headers },
    body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
  });
const mws = (method, p, body) =>
  call(`${E.MWS_ADDRESS}/v1/gateways/${E.MWS_GATEWAY_ID}/${p}`, {
    method,
    headers: { Authorization: `Bearer ${E.MWS_SECRET}` },
    body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
  });

// The webhook is registered once per backend, on the first sign-in, at the host the browser
// used (this app's own address on the platform).
let hooked = null;
async function ensureWebhook(host) {
  if (hooked) return hooked;
  hooked = (async () => {
    const url = `http://${host.split(":")[0]}/hooks/eds`;
    const list = await eds("GET", "webhooks");
    if (!(list.body.results || []).some((w) => w.url === url)) {
      const r = await eds("POST", "webhooks", { url, objectTypes: ["objects.todos"], headers: { "X-Hook-Secret": HOOK_SECRET } });
      if (r.status !== 201) throw new Error(`cannot register the webhook: ${r.status} ${JSON.stringify(r.body)}`);
    }
  })().catch((e) => {
    hooked = null;
    throw e;
  });
  return hooked;
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks = [];
    req.on("data", (c) => {
      size += c.length;
      if (size > 1 << 20) {
        reject(new Error("too large"));
        req.destroy();
      } else chunks.push(c);
    });
    req.on("end", () => resolve(Buffer.concat(chunks).toString()));
    req.on("error", reject);
  });
}

function send(res, status, v) {
  const body = typeof v === "string" ? v : JSON.stringify(v);
  res.writeHead(status, { "Content-Type": typeof v === "string" ? "text/plain" : "application/json" });
  res.end(body);
}

const server = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, "http://x");
    if (req.method === "GET" && url.pathname === "/") {
      res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
      return res.end(page);
    }
    if (req.method === "GET" && url.pathname === "/api/config") {
      return send(res, 200, {
        edsAddress: E.EDS_ADDRESS,
        backendId: E.EDS_BACKEND_ID,
        mwsAddress: E.MWS_ADDRESS,
        gatewayId: E.MWS_GATEWAY_ID,
        sdk: `${E.EDS_ADDRESS}/sdk/mar.js`,
      });
    }
    if (req.method === "POST" && url.pathname === "/api/session") {
      // Sign in (signing up first when asked): the page gets the user's EDS token and a
      // socket of its own, tagged with the user's id.
      const { username, password, signup } = JSON.parse((await readBody(req)) || "{}");
      if (!username || !password) return send(res, 400, { error: "username and password, please" });
      if (signup) {
        const r = await eds("POST", "users", { username, password });
        if (r.status !== 201 && !(r.status === 400 && JSON.stringify(r.body).includes("taken"))) return send(res, r.status, r.body);
      }
      const form = `grant_type=password&username=${encodeURIComponent(username)}&password=${encodeURIComponent(password)}`;
      const t = await call(`${E.EDS_ADDRESS}/v1/auth/oauth2/token`, {
        method: "POST",
        headers: { "Enginio-Backend-Id": E.EDS_BACKEND_ID, "Content-Type": "application/x-www-form-urlencoded" },
        body: form,
      });
      if (t.status !== 200) return send(res, 401, { error: "wrong username or password" });
      await ensureWebhook(req.headers.host || "localhost");
      const user = t.body.enginio_data.user;
      const socket = await mws("POST", "sockets", { tags: [`users.${user.id}`] });
      if (socket.status !== 201) return send(res, 502, socket.body);
      console.log(`session for ${user.username}`);
      return send(res, 200, { token: t.body.access_token, user, socket: socket.body.uri });
    }
    if (req.method === "POST" && url.pathname === "/api/socket") {
      // A fresh socket for a signed-in page that reconnects (tokens are single-use).
      const { token } = JSON.parse((await readBody(req)) || "{}");
      const me = await call(`${E.EDS_ADDRESS}/v1/user`, {
        headers: { "Enginio-Backend-Id": E.EDS_BACKEND_ID, Authorization: `Bearer ${token}` },
      });
      if (me.status !== 200) return send(res, 401, { error: "sign in again" });
      const socket = await mws("POST", "sockets", { tags: [`users.${me.body.id}`] });
      return send(res, socket.status === 201 ? 200 : 502, socket.body);
    }
    if (req.method === "POST" && url.pathname === "/hooks/eds") {
      // EDS's webhook: relayed as it is to the gateway's enginio receiver, which pushes the
      // change to the sockets tagged with the object's readers.
      if (req.headers["x-hook-secret"] !== HOOK_SECRET) return send(res, 403, "not EDS");
      const body = await readBody(req);
      const r = await mws("POST", "webhook_receivers/enginio", body);
      return send(res, r.status === 201 ? 200 : 502, r.status === 201 ? "relayed" : r.body);
    }
    send(res, 404, "no such page");
  } catch (e) {
    console.error(`todo: ${e.stack || e}`);
    send(res, 500, { error: String(e.message || e) });
  }
});

server.listen(Number(E.PORT || 5000), "0.0.0.0", () => console.log(`todo listening on ${E.PORT}`));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
