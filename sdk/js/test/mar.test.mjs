// The JS SDK against a real `mar serve` (the binary cargo built: MAR_BIN, or debug/mar in
// CARGO_TARGET_DIR or target/), with Node's own test runner:
//   node --experimental-websocket --test sdk/js/test/
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, existsSync, mkdirSync, rmSync, chmodSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { Mws, Eds, MarError } from "../mar.js";

const repo = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const target = process.env.CARGO_TARGET_DIR || join(repo, "target");
const bin = process.env.MAR_BIN || join(target, "debug", "mar");
let server, home, address, admin;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const platform = async (method, path, body) => {
  const r = await fetch(`${address}${path}`, {
    method,
    headers: { Authorization: `Bearer ${admin}`, "Content-Type": "application/json" },
    body: body && JSON.stringify(body),
  });
  const v = await r.json();
  assert.ok(r.ok, `${method} ${path}: ${r.status} ${JSON.stringify(v)}`);
  return v;
};

before(async () => {
  assert.ok(existsSync(bin), `no mar binary at ${bin}: cargo build first`);
  const scratch = join(target, "tmp");
  mkdirSync(scratch, { recursive: true });
  home = mkdtempSync(join(scratch, "sdk-js-"));
  // As root, mar serve runs apps as users of their own, who must reach the data directory.
  chmodSync(home, 0o711);
  server = spawn(bin, ["serve", "--listen", "127.0.0.1:0", "--data-dir", home], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  server.stderr.on("data", (d) => (stderr += d));
  for (let i = 0; i < 300 && !existsSync(join(home, "serve.json")); i++) await sleep(50);
  assert.ok(existsSync(join(home, "serve.json")), `mar serve did not start: ${stderr}`);
  address = JSON.parse(readFileSync(join(home, "serve.json"), "utf8")).url;
  admin = readFileSync(join(home, "token"), "utf8").trim();
});

after(() => {
  server.kill("SIGTERM");
  rmSync(home, { recursive: true, force: true });
});

test("EDS: objects, queries, users and search", async () => {
  const s = await platform("POST", "/v1/services", { kind: "eds", name: "jsdata" });
  const eds = new Eds({ address, backendId: s.id, secret: s.secret });
  await eds.declareType({ name: "todos", properties: [{ name: "title", type: "string", indexed: true }] });
  const todos = eds.collection("todos");
  const a = await todos.insert({ title: "buy milk", done: false });
  await todos.insert({ title: "walk the dog", done: false });
  assert.equal(a.objectType, "objects.todos");
  assert.deepEqual((await todos.find({ done: false }, { sort: [{ sortBy: "title", direction: "desc" }] })).map((t) => t.title), ["walk the dog", "buy milk"]);
  assert.equal(await todos.count({ title: { $regex: "^buy" } }), 1);
  assert.equal((await todos.update(a.id, { done: true })).done, true);
  assert.deepEqual((await todos.atomic(a.id, { $push: { tags: "home" } })).tags, ["home"]);
  assert.equal((await todos.findOne(a.id)).title, "buy milk");
  assert.deepEqual((await eds.search("milk", "todos")).map((t) => t.title), ["buy milk"]);
  assert.equal(await todos.remove(a.id), true);
  await assert.rejects(todos.findOne(a.id), (e) => e instanceof MarError && e.status === 404);

  // A user's own view.
  const anon = new Eds({ address, backendId: s.id });
  await anon.signUp("ann", "secret-pw");
  const session = await anon.signIn("ann", "secret-pw");
  assert.equal(session.enginio_data.user.username, "ann");
  assert.equal((await anon.me()).username, "ann");
  await anon.collection("todos").insert({ title: "ann's own" });
  const others = new Eds({ address, backendId: s.id });
  assert.deepEqual((await others.collection("todos").find({ title: "ann's own" })), []);
  assert.equal((await anon.collection("todos").find({ title: "ann's own" })).length, 1);
  await anon.signOut();
  await assert.rejects(new Eds({ address, backendId: s.id, token: session.access_token }).me(), (e) => e.status === 401);
  await assert.rejects(anon.signIn("ann", "wrong"), (e) => e instanceof MarError && e.status === 400);
});

test("EDS: files up and down, and the notification stream", async () => {
  const s = await platform("POST", "/v1/services", { kind: "eds", name: "jsfiles" });
  const eds = new Eds({ address, backendId: s.id, secret: s.secret });
  await eds.declareType({ name: "photos", properties: [{ name: "title", type: "string" }], settings: { websocket: true } });
  const seen = [];
  const stream = await eds.follow({ data: { objectType: "objects.photos" } }, (c) => seen.push(c));
  const photo = await eds.collection("photos").insert({ title: "harbour" });
  for (let i = 0; i < 100 && seen.length === 0; i++) await sleep(50);
  stream.close();
  assert.equal(seen[0]?.event, "create", JSON.stringify(seen));
  assert.equal(seen[0].data.title, "harbour");

  const bytes = new Uint8Array(50_000).map((_, i) => i % 251);
  const file = await eds.upload("photos", photo.id, "picture", bytes, { fileName: "harbour.bin" });
  assert.equal(file.fileSize, 50_000);
  assert.equal(file.status, "complete");
  const url = await eds.downloadUrl(file.id);
  const back = new Uint8Array(await (await fetch(url)).arrayBuffer());
  assert.deepEqual(back, bytes);
});

test("MWS: messages in order, and nothing lost across a reconnect", async () => {
  const g = await platform("POST", "/v1/services", { kind: "mws", name: "jspush" });
  const server = new Mws({ address, gatewayId: g.id, secret: g.secret });
  const client = new Mws({ address, gatewayId: g.id });
  const got = [];
  let opened = 0;
  const sub = client.subscribe((d) => got.push(d), { retryMs: 100, onOpen: () => opened++ });
  for (let i = 0; i < 100 && (await server.sockets()).length === 0; i++) await sleep(20);
  await server.send("one");
  await server.send("two");
  for (let i = 0; i < 100 && got.length < 2; i++) await sleep(20);
  // The gateway drops the socket; a message is sent while the client is away.
  for (const s of await server.sockets()) await server.deleteSocket(s.id);
  await server.send("three");
  for (let i = 0; i < 200 && got.length < 3; i++) await sleep(20);
  sub.close();
  assert.deepEqual(got, ["one", "two", "three"]);
  assert.ok(opened >= 2, `reconnected (${opened} opens)`);
  const r = await server.createSocket(["users.1"]);
  assert.deepEqual(r.tags, ["users.1"]);
  await assert.rejects(client.createSocket([]), (e) => e.status === 401);
});

test("EDS linked to MWS: a change reaches a subscriber with no server code", async () => {
  const e = await platform("POST", "/v1/services", { kind: "eds", name: "jslinked" });
  const g = await platform("POST", "/v1/services", { kind: "mws", name: "jslive" });
  await platform("POST", `/v1/services/jslinked/links`, { gateway: "jslive" });
  const got = [];
  const sub = new Mws({ address, gatewayId: g.id }).subscribe((d) => got.push(JSON.parse(d)));
  const server = new Mws({ address, gatewayId: g.id, secret: g.secret });
  for (let i = 0; i < 100 && (await server.sockets()).length === 0; i++) await sleep(20);
  await new Eds({ address, backendId: e.id }).collection("todos").insert({ title: "pushed" });
  for (let i = 0; i < 100 && got.length < 1; i++) await sleep(20);
  sub.close();
  assert.equal(got[0].object.title, "pushed");
  assert.equal(got[0].meta.eventName, "create");
});
