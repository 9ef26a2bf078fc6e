// mini-MAR's web console: a hash-routed single page over the platform API (/v1/…) and the
// console session (/console/session). Vanilla ES2022, no dependencies.
//
// Rules it keeps (the server's Content-Security-Policy enforces most of them): no inline
// script or style, no eval; the DOM is built with createElement and textContent, never
// innerHTML, since app names, log lines and objects are untrusted; the admin token is only
// POSTed once and never stored (the session is an HttpOnly cookie); every change carries
// the session's CSRF token in X-CSRF-Token.

"use strict";

// ---------------------------------------------------------------------------------------
// State and small helpers

const session = { csrf: null, expiresAt: null };
/** Functions to run when the current view goes away (timers, streams). */
let cleanups = [];
/** Bumped at each render: an answer for an older view is dropped. */
let generation = 0;

const SVG = "http://www.w3.org/2000/svg";
const MUTATING = new Set(["POST", "PUT", "PATCH", "DELETE"]);
const LOG_KEEP = 2000;

/** Makes an element: h("a", {href: "#", class: "x", dataset: {...}}, "text", child…). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null && v !== false) el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "text") el.textContent = v;
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (k === "value" || k === "checked" || k === "disabled" || k === "selected") el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

function clear(el) {
  while (el.firstChild) el.firstChild.remove();
}

let uid = 0;
const nextId = (p) => `${p}-${++uid}`;

/** A labelled input: returns [wrapper, input]. */
function field(label, attrs = {}, hint) {
  const id = attrs.id || nextId("f");
  const input = h(attrs.tag || "input", { ...attrs, tag: undefined, id });
  const wrap = h("div", { class: "field" }, h("label", { for: id }, label), input,
    hint ? h("small", { class: "hint" }, hint) : null);
  return [wrap, input];
}

function select(label, options, attrs = {}) {
  const id = attrs.id || nextId("s");
  const sel = h("select", { ...attrs, id });
  for (const o of options) {
    const [value, text] = Array.isArray(o) ? o : [o, o];
    sel.append(h("option", { value }, text));
  }
  return [h("div", { class: "field" }, h("label", { for: id }, label), sel), sel];
}

function button(text, onClick, attrs = {}) {
  return h("button", { type: "button", ...attrs, on: { click: onClick } }, text);
}

function empty(text, ...code) {
  // "No apps yet: mar apps:create NAME, then git push" with the commands in <code>.
  return h("p", { class: "empty", dataset: { test: "empty" } }, text, ...code);
}

/**
 * Keeps a box that scrolls sideways (a wide table on a phone) reachable from the keyboard: it
 * is a tab stop, named, while its content overflows, and not otherwise.
 */
const overflowWatch = typeof ResizeObserver === "function"
  ? new ResizeObserver((entries) => { for (const e of entries) scrollable(e.target); })
  : null;
function scrollable(box) {
  if (box.scrollWidth > box.clientWidth + 1) {
    box.tabIndex = 0;
    box.setAttribute("role", "region");
    box.setAttribute("aria-label", box.dataset.label);
  } else {
    box.removeAttribute("tabindex");
    box.removeAttribute("role");
    box.removeAttribute("aria-label");
  }
}

function table(headers, rows, attrs = {}) {
  const wrap = h("div", { class: "table-wrap", dataset: { label: `Table of ${headers.filter(Boolean).join(", ").toLowerCase()} (scrolls sideways)` } },
    h("table", attrs,
      h("thead", null, h("tr", null, headers.map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", null, rows)));
  overflowWatch?.observe(wrap);
  return wrap;
}

/**
 * Rebuilds a box's content without losing the keyboard's place: the focused control (a button
 * in a row with `data-key`) is found again by its row and label and focused, as a periodic
 * refresh would otherwise drop focus to the page.
 */
function keepFocus(box, rebuild) {
  const a = document.activeElement;
  const was = a && a !== box && box.contains(a)
    ? { row: a.closest("[data-key]")?.dataset.key, label: a.getAttribute("aria-label") || a.textContent, tag: a.tagName }
    : null;
  rebuild();
  if (!was) return;
  const scopes = was.row !== undefined
    ? [...box.querySelectorAll("[data-key]")].filter((r) => r.dataset.key === was.row)
    : [box];
  for (const scope of scopes) {
    for (const el of scope.querySelectorAll(was.tag)) {
      if ((el.getAttribute("aria-label") || el.textContent) === was.label) {
        el.focus({ preventScroll: true });
        return;
      }
    }
  }
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = [["G", 2 ** 30], ["M", 2 ** 20], ["K", 2 ** 10]];
  for (const [u, size] of units) if (n >= size) return `${(n / size).toFixed(1)}${u}`;
  return `${n}B`;
}

function duration(secs) {
  if (secs === null || secs === undefined) return "–";
  if (secs < 60) return `${secs}s`;
  if (secs < 3600) return `${Math.floor(secs / 60)}m ${secs % 60}s`;
  if (secs < 86400) return `${Math.floor(secs / 3600)}h ${Math.floor((secs % 3600) / 60)}m`;
  return `${Math.floor(secs / 86400)}d ${Math.floor((secs % 86400) / 3600)}h`;
}

function when(rfc3339) {
  if (!rfc3339) return "–";
  const d = new Date(rfc3339);
  if (Number.isNaN(d.getTime())) return rfc3339;
  const ago = Math.round((Date.now() - d.getTime()) / 1000);
  const rel = ago < 5 ? "just now" : ago < 86400 * 2 ? `${duration(Math.max(ago, 0))} ago` : d.toLocaleDateString();
  return rel;
}

function timeEl(rfc3339) {
  return h("time", { datetime: rfc3339 || "", title: rfc3339 || "" }, when(rfc3339));
}

const enc = encodeURIComponent;

// ---------------------------------------------------------------------------------------
// Talking to the server

class ApiError extends Error {
  constructor(status, reason, message) {
    super(message);
    this.status = status;
    this.reason = reason;
  }
}

/** The error message of a failed answer: platform, MWS or EDS shapes. */
async function errorOf(resp) {
  let text = "";
  try { text = await resp.text(); } catch { /* the body is gone */ }
  let reason = resp.statusText || "Error";
  let message = text.trim() || `${resp.status} ${resp.statusText}`;
  try {
    const j = JSON.parse(text);
    if (j?.error?.message) ({ reason = reason, message } = j.error);
    else if (Array.isArray(j?.errors) && j.errors[0]?.message) ({ reason = reason, message } = j.errors[0]);
    else if (typeof j?.error === "string") message = j.error_description || j.error;
  } catch { /* not JSON */ }
  return new ApiError(resp.status, reason, message);
}

/**
 * A call of the platform API with the session cookie. `opts.service` marks a service API
 * call (MWS, EDS) authorised by its own secret: its 401 does not end the session.
 */
async function request(method, path, body, opts = {}) {
  const headers = { ...(opts.headers || {}) };
  if (MUTATING.has(method) && session.csrf) headers["X-CSRF-Token"] = session.csrf;
  let payload;
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = typeof body === "string" ? body : JSON.stringify(body);
  }
  const resp = await fetch(path, {
    method, headers, body: payload, credentials: "same-origin", signal: opts.signal,
    cache: "no-store",
  });
  if (resp.status === 401 && !opts.service) {
    sessionEnded();
    throw new ApiError(401, "Unauthorized", "Your session has ended: sign in again.");
  }
  if (!resp.ok) throw await errorOf(resp);
  if (opts.raw) return resp;
  if (resp.status === 204) return null;
  const text = await resp.text();
  return text ? JSON.parse(text) : null;
}

const api = {
  get: (p, o) => request("GET", p, undefined, o),
  post: (p, b, o) => request("POST", p, b ?? {}, o),
  patch: (p, b, o) => request("PATCH", p, b, o),
  put: (p, b, o) => request("PUT", p, b, o),
  del: (p, o, b) => request("DELETE", p, b, o),
};

/** Reads a streamed text answer line by line until it ends or `signal` aborts. */
async function readLines(resp, onLine, signal) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let rest = "";
  const stop = () => reader.cancel().catch(() => {});
  signal?.addEventListener("abort", stop);
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      rest += decoder.decode(value, { stream: true });
      const parts = rest.split("\n");
      rest = parts.pop();
      for (const line of parts) onLine(line.replace(/\r$/, ""));
    }
    rest += decoder.decode();
    if (rest) onLine(rest);
  } finally {
    signal?.removeEventListener("abort", stop);
  }
}

// ---------------------------------------------------------------------------------------
// Messages to the user

let flashTimer = 0;
function flash(message, kind = "ok") {
  const el = document.getElementById("flash");
  clearTimeout(flashTimer);
  clear(el);
  el.className = `flash ${kind}`;
  el.setAttribute("role", kind === "error" ? "alert" : "status");
  el.dataset.kind = kind;
  el.append(h("span", { id: "flash-text" }, message),
    button("Dismiss", () => { el.hidden = true; }, { class: "link-button", "aria-label": "Dismiss message" }));
  el.hidden = false;
  if (kind !== "error") flashTimer = setTimeout(() => { el.hidden = true; }, 8000);
}

function failed(e) {
  if (e?.name === "AbortError") return;
  if (e instanceof ApiError && e.status === 401 && !session.csrf) return; // sign-in shows
  flash(e?.message || String(e), "error");
  console.error(e);
}

