// mini-MAR's client for browsers and Node (18 or later): the MWS push gateway and the EDS data
// store, promise-based, with no dependencies. It speaks the same wire formats as Qt Cloud
// Services' SDKs (docs/mws.md, docs/eds.md), so it also works against anything that does.
//
//   import { Mws, Eds } from "./mar.js";
//   const eds = new Eds({ address: "http://localhost:8080", backendId, secret });
//   const todo = await eds.collection("todos").insert({ title: "milk" });
//   const mws = new Mws({ address, gatewayId });
//   const sub = mws.subscribe((data) => console.log(data));   // reconnects, recovers
//
// Errors are `MarError`s carrying the HTTP status and the server's error body.

/** An answer that was not a success. */
export class MarError extends Error {
  constructor(status, body, what) {
    const detail =
      (body && body.errors && body.errors[0] && body.errors[0].message) ||
      (body && body.error && (body.error.message || body.error_description || body.error)) ||
      (typeof body === "string" ? body : "");
    super(`${what}: ${status}${detail ? " " + detail : ""}`);
    this.status = status;
    this.body = body;
  }
}

function trimSlash(s) {
  return String(s || "").replace(/\/+$/, "");
}

async function request(url, { method = "GET", headers = {}, body, what }) {
  const init = { method, headers: { ...headers } };
  if (body !== undefined) {
    if (typeof body === "string" || body instanceof Uint8Array || (typeof FormData !== "undefined" && body instanceof FormData)) {
      init.body = body;
    } else {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
  }
  const res = await fetch(url, init);
  const text = await res.text();
  let parsed = text;
  try {
    parsed = text ? JSON.parse(text) : {};
  } catch (_) {
    // Not JSON: keep the text.
  }
  if (!res.ok) throw new MarError(res.status, parsed, what || `${method} ${url}`);
  return parsed;
}

const defaultWebSocket = () => {
  if (typeof globalThis.WebSocket === "function") return globalThis.WebSocket;
  throw new Error("no WebSocket here: pass { WebSocket } in the options (in Node 20: node --experimental-websocket, or the ws package)");
};

/** A push gateway. */
export class Mws {
  /**
   * @param {{address: string, gatewayId: string, secret?: string, token?: string, WebSocket?: Function}} o
   *   `secret` opens the whole API (servers); `token` is an EDS user's token for a gateway
   *   in `eds` mode; neither: a public gateway.
   */
  constructor(o) {
    if (!o || !o.address || !o.gatewayId) throw new Error("Mws needs { address, gatewayId }");
    this.base = `${trimSlash(o.address)}/v1/gateways/${encodeURIComponent(o.gatewayId)}`;
    this.auth = o.secret || o.token;
    this.WebSocket = o.WebSocket;
  }

  call(method, path, body) {
    const headers = this.auth ? { Authorization: `Bearer ${this.auth}` } : {};
    return request(`${this.base}/${path}`, { method, headers, body, what: `MWS ${method} ${path}` });
  }

  /** A public socket's URI: `{uri, expiresAt, tags}`. */
  websocketUri() {
    return this.call("GET", "websocket_uri");
  }

  /** Reserves a socket with tags (the secret): `{id, uri, expiresAt, tags}`. */
  createSocket(tags = []) {
    return this.call("POST", "sockets", { tags });
  }

  /** Sends `data` (a string) to `{sockets: ["*"] | ids, tags: [...]}` (everyone by default). */
  send(data, receivers = { sockets: ["*"] }) {
    return this.call("POST", "messages", { data: String(data), receivers });
  }

  /** Connected sockets, optionally those with a tag. */
  async sockets(tag) {
    const r = await this.call("GET", tag ? `sockets?tag=${encodeURIComponent(tag)}` : "sockets");
    return r.results;
  }

  /** Deletes (closes) a socket. */
  deleteSocket(id) {
    return this.call("DELETE", `sockets/${encodeURIComponent(id)}`);
  }

  /** The gateway's configuration. */
  configuration() {
    return this.call("GET", "configuration");
  }

  /** Changes the gateway's configuration (`{identityProvider}`, `{forward}`). */
  configure(c) {
    return this.call("PUT", "configuration", c);
  }

  /**
   * Listens, reconnecting after a drop and recovering what was missed while away (the
   * gateway's numbered history): `onMessage(data)` sees every message once, in order; when
   * the gap could not be recovered, `onResync()` is called and listening goes on.
   * `reserve()` gives a fresh URI for each connection (default: `websocketUri()`).
   * Returns `{ close() }`.
   */
  subscribe(onMessage, { reserve, onResync = () => {}, onOpen = () => {}, retryMs = 1000 } = {}) {
    const WS = this.WebSocket || defaultWebSocket();
    const next = reserve || (() => this.websocketUri());
    let last = null;
    let epoch = null;
    let closed = false;
    let ws = null;
    const connect = async () => {
      if (closed) return;
      let uri;
      try {
        uri = (await next()).uri;
      } catch (_) {
        setTimeout(connect, retryMs);
        return;
      }
      const sep = uri.includes("?") ? "&" : "?";
      const url = last === null ? `${uri}${sep}envelope=1` : `${uri}${sep}since=${last}&epoch=${encodeURIComponent(epoch)}`;
      ws = new WS(url);
      ws.onopen = () => onOpen();
      ws.onmessage = (ev) => {
        const m = JSON.parse(typeof ev.data === "string" ? ev.data : String(ev.data));
        if (m.recovered === false) {
          last = null;
          epoch = m.epoch;
          onResync();
          return;
        }
        if (m.recovered === true) {
          epoch = m.epoch;
          return;
        }
        last = m.seq;
        epoch = m.epoch;
        onMessage(m.data);
      };
      ws.onclose = () => {
        if (!closed) setTimeout(connect, retryMs);
      };
      ws.onerror = () => {};
    };
    connect();
    return {
      close() {
        closed = true;
        if (ws) ws.close();
      },
    };
  }
}

/** One object type of a backend. */
export class Collection {
  constructor(eds, type) {
    this.eds = eds;
    this.path = type === "users" || type === "usergroups" ? type : `objects/${String(type).replace(/^objects\./, "")}`;
  }

  /** Creates an object. */
  insert(obj) {
    return this.eds.call("POST", this.path, obj);
  }

  /** Objects matching `query`, with `{limit, offset, sort, include}`. */
  async find(query = {}, o = {}) {
    const r = await this.eds.call("GET", `${this.path}?${listParams(query, o)}`);
    return r.results;
  }

  /** How many objects match. */
  async count(query = {}) {
    const r = await this.eds.call("GET", `${this.path}?${listParams(query, {})}&count=1`);
    return r.count;
  }

  /** One object by id. */
  findOne(id, o = {}) {
    const q = o.include ? `?include=${encodeURIComponent(JSON.stringify(o.include))}` : "";
    return this.eds.call("GET", `${this.path}/${encodeURIComponent(id)}${q}`);
  }

  /** Merges properties into an object. */
  update(id, props) {
    return this.eds.call("PUT", `${this.path}/${encodeURIComponent(id)}`, props);
  }

  /** `$push`, `$pull`, `$inc`, `$set`, `$unset`. */
  atomic(id, ops) {
    return this.eds.call("PUT", `${this.path}/${encodeURIComponent(id)}/atomic`, ops);
  }

  /** Deletes an object. */
  async remove(id) {
    await this.eds.call("DELETE", `${this.path}/${encodeURIComponent(id)}`);
    return true;
  }

  /** An object's ACL. */
  access(id) {
    return this.eds.call("GET", `${this.path}/${encodeURIComponent(id)}/access`);
  }

  /** Adds grants to an object's ACL. */
  grant(id, acl) {
    return this.eds.call("PUT", `${this.path}/${encodeURIComponent(id)}/access`, acl);
  }

  /** Removes grants from an object's ACL. */
  revoke(id, acl) {
    return this.eds.call("DELETE", `${this.path}/${encodeURIComponent(id)}/access`, acl);
  }
}

function listParams(query, o) {
  const p = [`q=${encodeURIComponent(JSON.stringify(query))}`];
  if (o.limit) p.push(`limit=${o.limit}`);
  if (o.offset) p.push(`offset=${o.offset}`);
  if (o.sort) p.push(`sort=${encodeURIComponent(JSON.stringify(o.sort))}`);
  if (o.include) p.push(`include=${encodeURIComponent(JSON.stringify(o.include))}`);
  return p.join("&");
}

/** A data store backend. */
export class Eds {
  /**
   * @param {{address: string, backendId: string, secret?: string, token?: string}} o
   *   `secret` is the master key (servers only); `token` a signed-in user's.
   */
  constructor(o) {
    if (!o || !o.address || !o.backendId) throw new Error("Eds needs { address, backendId }");
    this.base = `${trimSlash(o.address)}/v1`;
    this.backendId = o.backendId;
    this.auth = o.secret || o.token || null;
  }

  call(method, path, body) {
    const headers = { "Enginio-Backend-Id": this.backendId };
    if (this.auth) headers.Authorization = `Bearer ${this.auth}`;
    return request(`${this.base}/${path}`, { method, headers, body, what: `EDS ${method} ${path.split("?")[0]}` });
  }

  /** One object type: `collection("todos")`, `collection("users")`. */
  collection(type) {
    return new Collection(this, type);
  }

  /** Signs up a user. */
  signUp(username, password, more = {}) {
    return this.call("POST", "users", { ...more, username, password });
  }

  /** Signs in: later calls are the user's. Returns the token answer (with `enginio_data.user`). */
  async signIn(username, password) {
    const body = `grant_type=password&username=${encodeURIComponent(username)}&password=${encodeURIComponent(password)}`;
    const r = await request(`${this.base}/auth/oauth2/token`, {
      method: "POST",
      headers: { "Enginio-Backend-Id": this.backendId, "Content-Type": "application/x-www-form-urlencoded" },
      body,
      what: "EDS sign-in",
    });
    this.auth = r.access_token;
    return r;
  }

  /** Ends this user's session on the server. */
  async signOut() {
    if (!this.auth) return;
    await request(`${this.base}/auth/oauth2/revoke`, {
      method: "POST",
      headers: { "Enginio-Backend-Id": this.backendId, "Content-Type": "application/x-www-form-urlencoded" },
      body: `token=${encodeURIComponent(this.auth)}`,
      what: "EDS sign-out",
    });
    this.auth = null;
  }

  /** The signed-in user. */
  me() {
    return this.call("GET", "user");
  }

  /** Full-text search over indexed properties of `types`. */
  async search(phrase, types, { properties, operator } = {}) {
    const s = { phrase };
    if (properties) s.properties = properties;
    if (operator) s.defaultOperator = operator;
    const t = (Array.isArray(types) ? types : [types]).map((x) => `objects.${String(x).replace(/^objects\./, "")}`).join(",");
    const r = await this.call("GET", `search?search=${encodeURIComponent(JSON.stringify(s))}&objectTypes=${encodeURIComponent(t)}`);
    return r.results;
  }

  /** Declares a type (the master key). */
  declareType(def) {
    return this.call("POST", "object_types", def);
  }

  /**
   * Uploads `data` (a Blob, File, Uint8Array or string) as the file in `property` (a ref to
   * `files`) of the object `id` of `type`, in one multipart request; the new `files` object.
   */
  upload(type, id, property, data, { fileName = "file", contentType = "application/octet-stream" } = {}) {
    const objectType = type === "users" || type === "usergroups" ? type : `objects.${String(type).replace(/^objects\./, "")}`;
    const form = new FormData();
    form.append("object", JSON.stringify({ file: { fileName }, targetFileProperty: { objectType, id, propertyName: property } }));
    const blob = typeof Blob !== "undefined" && data instanceof Blob ? data : new Blob([data], { type: contentType });
    form.append("file", blob, fileName);
    return this.call("POST", "files", form);
  }

  /** A URL that downloads the file for the next 10 minutes with no EDS header (an <img src>). */
  async downloadUrl(fileId) {
    const r = await this.call("GET", `files/${encodeURIComponent(fileId)}/download_url`);
    return r.expiringUrl;
  }

  /**
   * Follows the notification stream: `onChange({event, origin, data})` for every change to
   * objects matching `filter` (such as `{data: {objectType: "objects.todos"}}`, of types
   * declared with `settings.websocket`) that the caller may read. Resolves, once the stream is
   * open, to `{ close() }`.
   */
  async follow(filter, onChange, { WebSocket } = {}) {
    const r = await this.call("GET", `stream_url?filter=${encodeURIComponent(JSON.stringify(filter || {}))}`);
    const WS = WebSocket || defaultWebSocket();
    const ws = new WS(r.expiringUrl);
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new Error(`the notification stream at ${r.expiringUrl} did not open`));
    });
    ws.onmessage = (e) => {
      let v;
      try {
        v = JSON.parse(typeof e.data === "string" ? e.data : String(e.data));
      } catch (_) {
        return;
      }
      onChange(v);
    };
    return { close: () => ws.close() };
  }
}