/** Runs `fn` with `btn` disabled, showing an error if it fails. */
async function busy(btn, fn) {
  const buttons = btn ? [btn].flat() : [];
  for (const b of buttons) b.disabled = true;
  try {
    return await fn();
  } catch (e) {
    failed(e);
    return undefined;
  } finally {
    for (const b of buttons) b.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------
// Session

function sessionEnded() {
  const was = session.csrf !== null;
  session.csrf = null;
  session.expiresAt = null;
  showSignIn(was ? "Your session has ended: sign in again." : "");
}

async function checkSession() {
  const resp = await fetch("/console/session", { credentials: "same-origin", cache: "no-store" });
  if (resp.status === 200) {
    const j = await resp.json();
    session.csrf = j.csrf;
    session.expiresAt = j.expires_at;
    return true;
  }
  return false;
}

function showSignIn(message) {
  runCleanups();
  generation++;
  document.getElementById("nav").hidden = true;
  document.getElementById("nav-toggle").hidden = true;
  document.getElementById("flash").hidden = true;
  document.body.dataset.signedIn = "no";
  const view = document.getElementById("view");
  clear(view);
  const [tokenField, token] = field("Admin token or console password", {
    id: "token", type: "password", name: "token", autocomplete: "off", required: true,
    spellcheck: "false", autocapitalize: "off",
  }, h("span", null, "Print the token with ", h("code", null, "mar auth:token"), " on the server; set a password with ", h("code", null, "mar console:password"), "."));
  const error = h("p", { id: "signin-error", class: "error-text", role: "alert" });
  if (message) error.textContent = message;
  const submit = h("button", { type: "submit", id: "signin-submit" }, "Sign in");
  // method=post: should the script ever not run, the token still never lands in a URL.
  const form = h("form", { id: "signin", class: "card narrow", method: "post", action: "/console/session" },
    h("h1", null, "Sign in to mini-MAR"), tokenField, error, h("div", { class: "actions" }, submit));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    error.textContent = "";
    try {
      const resp = await fetch("/console/session", {
        method: "POST", credentials: "same-origin", cache: "no-store",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ token: token.value }),
      });
      token.value = "";
      if (!resp.ok) {
        const e = await errorOf(resp);
        error.textContent = e.message || "Sign-in failed.";
        token.focus();
        return;
      }
      const j = await resp.json();
      session.csrf = j.csrf;
      session.expiresAt = j.expires_at;
      signedIn();
    } catch (e) {
      error.textContent = `Cannot reach the server: ${e.message}`;
    } finally {
      submit.disabled = false;
    }
  });
  view.append(form);
  token.focus();
}

function signedIn() {
  document.body.dataset.signedIn = "yes";
  document.getElementById("nav-toggle").hidden = false;
  document.getElementById("nav").hidden = window.matchMedia("(max-width: 640px)").matches;
  if (!location.hash || location.hash === "#" || location.hash === "#/") location.hash = "#/apps";
  else render();
}

async function signOut() {
  const btn = document.getElementById("signout");
  btn.disabled = true;
  try {
    const resp = await fetch("/console/session", {
      method: "DELETE", credentials: "same-origin", cache: "no-store",
      headers: { "X-CSRF-Token": session.csrf || "" },
    });
    if (!resp.ok && resp.status !== 401) throw await errorOf(resp);
    session.csrf = null;
    showSignIn("");
    const msg = document.getElementById("signin-error");
    msg.className = "ok-text";
    msg.setAttribute("role", "status");
    msg.textContent = "Signed out.";
  } catch (e) {
    failed(e);
  } finally {
    btn.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------
// Routing

function runCleanups() {
  const fns = cleanups;
  cleanups = [];
  for (const f of fns) {
    try { f(); } catch (e) { console.error(e); }
  }
}

function onLeave(fn) {
  cleanups.push(fn);
}

/** A timer that lives as long as the view: fn runs every `ms` while the tab is visible. */
function every(ms, fn) {
  const id = setInterval(() => { if (!document.hidden) fn(); }, ms);
  onLeave(() => clearInterval(id));
}

function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "apps" && parts[1]) return { page: "app", app: parts[1], tab: parts[2] || "overview" };
  if (parts[0] === "services" && parts[1]) return { page: "service", service: parts[1] };
  if (parts[0] === "services") return { page: "services" };
  return { page: "apps" };
}

function render() {
  if (!session.csrf) return;
  runCleanups();
  const gen = ++generation;
  const route = parseRoute();
  const view = document.getElementById("view");
  clear(view);
  view.dataset.page = route.page;
  for (const a of document.querySelectorAll("[data-nav]")) {
    const on = a.dataset.nav === (route.page === "app" ? "apps" : route.page === "service" ? "services" : route.page);
    if (on) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (window.matchMedia("(max-width: 640px)").matches) setNav(false);
  const live = () => gen === generation;
  const pages = { apps: appsPage, app: appPage, services: servicesPage, service: servicePage };
  Promise.resolve(pages[route.page](view, route, live)).catch((e) => { if (live()) failed(e); });
}

function setNav(open) {
  document.getElementById("nav").hidden = !open;
  document.getElementById("nav-toggle").setAttribute("aria-expanded", String(open));
}

// ---------------------------------------------------------------------------------------
// Apps

async function appsPage(view, _route, live) {
  const section = h("section", { id: "apps-view", "aria-labelledby": "apps-title" },
    h("div", { class: "page-head" }, h("h1", { id: "apps-title" }, "Apps"),
      button("Refresh", () => render(), { class: "secondary" })));
  view.append(section);
  const listBox = h("div", { id: "apps-list", "aria-busy": "true" }, h("p", { class: "muted" }, "Loading apps…"));
  section.append(listBox);

  const [nameField, nameInput] = field("New app name", {
    id: "new-app-name", required: true, pattern: "[a-z][a-z0-9\\-]*", autocomplete: "off",
    placeholder: "myapp", spellcheck: "false",
  }, "Lowercase letters, digits and dashes.");
  const createBtn = h("button", { type: "submit" }, "Create app");
  const create = h("form", { id: "create-app", class: "card inline-form" },
    h("h2", null, "Create an app"), nameField, h("div", { class: "actions" }, createBtn));
  create.addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(createBtn, async () => {
      const a = await api.post("/v1/apps", { name: nameInput.value.trim() });
      flash(`Created ${a.name}. Push to ${a.git_url}`);
      nameInput.value = "";
      render();
    });
  });
  section.append(create);

  async function refreshList() {
    const { results: apps } = await api.get("/v1/apps");
    if (!live()) return;
    // What runs of each app, and its memory: the sum of its instances'.
    const ps = await Promise.all(apps.map((a) => api.get(`/v1/apps/${enc(a.name)}/ps`)
      .then((r) => r.results).catch(() => null)));
    if (!live()) return;
    // A destroy being confirmed in the list is not swept away by a refresh.
    if (listBox.querySelector(".confirm-form")) return;
    keepFocus(listBox, () => {
      clear(listBox);
      listBox.setAttribute("aria-busy", "false");
      listBox.dataset.loaded = "yes";
      if (apps.length === 0) {
        listBox.append(empty("No apps yet: ", h("code", null, "mar apps:create NAME"), ", then ", h("code", null, "git push")));
        return;
      }
      const rows = apps.map((a, i) => appRow(a, ps[i]));
      listBox.append(table(["Name", "State", "Release", "Instances", "Memory", h("span", { class: "sr-only" }, "Actions")], rows, { id: "apps" }));
    });
  }
  function appRow(a, procs) {
    // Instances up of each scaled type, against the formation: `web 2/2`.
    const up = new Map();
    for (const p of procs || []) {
      const type = p.dyno.split(".")[0];
      if (p.state === "up") up.set(type, (up.get(type) || 0) + 1);
    }
    const scaled = Object.entries(a.structure || {}).filter(([, q]) => q > 0);
    const instances = !a.release
      ? "–"
      : a.wasm
        ? "in process"
        : scaled.length ? scaled.map(([t, q]) => `${t} ${up.get(t) || 0}/${q}`).join(", ") : "none scaled";
    const memory = procs ? procs.reduce((sum, p) => sum + (p.memory_bytes || 0), 0) : null;
    const destroyCell = h("td", { class: "row-actions" });
    const row = h("tr", { dataset: { app: a.name, key: a.name } },
      h("th", { scope: "row" }, h("a", { href: `#/apps/${enc(a.name)}/overview` }, a.name)),
      h("td", null, h("span", { class: `badge state-${a.state}`, dataset: { test: "state" } }, a.state)),
      h("td", { dataset: { test: "release" } }, a.release ? `v${a.release}` : "not deployed"),
      h("td", { dataset: { test: "instances" }, title: "instances up / scaled" }, instances),
      h("td", { dataset: { test: "memory" } }, a.wasm ? "wasm" : !a.release ? "–" : bytes(memory)),
      destroyCell);
    destroyCell.append(destroyControl("app", a.name, async () => {
      await api.del(`/v1/apps/${enc(a.name)}`);
      flash(`Destroyed ${a.name}.`);
      render();
    }));
    return row;
  }
  await refreshList();
  // A push, a crash or a scale elsewhere shows here without a reload.
  every(5000, () => refreshList().catch(failed));
}

/** A "Destroy…" button that opens a form asking for the name again (as --confirm NAME). */
function destroyControl(what, name, doIt) {
  const box = h("div", { class: "destroy" });
  const open = button("Destroy…", () => {
    open.hidden = true;
    const [f, input] = field(`Type ${name} to destroy this ${what}`, { autocomplete: "off", spellcheck: "false", dataset: { test: "confirm-name" } });
    const go = h("button", { type: "submit", class: "danger", disabled: true }, `Destroy ${name}`);
    const cancel = button("Cancel", () => { form.remove(); open.hidden = false; open.focus(); }, { class: "secondary" });
    const form = h("form", { class: "confirm-form" }, f, h("div", { class: "actions" }, go, cancel));
    input.addEventListener("input", () => { go.disabled = input.value !== name; });
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      if (input.value !== name) return;
      busy(go, doIt);
    });
    box.append(form);
    input.focus();
  }, { class: "danger secondary", "aria-label": `Destroy ${what} ${name}` });
  box.append(open);
  return box;
}

// ---------------------------------------------------------------------------------------
// One app

const TABS = ["overview", "releases", "config", "formation", "logs", "metrics", "builds"];

async function appPage(view, route, live) {
  const name = route.app;
  const tab = TABS.includes(route.tab) ? route.tab : "overview";
  const base = `/v1/apps/${enc(name)}`;
  const tabs = h("nav", { class: "tabs", "aria-label": `${name} sections` },
    TABS.map((t) => h("a", {
      href: `#/apps/${enc(name)}/${t}`, dataset: { tab: t },
      "aria-current": t === tab ? "page" : null,
    }, t[0].toUpperCase() + t.slice(1))));
  const body = h("div", { id: `${tab}-view`, class: "tab-body", dataset: { app: name } });
  view.append(h("section", { id: "app-view", dataset: { app: name, tab } },
    h("p", { class: "crumbs" }, h("a", { href: "#/apps" }, "Apps"), " / "),
    h("h1", null, name), tabs, body));
  document.title = `${name} · ${tab} · mini-MAR`;
  const ctx = { name, base, body, live };
  await ({ overview, releases, config, formation, logs, metrics, builds })[tab](ctx);
}

async function overview({ name, base, body, live }) {
  const [app, rels, domains] = await Promise.all([
    api.get(base),
    api.get(`${base}/releases`).then((r) => r.results).catch(() => []),
    api.get(`${base}/domains`).then((r) => r.results).catch(() => []),
  ]);
  if (!live()) return;
  const current = rels.find((r) => r.current);
  const link = (u) => h("a", { href: u, rel: "noopener noreferrer", target: "_blank" }, u);
  const rows = [
    ["State", h("span", { class: `badge state-${app.state}` }, app.state)],
    ["Release", app.release ? `v${app.release}` : "none yet: git push"],
    ["Web URL", link(app.web_url)],
    app.secure_url ? ["Secure URL", link(app.secure_url)] : null,
    ["Git remote", h("code", { id: "git-url" }, app.git_url)],
    app.wasm
      ? ["WebAssembly", `${app.wasm.interface}: ${app.wasm.description} (timeout ${app.wasm.timeout_secs}s, memory ${bytes(app.wasm.memory_bytes)}, concurrency ${app.wasm.concurrency}${app.wasm.instance_reuse ? ", instances reused" : ""})`]
      : ["Buildpacks", current?.buildpacks?.length ? h("ul", { class: "plain" }, current.buildpacks.map((b) => h("li", null, h("code", null, b)))) : "–"],
    current?.commit ? ["Commit", h("code", null, current.commit.slice(0, 12))] : null,
    ["Process types", Object.keys(app.structure || {}).length
      ? Object.entries(app.structure).map(([t, q]) => `${t}=${q}`).join(" ") : "–"],
    ["Created", timeEl(app.created_at)],
  ].filter(Boolean);
  body.append(h("dl", { class: "facts", id: "app-facts" }, rows.map(([k, v]) => [h("dt", null, k), h("dd", null, v)])));

  // Domains
  const list = h("div", { id: "domains" });
  const showDomains = (ds) => {
    clear(list);
    if (!ds.length) {
      list.append(empty("No custom domains: add one below."));
      return;
    }
    list.append(h("ul", { class: "plain" }, ds.map((d) => h("li", null, h("code", null, d.name), " ",
      button("Remove", (ev) => busy(ev.currentTarget, async () => {
        if (!window.confirm(`Remove the domain ${d.name} from ${name}?`)) return;
        showDomains((await api.del(`${base}/domains/${enc(d.name)}`)).results);
      }), { class: "secondary small", "aria-label": `Remove domain ${d.name}` })))));
  };
  showDomains(domains);
  const [df, dinput] = field("Domain", { id: "domain-name", required: true, placeholder: "www.example.com", autocomplete: "off" });
  const addBtn = h("button", { type: "submit" }, "Add domain");
  const form = h("form", { class: "inline-form", id: "domain-add" }, df, h("div", { class: "actions" }, addBtn));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(addBtn, async () => {
      showDomains((await api.post(`${base}/domains`, { name: dinput.value.trim() })).results);
      dinput.value = "";
    });
  });
  body.append(h("h2", null, "Domains"), list, form);

  // Destroy
  body.append(h("h2", null, "Danger zone"), destroyControl("app", name, async () => {
    await api.del(base);
    flash(`Destroyed ${name}.`);
    location.hash = "#/apps";
  }));
}

async function releases({ name, base, body, live }) {
  const { results } = await api.get(`${base}/releases`);
  if (!live()) return;
  body.dataset.loaded = "yes";
  if (!results.length) {
    body.append(empty("No releases yet: ", h("code", null, "git push")));
    return;
  }
  const rows = results.map((r) => {
    const actions = h("td", { class: "row-actions" });
    if (!r.current) {
      actions.append(button("Rollback", (ev) => busy(ev.currentTarget, async () => {
        if (!window.confirm(`Roll ${name} back to v${r.version}? This makes a new release with v${r.version}'s code and config.`)) return;
        const made = await api.post(`${base}/rollback`, { version: r.version });
        flash(`Rolled back to v${r.version}: now v${made.version}.`);
        render();
      }), { class: "secondary small", dataset: { test: "rollback" }, "aria-label": `Rollback to v${r.version}` }));
    } else {
      actions.append(h("span", { class: "badge current" }, "current"));
    }
    return h("tr", { dataset: { version: r.version, current: r.current ? "yes" : "no" } },
      h("th", { scope: "row" }, `v${r.version}`),
      h("td", { dataset: { test: "description" } }, r.description),
      h("td", null, r.commit ? h("code", null, r.commit.slice(0, 8)) : "–"),
      h("td", null, r.slug_size ? bytes(r.slug_size) : "–"),
      h("td", null, timeEl(r.created_at)),
      actions);
  });
  body.append(table(["Version", "Description", "Commit", "Slug", "Created", h("span", { class: "sr-only" }, "Actions")], rows, { id: "releases" }));
}

/** The latest release's version (each config change is one). */
async function latestVersion(base) {
  const { results } = await api.get(`${base}/releases`);
  return results[0]?.version ?? null;
}

async function config({ base, body, live }) {
  const [vars, attachments] = await Promise.all([
    api.get(`${base}/config`),
    api.get(`${base}/attachments`).then((r) => r.results).catch(() => []),
  ]);
  if (!live()) return;
  const owned = new Map();
  for (const a of attachments) for (const v of a.vars || []) owned.set(v, a.service);

  const apply = async (changes, what) => {
    await api.patch(`${base}/config`, changes);
    const v = await latestVersion(base);
    flash(`${what}: now v${v ?? "?"}.`);
    render();
  };

  const names = Object.keys(vars).sort();
  body.dataset.loaded = "yes";
  if (!names.length) {
    body.append(empty("No config vars: add one below."));
  } else {
    const rows = names.map((k) => {
      const valueCell = h("td", { class: "value" }, h("code", { dataset: { test: "value" } }, vars[k]));
      const actions = h("td", { class: "row-actions" });
      const row = h("tr", { dataset: { key: k } }, h("th", { scope: "row" }, h("code", null, k)), valueCell, actions);
      if (owned.has(k)) {
        actions.append(h("span", { class: "muted" }, `from ${owned.get(k)}`));
        return row;
      }
      const edit = button("Edit", () => {
        clear(valueCell);
        const [f, input] = field(`New value of ${k}`, { value: vars[k], autocomplete: "off", spellcheck: "false", class: "wide" });
        const save = h("button", { type: "submit" }, "Save");
        const cancel = button("Cancel", () => render(), { class: "secondary" });
        const form = h("form", { class: "inline-edit" }, f, h("div", { class: "actions" }, save, cancel));
        form.addEventListener("submit", (ev) => {
          ev.preventDefault();
          busy(save, () => apply({ [k]: input.value }, `Set ${k}`));
        });
        valueCell.append(form);
        edit.hidden = true;
        input.focus();
      }, { class: "secondary small", "aria-label": `Edit ${k}` });
      const remove = button("Remove", (ev) => busy(ev.currentTarget, async () => {
        if (!window.confirm(`Remove ${k}? This makes a new release and restarts the app.`)) return;
        await apply({ [k]: null }, `Removed ${k}`);
      }), { class: "danger secondary small", "aria-label": `Remove ${k}` });
      actions.append(edit, remove);
      return row;
    });
    body.append(table(["Name", "Value", h("span", { class: "sr-only" }, "Actions")], rows, { id: "config" }));
  }
  const [kf, key] = field("Name", { id: "config-key", required: true, pattern: "[A-Za-z_][A-Za-z0-9_]*", autocomplete: "off", spellcheck: "false", placeholder: "GREETING" });
  const [vf, value] = field("Value", { id: "config-value", autocomplete: "off", spellcheck: "false" });
  const add = h("button", { type: "submit" }, "Add");
  const form = h("form", { id: "config-add", class: "card inline-form" },
    h("h2", null, "Add a config var"), kf, vf, h("div", { class: "actions" }, add),
    h("p", { class: "hint" }, "Each change makes a new release and restarts the app."));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const k = key.value.trim();
    busy(add, () => apply({ [k]: value.value }, `Set ${k}`));
  });
  body.append(form);
}

/** The limits `mar ps:resize` sets: flag, config var, label, and the value in force as text. */
const LIMITS = [
  ["memory", "MAR_MEMORY_LIMIT", "Memory per instance", (l) => sizeText(l.memory_bytes)],
  ["cpu", "MAR_CPU_LIMIT", "CPU per instance (cores)", (l) => String(l.cpu_millis / 1000)],
  ["pids", "MAR_PIDS_LIMIT", "Processes and threads per instance", (l) => String(l.pids)],
  ["nofile", "MAR_NOFILE_LIMIT", "Open files per process", (l) => String(l.nofile)],
  ["disk", "MAR_DISK_LIMIT", "Disk per instance", (l) => sizeText(l.disk_bytes)],
];

/** A size as `ps:resize` takes it: 512M, 1G. */
function sizeText(b) {
  for (const [unit, size] of [["G", 2 ** 30], ["M", 2 ** 20], ["K", 2 ** 10]]) {
    if (b >= size && b % size === 0) return `${b / size}${unit}`;
  }
  return String(b);
}

async function formation({ name, base, body, live }) {
  const [app, form, vars] = await Promise.all([api.get(base), api.get(`${base}/formation`), api.get(`${base}/config`)]);
  if (!live()) return;
  body.dataset.loaded = "yes";

  // Scale and restart, per type.
  const scaleBox = h("div", { id: "formation" });
  if (!app.release) {
    scaleBox.append(empty("Not deployed yet: ", h("code", null, "git push"), ", then scale its process types here"));
  } else if (!form.results.length) {
    scaleBox.append(empty("No process types yet: ", h("code", null, "git push"), " a Procfile"));
  } else {
    const rows = form.results.map((f) => {
      const id = `scale-${f.type}`;
      const input = h("input", { id, type: "number", min: 0, max: 100, value: f.quantity, dataset: { type: f.type }, class: "narrow-input" });
      const scale = button("Scale", (ev) => busy(ev.currentTarget, async () => {
        const n = Number(input.value);
        if (!Number.isInteger(n) || n < 0) throw new Error("The count is a whole number, 0 or more.");
        await api.patch(`${base}/formation`, { updates: [{ type: f.type, quantity: n }] });
        flash(`Scaled ${f.type} to ${n}.`);
        refreshPs();
      }), { dataset: { scale: f.type }, "aria-label": `Scale ${f.type}` });
      const restart = button(`Restart ${f.type}`, (ev) => busy(ev.currentTarget, async () => {
        const r = await api.post(`${base}/ps/restart`, { target: f.type });
        flash(`Restarted ${(r?.restarted || []).join(", ") || f.type}.`);
        refreshPs();
      }), { class: "secondary", dataset: { restart: f.type } });
      return h("tr", { dataset: { type: f.type } },
        h("th", { scope: "row" }, f.type),
        h("td", null, f.command ? h("code", null, f.command) : h("span", { class: "muted" }, "not in the current release")),
        h("td", null, h("label", { for: id, class: "sr-only" }, `Instances of ${f.type}`), input),
        h("td", { class: "row-actions" }, scale, restart));
    });
    scaleBox.append(table(["Type", "Command", "Instances", h("span", { class: "sr-only" }, "Actions")], rows, { id: "formation-table" }));
  }
  const restartAll = button("Restart all", (ev) => busy(ev.currentTarget, async () => {
    const r = await api.post(`${base}/ps/restart`, {});
    flash(`Restarted ${(r?.restarted || []).join(", ") || "nothing"}.`);
    refreshPs();
  }), { id: "restart-all", class: "secondary" });
  body.append(h("h2", null, "Formation"), scaleBox, h("div", { class: "actions" }, restartAll));

  // Processes, refreshed every 5 s.
  const psBox = h("div", { id: "processes", "aria-live": "off" });
  body.append(h("h2", null, "Processes"), psBox);
  async function refreshPs() {
    const { results } = await api.get(`${base}/ps`);
    if (!live()) return;
    keepFocus(psBox, () => {
    clear(psBox);
    if (!results.length) {
      psBox.append(empty("No processes running: scale a type above, or ", h("code", null, "git push")));
      return;
    }
    psBox.append(table(["Instance", "State", "Release", "Uptime", "Restarts", "Memory", ""], results.map((p) => h("tr", { dataset: { dyno: p.dyno, key: p.dyno } },
      h("th", { scope: "row" }, p.dyno),
      h("td", null, h("span", { class: `badge state-${p.state}` }, p.state)),
      h("td", null, `v${p.release}`),
      h("td", null, duration(p.uptime_secs)),
      h("td", null, String(p.restarts)),
      h("td", null, p.wasm ? `${p.wasm.in_flight} in flight, ${p.wasm.requests} requests` : bytes(p.memory_bytes)),
      h("td", { class: "row-actions" }, p.wasm ? null : button("Restart", (ev) => busy(ev.currentTarget, async () => {
        await api.post(`${base}/ps/restart`, { target: p.dyno });
        flash(`Restarted ${p.dyno}.`);
        refreshPs();
      }), { class: "secondary small", "aria-label": `Restart ${p.dyno}` })))), { id: "ps" }));
    });
  }
  await refreshPs().catch(failed);
  every(5000, () => refreshPs().catch(failed));

  // Resize: the limits are config vars, as `mar ps:resize` sets them.
  const inputs = {};
  const fields = LIMITS.map(([flag, key, label, inForce]) => {
    // The server says what applies; an unset one shows the default it falls back to.
    const applied = app.limits ? inForce(app.limits) : "";
    const [f, input] = field(label, { id: `resize-${flag}`, value: vars[key] || "", placeholder: applied, autocomplete: "off", spellcheck: "false" },
      h("span", null, h("code", null, key), vars[key] ? "" : `: the default, ${applied}`));
    inputs[key] = input;
    return f;
  });
  const save = h("button", { type: "submit" }, "Resize");
  const resize = h("form", { id: "resize", class: "card" },
    h("h2", null, "Resize"), h("p", { class: "hint" }, "Per-instance limits, as ", h("code", null, "mar ps:resize"), " sets them. An empty field goes back to the default. Resizing makes a new release and restarts the app."),
    h("div", { class: "grid" }, fields), h("div", { class: "actions" }, save));
  resize.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const changes = {};
    for (const [key, input] of Object.entries(inputs)) {
      const v = input.value.trim();
      if (v && v !== vars[key]) changes[key] = v;
      if (!v && vars[key] !== undefined) changes[key] = null;
    }
    if (!Object.keys(changes).length) {
      flash(`Nothing to change: ${name} keeps its limits.`);
      return;
    }
    busy(save, async () => {
      await api.patch(`${base}/config`, changes);
      const v = await latestVersion(base);
      flash(`Resized ${name}: now v${v ?? "?"}.`);
      render();
    });
  });
  body.append(resize);
}

// ---------------------------------------------------------------------------------------
// Live logs

async function logs({ base, body, live }) {
  const ps = await api.get(`${base}/ps`).then((r) => r.results).catch(() => []);
  if (!live()) return;
  const types = [...new Set(ps.map((p) => p.type))].sort();
  const dynos = ps.map((p) => p.dyno).filter((d) => !types.includes(d)).sort();
  const [pf, psSel] = select("Process", [["", "All processes"], ...types.map((t) => [t, `${t} (all)`]), ...dynos], { id: "logs-ps" });
  const [sf, srcSel] = select("Source", [["", "All sources"], ["app", "App"], ["router", "Router"], ["platform", "Platform"]], { id: "logs-source" });
  const pause = button("Pause", () => setPaused(!paused), { id: "logs-pause", "aria-pressed": "false" });
  const clearBtn = button("Clear", () => { clear(lines); count = 0; }, { class: "secondary", id: "logs-clear" });
  const auto = h("input", { type: "checkbox", id: "logs-autoscroll", checked: true });
  const status = h("p", { id: "logs-status", class: "muted", role: "status" }, "Connecting…");
  const lines = h("div", { id: "log-lines", class: "log", tabindex: "0", role: "log", "aria-label": "Log lines", "aria-live": "off" });
  const view = h("div", { id: "log-view", dataset: { live: "no" } },
    h("div", { class: "toolbar" }, pf, sf,
      h("div", { class: "field check" }, auto, h("label", { for: "logs-autoscroll" }, "Auto-scroll")),
      h("div", { class: "actions" }, pause, clearBtn)),
    status, lines);
  body.append(view);

  let paused = false;
  let missed = [];
  let missedCount = 0;
  let count = 0;
  let controller = null;
  let retry = 0;

  function setPaused(p) {
    paused = p;
    pause.textContent = p ? "Resume" : "Pause";
    pause.setAttribute("aria-pressed", String(p));
    view.dataset.paused = p ? "yes" : "no";
    if (!p) {
      const held = missed;
      const n = missedCount;
      missed = [];
      missedCount = 0;
      if (n > held.length) addLine(`… ${n - held.length} lines missed while paused …`, true);
      for (const l of held) addLine(l);
    }
    showStatus();
  }

  function showStatus() {
    const where = view.dataset.live === "yes" ? "Streaming" : "Connecting…";
    status.textContent = paused ? `Paused: ${missedCount} new line${missedCount === 1 ? "" : "s"} waiting.` : where;
    status.dataset.missed = String(missedCount);
  }

  const wantSource = () => srcSel.value;
  function matches(source) {
    const want = wantSource();
    if (want === "platform") return source.startsWith("mar[") && source !== "mar[router]";
    return true;
  }

  function addLine(text, note = false) {
    const el = h("div", { class: note ? "line note" : "line" });
    const m = /^(\S+) ([^\s:]+(?:\[[^\]]*\])?): (.*)$/s.exec(text);
    if (m && !note) {
      const [, time, source, rest] = m;
      if (!matches(source)) return;
      el.dataset.source = source;
      const t = new Date(time);
      el.append(h("time", { datetime: time, title: time }, Number.isNaN(t.getTime()) ? time : t.toLocaleTimeString()), " ",
        h("span", { class: `src ${source.startsWith("app[") ? "src-app" : source === "mar[router]" ? "src-router" : "src-mar"}` }, source), " ",
        h("span", { class: "text" }, rest));
    } else {
      el.textContent = text;
    }
    const stick = auto.checked;
    lines.append(el);
    count++;
    while (count > LOG_KEEP) {
      lines.firstChild?.remove();
      count--;
    }
    if (stick) lines.scrollTop = lines.scrollHeight;
  }

  function onLine(text) {
    if (!text) return;
    if (paused) {
      missedCount++;
      missed.push(text);
      if (missed.length > LOG_KEEP) missed.shift();
      showStatus();
      return;
    }
    addLine(text);
  }

  function query(backlog) {
    const q = new URLSearchParams({ lines: String(backlog) });
    const src = srcSel.value;
    if (src === "router") {
      q.set("source", "mar");
      q.set("ps", "router");
    } else {
      if (src === "app") q.set("source", "app");
      if (src === "platform") q.set("source", "mar");
      if (psSel.value) q.set("ps", psSel.value);
    }
    return q;
  }

  function connect(backlog) {
    controller?.abort();
    // Server-Sent Events, one per line: the browser's EventSource sends the session's cookie
    // (same origin); this view reconnects by itself, without the backlog, when they stop.
    const es = new EventSource(`${base}/logs/stream?${query(backlog)}`);
    const c = { aborted: false, abort() { this.aborted = true; es.close(); } };
    controller = c;
    view.dataset.live = "no";
    showStatus();
    const ended = async () => {
      if (c.aborted || !live()) return;
      c.abort();
      view.dataset.live = "no";
      // EventSource does not say why it stopped: the API does, so a lost session or a
      // destroyed app stops the view instead of retrying for ever.
      try {
        await api.get(base);
      } catch (e) {
        if (e instanceof ApiError && e.status !== 503 && e.status < 500) {
          failed(e);
          status.textContent = `Stopped: ${e.message}`;
          return;
        }
      }
      if (!live() || controller !== c) return;
      status.textContent = "Disconnected: reconnecting…";
      retry = Math.min(retry + 1, 5);
      const t = setTimeout(() => { if (live() && controller === c) connect(0); }, 1000 * retry);
      onLeave(() => clearTimeout(t));
    };
    es.onopen = () => {
      if (c.aborted) return;
      view.dataset.live = "yes";
      retry = 0;
      showStatus();
    };
    es.onmessage = (e) => { if (!c.aborted) onLine(e.data); };
    // mar serve stopping says so last.
    es.addEventListener("end", (e) => { if (!c.aborted) onLine(e.data); ended(); });
    es.onerror = () => { ended(); };
  }

  const restart = () => {
    clear(lines);
    count = 0;
    missed = [];
    missedCount = 0;
    connect(200);
  };
  psSel.addEventListener("change", restart);
  srcSel.addEventListener("change", () => {
    psSel.disabled = srcSel.value === "router";
    restart();
  });
  onLeave(() => controller?.abort());
  connect(200);
}

// ---------------------------------------------------------------------------------------
// Metrics: hand-drawn SVG charts

const CHART_W = 640;
const CHART_H = 220;
const PAD = { l: 56, r: 12, t: 12, b: 40 };

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function fmt(v, digits = 1) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (Math.abs(v) >= 100 || Number.isInteger(v)) return String(Math.round(v));
  return v.toFixed(digits);
}

/**
 * A line chart. series: [{label, points: [[t, v|null]…]}]; stacked sums the series as
 * areas. Returns the figure (title, svg, legend, summary).
 */
function chart({ key, title, yLabel, series, stacked = false, summary, from, to, unit = "", attrs = {}, width = CHART_W }) {
  // Drawn at the width it is shown at, so its text stays readable in a narrow window.
  const W = width, H = CHART_H;
  const iw = W - PAD.l - PAD.r, ih = H - PAD.t - PAD.b;
  // Stacked: each series' values are on top of the previous ones.
  let drawn = series;
  if (stacked) {
    const acc = new Map();
    drawn = series.map((sr) => ({
      ...sr,
      base: sr.points.map(([t]) => acc.get(t) || 0),
      points: sr.points.map(([t, v]) => {
        const top = (acc.get(t) || 0) + (v || 0);
        acc.set(t, top);
        return [t, top];
      }),
    }));
  }
  let max = 0;
  for (const sr of drawn) for (const [, v] of sr.points) if (v !== null && v > max) max = v;
  const yMax = niceMax(max);
  const x = (t) => PAD.l + ((t - from) / Math.max(1, to - from)) * iw;
  const y = (v) => PAD.t + ih - (v / yMax) * ih;
  const titleId = nextId("chart-title");
  const descId = nextId("chart-desc");
  const svg = s("svg", {
    viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-labelledby": `${titleId} ${descId}`,
    "data-chart": key, preserveAspectRatio: "xMidYMid meet", ...attrs,
  });
  svg.append(s("title", { id: titleId }, title), s("desc", { id: descId }, summary));
  // Grid and y axis.
  const grid = s("g", { class: "grid" });
  for (let i = 0; i <= 4; i++) {
    const v = (yMax * i) / 4;
    const yy = y(v);
    grid.append(s("line", { x1: PAD.l, x2: W - PAD.r, y1: yy, y2: yy }),
      s("text", { x: PAD.l - 6, y: yy + 4, "text-anchor": "end", class: "tick" }, String(Number(v.toFixed(2)))));
  }
  // x axis: minutes before now (every 30 in a narrow chart).
  const span = to - from;
  for (let m = 0; m <= 60; m += W < 480 ? 30 : 15) {
    const t = to - (span * m) / 60;
    const xx = x(t);
    grid.append(s("line", { x1: xx, x2: xx, y1: PAD.t, y2: PAD.t + ih, class: "vgrid" }),
      s("text", { x: xx, y: PAD.t + ih + 16, "text-anchor": m === 0 ? "end" : m === 60 ? "start" : "middle", class: "tick" }, m === 0 ? "now" : `−${Math.round((span * m) / 60 / 60)}m`));
  }
  svg.append(grid,
    s("line", { x1: PAD.l, x2: W - PAD.r, y1: PAD.t + ih, y2: PAD.t + ih, class: "axis" }),
    s("line", { x1: PAD.l, x2: PAD.l, y1: PAD.t, y2: PAD.t + ih, class: "axis" }),
    s("text", { x: PAD.l + iw / 2, y: H - 4, "text-anchor": "middle", class: "axis-label" }, "time (last hour)"),
    s("text", { x: 12, y: PAD.t + ih / 2, "text-anchor": "middle", class: "axis-label", transform: `rotate(-90 12 ${PAD.t + ih / 2})` }, yLabel));
  // Series.
  drawn.forEach((sr, i) => {
    const cls = `series s${i % 8}`;
    const segs = [];
    let cur = [];
    for (const [t, v] of sr.points) {
      if (v === null || v === undefined) {
        if (cur.length) segs.push(cur);
        cur = [];
      } else cur.push([x(t), y(v)]);
    }
    if (cur.length) segs.push(cur);
    const g = s("g", { class: cls, "data-series": sr.label });
    if (stacked && sr.points.length) {
      const top = sr.points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`);
      const bottom = sr.points.map(([t], j) => `${x(t).toFixed(1)},${y(sr.base[j]).toFixed(1)}`).reverse();
      g.append(s("polygon", { points: [...top, ...bottom].join(" "), class: "area" }));
    }
    for (const seg of segs) {
      if (seg.length === 1) g.append(s("circle", { cx: seg[0][0], cy: seg[0][1], r: 2.5, class: "dot" }));
      else g.append(s("polyline", { points: seg.map(([a, b]) => `${a.toFixed(1)},${b.toFixed(1)}`).join(" "), class: "line" }));
    }
    svg.append(g);
  });
  const legend = h("ul", { class: "legend" }, series.map((sr, i) => {
    const last = [...sr.points].reverse().find(([, v]) => v !== null && v !== undefined);
    return h("li", null, h("span", { class: `swatch s${i % 8}`, "aria-hidden": "true" }), `${sr.label}: ${last ? fmt(last[1], 2) : "–"}${unit}`);
  }));
  legend.setAttribute("aria-label", `${title}, last values`);
  return h("figure", { class: "chart-box", dataset: { chartBox: key } },
    h("figcaption", null, h("h2", null, title)), svg, series.length > 1 ? legend : null,
    h("p", { class: "summary", dataset: { summary: key } }, summary));
}

async function metrics({ base, body, live }) {
  const box = h("div", { id: "charts", class: "charts" });
  const status = h("p", { id: "metrics-status", class: "muted", role: "status" }, "Loading metrics…");
  body.append(status, box);
  let stopped = false;
  async function refresh() {
    let m;
    try {
      m = await api.get(`${base}/metrics`);
    } catch (e) {
      if (!live()) return;
      if (e instanceof ApiError && e.status === 404 && /endpoint/.test(e.message)) {
        status.textContent = "This server does not record metrics yet.";
        stopped = true;
        return;
      }
      throw e;
    }
    if (!live()) return;
    drawMetrics(box, m);
    status.textContent = `Updated ${new Date().toLocaleTimeString()}; every 5 s while this tab is open.`;
    body.dataset.loaded = "yes";
  }
  await refresh().catch(failed);
  every(5000, () => { if (!stopped) refresh().catch(failed); });
}

function drawMetrics(box, m) {
  const iv = m.interval_secs || 10;
  const samples = m.samples || [];
  if (!samples.some((x) => Object.values(x.requests || {}).some(Boolean) || Object.keys(x.memory || {}).length)) {
    // Nothing ran and nothing was asked of it: say so instead of drawing empty charts.
    clear(box);
    box.append(empty("No traffic or running instances in the last hour: ", h("code", null, "git push"), " and send it requests, and the charts fill in"));
    return;
  }
  if (box.querySelector(".empty")) clear(box);
  const to = samples.length ? samples[samples.length - 1].t : Math.floor(Date.now() / 1000);
  const from = to - 3600;
  const shown = samples.filter((x) => x.t >= from);
  // Each sample covers the time since the one before (the last, still open, is shorter), so
  // its rate is its count over that; the summaries and legends use the last whole interval.
  const secs = shown.map((x, i) => Math.max(1, i ? x.t - shown[i - 1].t : iv));
  const whole = shown.length > 1 && secs[secs.length - 1] < iv * 0.9 ? shown.length - 2 : shown.length - 1;
  // One column of charts or two: each drawn at the width it gets.
  const columns = Math.max(1, getComputedStyle(box).gridTemplateColumns.split(" ").filter(Boolean).length);
  const width = Math.round(Math.min(960, Math.max(280, (box.clientWidth - 16 * (columns - 1)) / columns - 32)));
  const classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
  let total = 0;
  const perClass = {};
  for (const c of classes) perClass[c] = 0;
  for (const x of shown) for (const c of classes) {
    const n = x.requests?.[c] || 0;
    perClass[c] += n;
    total += n;
  }
  const last = shown[shown.length - 1];
  const full = shown[whole];
  const lastRate = full ? classes.reduce((n, c) => n + (full.requests?.[c] || 0), 0) / secs[whole] : 0;
  const reqSeries = classes.map((c) => ({ label: c, points: shown.map((x, i) => [x.t, (x.requests?.[c] || 0) / secs[i]]).slice(0, whole + 1) }));
  const breakdown = classes.filter((c) => perClass[c]).map((c) => `${c} ${perClass[c]}`).join(", ");
  const charts = [];
  charts.push(chart({
    key: "requests", title: "Requests per second", yLabel: "req/s", series: reqSeries, from, to, unit: " req/s", width,
    summary: `last: ${lastRate.toFixed(1)} req/s; ${total} requests in the last hour${breakdown ? ` (${breakdown})` : ""}.`,
    attrs: { "data-total": total },
  }));
  const lat = (k) => shown.map((x) => [x.t, x[k] ?? null]);
  const lastOf = (k) => [...shown].reverse().find((x) => x[k] !== null && x[k] !== undefined)?.[k];
  charts.push(chart({
    key: "latency", title: "Latency", yLabel: "ms", from, to, unit: " ms", width,
    series: [{ label: "p50", points: lat("p50_ms") }, { label: "p99", points: lat("p99_ms") }],
    summary: `last: p50 ${fmt(lastOf("p50_ms"))} ms, p99 ${fmt(lastOf("p99_ms"))} ms.`,
  }));
  charts.push(chart({
    key: "websockets", title: "Open WebSockets", yLabel: "sockets", from, to, width,
    series: [{ label: "open", points: shown.map((x) => [x.t, x.websockets ?? 0]) }],
    summary: `last: ${last?.websockets ?? 0} open; at most ${Math.max(0, ...shown.map((x) => x.websockets || 0))} in the last hour.`,
  }));
  const instances = [...new Set(shown.flatMap((x) => Object.keys(x.memory || {})))].sort();
  const mem = instances.map((i) => ({ label: i, points: shown.map((x) => [x.t, x.memory?.[i] !== undefined ? x.memory[i] / 2 ** 20 : null]) }));
  const lastMem = last ? Object.entries(last.memory || {}) : [];
  charts.push(chart({
    key: "memory", title: "Memory per instance", yLabel: "MiB", series: mem, from, to, unit: " MiB", width,
    summary: lastMem.length ? `last: ${lastMem.map(([k, v]) => `${k} ${bytes(v)}`).join(", ")}.` : "No instance memory recorded.",
  }));
  const r0 = shown[0]?.restarts ?? 0;
  const r1 = last?.restarts ?? 0;
  charts.push(chart({
    key: "restarts", title: "Restarts after a crash", yLabel: "restarts (total)", from, to, width,
    series: [{ label: "restarts", points: shown.map((x) => [x.t, x.restarts ?? 0]) }],
    summary: `last: ${r1} restart${r1 === 1 ? "" : "s"} in total; ${Math.max(0, r1 - r0)} in the last hour.`,
  }));
  // Keep the scroll position and focus: replace the figures in place.
  const old = [...box.children];
  charts.forEach((c, i) => (old[i] ? old[i].replaceWith(c) : box.append(c)));
}

// ---------------------------------------------------------------------------------------
// Builds

async function builds({ base, body, live }) {
  const listBox = h("div", { id: "builds-list" });
  const outTitle = h("h2", { id: "build-output-title" }, "Build output");
  const out = h("pre", { id: "build-output", class: "log", tabindex: "0", "aria-labelledby": "build-output-title", dataset: { state: "none" } },
    "Choose a build to see its output.");
  body.append(listBox, h("section", { class: "output" }, outTitle, out));
  let shown = null;
  let controller = null;
  let known = null;
  onLeave(() => controller?.abort());

  async function open(b) {
    controller?.abort();
    const c = new AbortController();
    controller = c;
    shown = b.id;
    for (const r of listBox.querySelectorAll("tr[data-build]")) r.classList.toggle("selected", r.dataset.build === b.id);
    outTitle.textContent = `Output of the build started ${new Date(b.started_at).toLocaleString()}${b.commit ? ` (commit ${b.commit.slice(0, 8)})` : ""}${b.release ? `, v${b.release}` : ""}`;
    out.textContent = "";
    out.dataset.build = b.id;
    out.dataset.state = "loading";
    try {
      const resp = await request("GET", `${base}/builds/${enc(b.id)}/output`, undefined, { raw: true, signal: c.signal });
      out.dataset.state = "streaming";
      await readLines(resp, (line) => {
        if (line.startsWith("\u0001")) return; // the deploy's result, for the CLI
        const stick = out.scrollTop + out.clientHeight >= out.scrollHeight - 8;
        out.append(line + "\n");
        if (stick) out.scrollTop = out.scrollHeight;
      }, c.signal);
      if (!c.signal.aborted) out.dataset.state = "done";
    } catch (e) {
      if (c.signal.aborted) return;
      out.dataset.state = "error";
      failed(e);
    }
  }

  async function refresh() {
    const list = await api.get(`${base}/builds`);
    if (!live()) return;
    const items = Array.isArray(list) ? list : list?.results || [];
    listBox.dataset.loaded = "yes";
    if (!items.length) {
      // Known to have none: the app's first push then streams like any other.
      known = new Set();
      keepFocus(listBox, () => {
        clear(listBox);
        listBox.append(empty("No builds yet: ", h("code", null, "git push")));
      });
      return;
    }
    const rows = items.map((b) => {
      const took = b.finished_at ? Math.round((new Date(b.finished_at) - new Date(b.started_at)) / 1000) : null;
      // A build is known by when it started (its id is a number only the API needs).
      return h("tr", { dataset: { build: b.id, key: b.id, status: b.status }, class: b.id === shown ? "selected" : null },
        h("th", { scope: "row" }, button([timeEl(b.started_at), h("span", { class: "sr-only" }, ": show this build's output")], () => open(b), { class: "link-button", dataset: { test: "build-open" } })),
        h("td", null, h("span", { class: `badge build-${b.status}`, dataset: { test: "status" } }, b.status)),
        h("td", null, b.release ? `v${b.release}` : "–"),
        h("td", null, b.commit ? h("code", null, b.commit.slice(0, 8)) : "–"),
        h("td", null, b.status === "running" ? "running…" : duration(took)));
    });
    keepFocus(listBox, () => {
      clear(listBox);
      listBox.append(table(["Started", "Status", "Release", "Commit", "Took"], rows, { id: "builds" }));
    });
    // The newest build's output is shown when the tab opens; a push while it is open shows
    // up, and streams if nothing else is streaming.
    const newest = items[0];
    if (known === null && !shown) open(newest);
    else if (known !== null && !known.has(newest.id) && newest.status === "running" && (!shown || out.dataset.state !== "streaming")) open(newest);
    known = new Set(items.map((b) => b.id));
  }
  await refresh().catch(failed);
  every(3000, () => refresh().catch(failed));
}

// ---------------------------------------------------------------------------------------
// Services

async function servicesPage(view, _route, live) {
  const section = h("section", { id: "services-view", "aria-labelledby": "services-title" },
    h("div", { class: "page-head" }, h("h1", { id: "services-title" }, "Services"),
      button("Refresh", () => render(), { class: "secondary" })));
  const listBox = h("div", { id: "services-list", "aria-busy": "true" }, h("p", { class: "muted" }, "Loading services…"));
  section.append(listBox);
  const [kf, kind] = select("Kind", [["mws", "MWS gateway (push)"], ["eds", "EDS backend (data)"]], { id: "new-service-kind" });
  const [nf, nameInput] = field("Name", { id: "new-service-name", required: true, autocomplete: "off", spellcheck: "false", placeholder: "push" });
  const createBtn = h("button", { type: "submit" }, "Create service");
  const form = h("form", { id: "create-service", class: "card inline-form" }, h("h2", null, "Create a service"), kf, nf, h("div", { class: "actions" }, createBtn));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(createBtn, async () => {
      const sv = await api.post("/v1/services", { kind: kind.value, name: nameInput.value.trim() });
      flash(`Created ${sv.kind} ${sv.name}.`);
      location.hash = `#/services/${enc(sv.name)}`;
    });
  });
  section.append(form);
  view.append(section);

  const { results } = await api.get("/v1/services");
  if (!live()) return;
  clear(listBox);
  listBox.setAttribute("aria-busy", "false");
  listBox.dataset.loaded = "yes";
  if (!results.length) {
    listBox.append(empty("No services yet: ", h("code", null, "mar services:create mws NAME")));
    return;
  }
  listBox.append(table(["Name", "Kind", "Access", "Created", h("span", { class: "sr-only" }, "Actions")], results.map((sv) => h("tr", { dataset: { service: sv.name } },
    h("th", { scope: "row" }, h("a", { href: `#/services/${enc(sv.name)}` }, sv.name)),
    h("td", null, sv.kind === "mws" ? "MWS gateway" : sv.kind === "eds" ? "EDS backend" : sv.kind),
    h("td", null, sv.access || "–"),
    h("td", null, timeEl(sv.created_at)),
    h("td", { class: "row-actions" }, destroyControl("service", sv.name, async () => {
      await api.del(`/v1/services/${enc(sv.name)}`);
      flash(`Destroyed ${sv.name}.`);
      render();
    })))), { id: "services" }));
}

async function servicePage(view, route, live) {
  const sv = await api.get(`/v1/services/${enc(route.service)}`);
  if (!live()) return;
  const body = h("div", { class: "tab-body" });
  view.append(h("section", { id: "service-view", dataset: { service: sv.name, kind: sv.kind } },
    h("p", { class: "crumbs" }, h("a", { href: "#/services" }, "Services"), " / "),
    h("h1", null, sv.name, " ", h("span", { class: "badge" }, sv.kind)),
    h("dl", { class: "facts" },
      h("dt", null, "Id"), h("dd", null, h("code", null, sv.id)),
      h("dt", null, "Address"), h("dd", null, h("code", null, sv.address)),
      h("dt", null, "Access"), h("dd", null, sv.access || "–"),
      h("dt", null, "Created"), h("dd", null, timeEl(sv.created_at))),
    body));
  document.title = `${sv.name} · mini-MAR`;
  const ctx = { sv, body, live };
  if (sv.kind === "mws") await mwsView(ctx);
  else if (sv.kind === "eds") await edsView(ctx);
}

/** Messages sent from this console, per gateway (this page's lifetime). */
const sentFromConsole = new Map();

async function mwsView({ sv, body, live }) {
  const gw = `/v1/gateways/${enc(sv.id)}`;
  const auth = { Authorization: `Bearer ${sv.secret}` };
  const call = (method, path, b) => request(method, `${gw}${path}`, b, { service: true, headers: auth });

  const stats = h("p", { id: "mws-stats", class: "summary", role: "status" });
  const tagsBox = h("div", { id: "mws-tags" });
  const socketsBox = h("div", { id: "mws-sockets" });
  const configBox = h("div", { id: "mws-config" });
  body.append(h("h2", null, "Connected sockets"), stats, socketsBox, h("h2", null, "Tags"), tagsBox);

  let lastCount = 0;
  // The gateway's own counters (since mar serve started), read at each refresh: the rate is
  // the change between two readings.
  let before = null;
  async function refresh() {
    const [{ results }, conf] = await Promise.all([call("GET", "/sockets"), call("GET", "/configuration")]);
    if (!live()) return;
    lastCount = results.length;
    const sent = sentFromConsole.get(sv.id) || 0;
    const t = conf.traffic || { published: 0, delivered: 0 };
    const now = Date.now();
    let rate = "the rate shows at the next refresh";
    if (before && now > before.at) {
      const secs = (now - before.at) / 1000;
      const per = (n) => (n / secs).toFixed(1);
      rate = `${per(t.published - before.published)} messages/s published, ${per(t.delivered - before.delivered)}/s delivered`;
    }
    before = { ...t, at: now };
    stats.dataset.published = String(t.published);
    stats.textContent = `${results.length} socket${results.length === 1 ? "" : "s"} connected; ${t.published} message${t.published === 1 ? "" : "s"} published and ${t.delivered} delivered since mar serve started (${rate}); ${sent} sent from this console.`;
    keepFocus(socketsBox, () => {
    clear(socketsBox);
    if (!results.length) socketsBox.append(empty("No sockets connected: clients open one with ", h("code", null, "GET websocket_uri"), " or a socket the app reserved"));
    else socketsBox.append(table(["Socket", "Connected", "Tags", ""], results.map((so) => h("tr", { dataset: { socket: so.id, key: so.id } },
      h("th", { scope: "row" }, h("code", null, so.id)),
      h("td", null, timeEl(so.connectedAt)),
      h("td", null, (so.tags || []).length ? (so.tags || []).map((t) => h("code", { class: "tag" }, t)) : "–"),
      h("td", { class: "row-actions" }, button("Disconnect", (ev) => busy(ev.currentTarget, async () => {
        if (!window.confirm(`Close socket ${so.id}?`)) return;
        await call("DELETE", `/sockets/${enc(so.id)}`);
        refresh();
      }), { class: "secondary small", "aria-label": `Disconnect socket ${so.id}` })))), { id: "sockets" }));
    });
    const counts = new Map();
    for (const so of results) for (const t of so.tags || []) counts.set(t, (counts.get(t) || 0) + 1);
    clear(tagsBox);
    if (!counts.size) tagsBox.append(empty("No tagged sockets."));
    else tagsBox.append(table(["Tag", "Sockets"], [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
      .map(([t, n]) => h("tr", null, h("th", { scope: "row" }, h("code", null, t)), h("td", null, String(n)))), { id: "tag-counts" }));
  }
  await refresh().catch(failed);
  every(5000, () => refresh().catch(failed));

  // Send a test message.
  const [tf, to] = select("Send to", [["*", "All sockets"], ["tag", "Sockets with a tag"]], { id: "mws-to" });
  const [gf, tag] = field("Tag", { id: "mws-tag", autocomplete: "off", spellcheck: "false", placeholder: "users.alice" });
  gf.hidden = true;
  to.addEventListener("change", () => { gf.hidden = to.value !== "tag"; tag.required = to.value === "tag"; });
  const [df, data] = field("Message", { id: "mws-data", tag: "textarea", rows: 3, required: true, spellcheck: "false" }, "Delivered verbatim as one text frame.");
  data.value = JSON.stringify({ hello: "from the mini-MAR console" });
  const send = h("button", { type: "submit" }, "Send");
  const form = h("form", { id: "mws-send", class: "card" }, h("h2", null, "Send a test message"), tf, gf, df, h("div", { class: "actions" }, send));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(send, async () => {
      const receivers = to.value === "tag" ? { sockets: null, tags: [tag.value.trim()] } : { sockets: ["*"], tags: null };
      await call("POST", "/messages", { data: data.value, receivers });
      sentFromConsole.set(sv.id, (sentFromConsole.get(sv.id) || 0) + 1);
      flash(`Sent to ${to.value === "tag" ? `tag ${tag.value.trim()}` : `all ${lastCount} socket(s)`}.`);
      refresh().catch(failed);
    });
  });
  body.append(form, h("h2", null, "Configuration"), configBox);
  try {
    const c = await call("GET", "/configuration");
    if (!live()) return;
    configBox.append(h("dl", { class: "facts" },
      h("dt", null, "Identity provider"), h("dd", null, c.identityProvider?.type || "–", c.identityProvider?.backendId ? ` (backend ${c.identityProvider.backendId})` : ""),
      h("dt", null, "Forwarding"), h("dd", null, c.forward ? `${c.forward.path || ""}${c.forward.app ? ` of ${c.forward.app}` : ""}` : "off"),
      h("dt", null, "Client frames forwarded"), h("dd", null, `${c.forwarded?.delivered ?? 0} delivered, ${c.forwarded?.dropped ?? 0} dropped`)));
  } catch (e) {
    failed(e);
  }
}

async function edsView({ sv, body, live }) {
  const headers = { "Enginio-Backend-Id": sv.id, Authorization: `Bearer ${sv.secret}` };
  const eds = (method, path, b) => request(method, path, b, { service: true, headers });
  const panel = (id, title) => {
    const box = h("div", { id });
    body.append(h("h2", null, title), box);
    return box;
  };
  const typesBox = panel("eds-types", "Object types");
  const browser = panel("eds-browser", "Objects");
  const aclBox = panel("eds-acl", "Access control of an object");
  const usersBox = panel("eds-users", "Users");
  const groupsBox = panel("eds-groups", "User groups");
  const linksBox = panel("eds-links", "Linked MWS gateways");

  const pre = (v) => h("pre", { class: "json" }, JSON.stringify(v, null, 2));

  // Types
  let types = [];
  try {
    types = (await eds("GET", "/v1/object_types")).results || [];
    if (!live()) return;
    if (!types.length) typesBox.append(empty("No declared types: objects of any type may still be created (", h("code", null, "POST /v1/object_types"), " declares one)."));
    else typesBox.append(table(["Type", "Properties", "Indexed"], types.map((t) => h("tr", null,
      h("th", { scope: "row" }, h("code", null, t.name)),
      h("td", null, (t.properties || []).map((p) => `${p.name}: ${p.type}`).join(", ") || "–"),
      h("td", null, (t.properties || []).filter((p) => p.indexed).map((p) => p.name).join(", ") || "–"))), { id: "object-types" }));
  } catch (e) {
    typesBox.append(h("p", { class: "error-text" }, e.message));
  }

  // Object browser
  const typeList = h("datalist", { id: "eds-type-names" }, types.map((t) => h("option", { value: t.name })));
  const [tf, type] = field("Type", { id: "eds-type", required: true, list: "eds-type-names", autocomplete: "off", spellcheck: "false", value: types[0]?.name || "", placeholder: "todos" });
  const [qf, q] = field("Query (q, JSON)", { id: "eds-q", tag: "textarea", rows: 2, spellcheck: "false" }, h("span", null, "e.g. ", h("code", null, '{"done":false}')));
  q.value = "{}";
  const [lf, limit] = field("Limit", { id: "eds-limit", type: "number", min: 1, max: 1000, value: 20 });
  const [of, offset] = field("Offset", { id: "eds-offset", type: "number", min: 0, value: 0 });
  const [sf, sort] = field("Sort by", { id: "eds-sort", autocomplete: "off", spellcheck: "false", placeholder: "createdAt" });
  const [df, dir] = select("Direction", [["desc", "Descending"], ["asc", "Ascending"]], { id: "eds-dir" });
  const go = h("button", { type: "submit" }, "Query");
  const results = h("div", { id: "eds-results", "aria-live": "polite" });
  const form = h("form", { id: "eds-query", class: "card" }, typeList, h("div", { class: "grid" }, tf, lf, of, sf, df), qf, h("div", { class: "actions" }, go));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(go, async () => {
      let query;
      try { query = JSON.parse(q.value.trim() || "{}"); } catch (e) { throw new Error(`The query is not JSON: ${e.message}`); }
      const p = new URLSearchParams({ q: JSON.stringify(query), limit: limit.value || "20", offset: offset.value || "0" });
      if (sort.value.trim()) p.set("sort", JSON.stringify([{ sortBy: sort.value.trim(), direction: dir.value }]));
      const t = type.value.trim();
      const [r, c] = await Promise.all([
        eds("GET", `/v1/objects/${enc(t)}?${p}`),
        eds("GET", `/v1/objects/${enc(t)}?${new URLSearchParams({ q: JSON.stringify(query), count: "1" })}`).catch(() => null),
      ]);
      if (!live()) return;
      clear(results);
      const list = r.results || [];
      results.append(h("p", { class: "summary" }, `${list.length} shown${c?.count !== undefined ? ` of ${c.count}` : ""}.`));
      if (!list.length) results.append(empty("No objects match."));
      for (const o of list) {
        results.append(h("div", { class: "object", dataset: { id: o.id } }, pre(o),
          button("Show ACL", () => { aclType.value = t; aclId.value = o.id; aclForm.requestSubmit(); aclBox.scrollIntoView({ block: "nearest" }); },
            { class: "secondary small", "aria-label": `Show ACL of ${o.id}` })));
      }
    });
  });
  browser.append(form, results);

  // ACL
  const [atf, aclType] = field("Type", { id: "acl-type", required: true, list: "eds-type-names", autocomplete: "off", spellcheck: "false" });
  const [aif, aclId] = field("Object id", { id: "acl-id", required: true, autocomplete: "off", spellcheck: "false" });
  const aclGo = h("button", { type: "submit" }, "Show ACL");
  const aclOut = h("div", { id: "acl-out" });
  const aclForm = h("form", { id: "eds-acl-form", class: "inline-form" }, atf, aif, h("div", { class: "actions" }, aclGo));
  aclForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(aclGo, async () => {
      const acl = await eds("GET", `/v1/objects/${enc(aclType.value.trim())}/${enc(aclId.value.trim())}/access`);
      clear(aclOut);
      const perms = Object.entries(acl || {});
      if (!perms.length) aclOut.append(empty("No grants."));
      else aclOut.append(table(["Permission", "Subjects"], perms.map(([perm, subjects]) => h("tr", null,
        h("th", { scope: "row" }, perm),
        h("td", null, Array.isArray(subjects) ? (subjects.length ? "" : "–") : null, Array.isArray(subjects) ? subjects.map((x) => h("code", { class: "tag" }, `${x.objectType || "?"}:${x.id}`)) : JSON.stringify(subjects)))), { id: "acl" }));
    });
  });
  aclBox.append(aclForm, aclOut);

  // Users and groups
  const listOf = async (box, path, cols, row, none) => {
    try {
      const r = await eds("GET", path);
      if (!live()) return;
      const items = r.results || [];
      if (!items.length) box.append(empty(none));
      else box.append(table(cols, items.map(row)));
    } catch (e) {
      box.append(h("p", { class: "error-text" }, e.message));
    }
  };
  await Promise.all([
    listOf(usersBox, "/v1/users?limit=100", ["Username", "Id", "Created"], (u) => h("tr", null,
      h("th", { scope: "row" }, u.username || "–"), h("td", null, h("code", null, u.id)), h("td", null, timeEl(u.createdAt))), "No users yet."),
    listOf(groupsBox, "/v1/usergroups?limit=100", ["Name", "Id", "Created"], (g) => h("tr", null,
      h("th", { scope: "row" }, g.name || "–"), h("td", null, h("code", null, g.id)), h("td", null, timeEl(g.createdAt))), "No user groups yet."),
  ]);

  // Links to MWS gateways: the backend's webhooks whose target is a gateway.
  async function showLinks() {
    const [hooks, all] = await Promise.all([
      eds("GET", "/v1/webhooks").then((r) => r.results || []),
      api.get("/v1/services").then((r) => r.results),
    ]);
    if (!live()) return;
    const gateways = all.filter((x) => x.kind === "mws");
    const byId = new Map(gateways.map((g) => [g.id, g.name]));
    const linked = hooks.filter((w) => w.gateway).map((w) => ({ id: w.gateway, name: byId.get(w.gateway) }));
    clear(linksBox);
    if (!linked.length) linksBox.append(empty("Not linked: its changes reach no gateway (", h("code", null, `mar services:link ${sv.name} MWS`), ")."));
    else linksBox.append(h("ul", { class: "plain", id: "links" }, linked.map((l) => h("li", null,
      l.name ? h("a", { href: `#/services/${enc(l.name)}` }, l.name) : h("code", null, l.id), " ",
      l.name ? button("Unlink", (ev) => busy(ev.currentTarget, async () => {
        if (!window.confirm(`Unlink ${sv.name} from ${l.name}?`)) return;
        await api.del(`/v1/services/${enc(sv.name)}/links/${enc(l.name)}`);
        flash(`Unlinked ${sv.name} from ${l.name}.`);
        showLinks().catch(failed);
      }), { class: "secondary small", "aria-label": `Unlink ${l.name}` }) : null))));
    const free = gateways.filter((g) => !linked.some((l) => l.id === g.id));
    if (free.length) {
      const [gf, gsel] = select("Gateway", free.map((g) => g.name), { id: "link-gateway" });
      const link = h("button", { type: "submit" }, "Link");
      const lform = h("form", { class: "inline-form", id: "eds-link" }, gf, h("div", { class: "actions" }, link));
      lform.addEventListener("submit", (ev) => {
        ev.preventDefault();
        busy(link, async () => {
          await api.post(`/v1/services/${enc(sv.name)}/links`, { gateway: gsel.value });
          flash(`Linked ${sv.name} to ${gsel.value}: its changes reach that gateway's sockets.`);
          showLinks().catch(failed);
        });
      });
      linksBox.append(lform);
    }
  }
  await showLinks().catch((e) => linksBox.append(h("p", { class: "error-text" }, e.message)));
}

// ---------------------------------------------------------------------------------------
// Start

async function start() {
  document.getElementById("signout").addEventListener("click", signOut);
  const toggle = document.getElementById("nav-toggle");
  toggle.addEventListener("click", () => setNav(document.getElementById("nav").hidden));
  const narrow = () => window.matchMedia("(max-width: 640px)").matches;
  // On a phone the menu closes once a page is chosen (the current one too) and on Escape.
  document.getElementById("nav").addEventListener("click", (ev) => {
    if (narrow() && ev.target.closest("a")) setNav(false);
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && narrow() && !document.getElementById("nav").hidden) {
      setNav(false);
      toggle.focus();
    }
  });
  window.matchMedia("(max-width: 640px)").addEventListener("change", (m) => {
    if (session.csrf) setNav(!m.matches);
  });
  window.addEventListener("hashchange", () => {
    render();
    document.getElementById("view").focus({ preventScroll: true });
  });
  let ok = false;
  try {
    ok = await checkSession();
  } catch (e) {
    document.getElementById("loading").textContent = `Cannot reach the server: ${e.message}`;
    return;
  }
  if (ok) signedIn();
  else showSignIn("");
}

start();
