//! Benchmark: EDS, mini-MAR's data store, through its HTTP API: inserts/s, reads by id/s and
//! indexed equality queries/s, each beside two references measured in the same rounds:
//!
//! - **raw SQLite**: the same operation done directly on SQLite by this executable (`eds-crud
//!   raw`, a process of its own so its CPU is counted like a server's): the same JSON objects as
//!   text in a table, WAL, `synchronous=FULL`, as many threads as the HTTP load has
//!   connections, the inserts through one writer connection (all SQLite allows), the reads on a
//!   connection per thread, prepared statements, nothing else: the limit this disk and SQLite
//!   allow;
//! - **Parse Server** (npm, pinned in `reference/parse/`) on PostgreSQL (Debian's) in a private
//!   cluster with `fsync=on` and `synchronous_commit=on`, driven by the same load generator
//!   with the same objects and the same connections as mini-MAR (`src/parse_ref.rs`).
//!
//! Reads and queries also run against **nginx-fixed**: nginx answering the same requests with
//! fixed bodies of EDS's shape and no storage (`nginx/nginx-eds-fixed.conf`), the most an HTTP
//! answer reaches with this load generator on this machine, so the reads' ratio to raw SQLite
//! is printed beside the ceiling HTTP puts on it.
//!
//! Figures: operations/s, p50/p99, and the server's CPU µs per operation from `/proc` (the
//! process tree: `mar serve`; node + every PostgreSQL process; the raw process). Targets: inserts
//! ≥ 50% of raw SQLite's, reads by id ≥ 70%, and ≥ 3x Parse's operations per CPU second.
//!
//! Run: `cargo run --release -p mar-bench --bin eds-crud -- --help`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mar_bench::args::Args;
use mar_bench::hist::Hist;
use mar_bench::loadgen::{Mark, sleep_until};
use mar_bench::nginx::{self, Nginx};
use mar_bench::parse_ref::{self, ParseServer, Postgres};
use mar_bench::procfs::{self, CpuUse, Watched};
use mar_bench::report::{self, NOISY_PCT, Quiet, median, ms, rate, us, verdict};
use mar_bench::reqload::{self, ReqLoad, Requests, Rng, json_str, query_encode, run_requests};
use mar_bench::subject::{self, Mar};
use rusqlite::{Connection, params};
use serde_json::{Value, json};

const USAGE: &str = "\
eds-crud: EDS through HTTP vs raw SQLite vs Parse Server on PostgreSQL, same run, medians of
clean rounds.

  eds-crud [--rounds 3] [--duration 8] [--warmup 2] [--conns 16] [--threads 1]
           [--targets mar,sqlite,parse,nginx-fixed[,sqlite-eds]] [--ops insert,read,query]
           [--quiet-timeout 120] [--no-quiet]

Each round runs inserts, then reads by id, then indexed queries (reads and queries pick
uniformly among every object that target has stored so far), each on every target, in an order
that turns each round; --ops leaves some out (reads and queries need the objects of earlier
inserts). sqlite-eds, not run by default, is the raw reference with EDS's storage shape (`raw
--shape eds`): what EDS's tables cost before any HTTP. nginx-fixed (reads and queries only)
answers with fixed bodies of EDS's shape and no storage: the ceiling HTTP puts on them.
--conns: the HTTP load's keep-alive connections and the raw reference's threads. About 8
minutes with the defaults, 10 with sqlite-eds.

  eds-crud raw --db FILE --op insert|read|query [--conns 16] [--warmup 2] [--duration 8]
           [--tag T] [--shape minimal|eds] [--cached] [--sync FULL]
      the raw SQLite reference alone (the bench runs it so); prints `RESULT {json}`.
      --shape eds writes every insert as EDS does (objects with their ACL, readers, idx, the
      full-text rows, the change log, in one transaction; statements prepared each time unless
      --cached), to tell the storage's cost from the rest; --sync sets PRAGMA synchronous.

Needs Node.js, npm (Parse Server is installed once with `npm ci` into MAR_BENCH_PARSE_DIR, else
/var/cache/mar-bench/parse) and PostgreSQL (PG_BIN, else /usr/lib/postgresql/N/bin; installed
with apt-get when missing). mar is target/<profile>/mar beside the bench unless MAR_BIN names
another build: use a release build for figures.";

/// EDS's type (`objects.items`) and Parse's class.
const EDS_TYPE: &str = "items";
const PARSE_CLASS: &str = "Item";
const PARSE_APP_ID: &str = "eds-crud";
const PARSE_MASTER_KEY: &str = "eds-crud-master-key-0123456789abcdef";

/// The JSON objects' size: about 200 bytes with 5 properties.
const OBJECT_BYTES: usize = 200;
const FILLER: &str = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod \
                      tempor incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, \
                      quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Insert,
    Read,
    Query,
}

const OPS: [Op; 3] = [Op::Insert, Op::Read, Op::Query];

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Read => "read by id",
            Op::Query => "indexed query",
        }
    }

    fn arg(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Read => "read",
            Op::Query => "query",
        }
    }
}

/// The client's object number `n` with key `k`: 5 properties, [`OBJECT_BYTES`] of JSON.
fn object_json(k: &str, n: u64) -> String {
    let head = format!(
        r#"{{"k":"{k}","title":"eds-crud object {n}","count":{n},"done":{},"note":""#,
        n.is_multiple_of(2)
    );
    let pad = OBJECT_BYTES
        .saturating_sub(head.len() + 2)
        .min(FILLER.len());
    format!("{head}{}\"}}", &FILLER[..pad])
}

struct Cfg {
    rounds: usize,
    warmup: Duration,
    duration: Duration,
    conns: usize,
    threads: usize,
    ops: Vec<Op>,
    quiet: Quiet,
}

/// One measured run.
#[derive(Clone, Default)]
struct Run {
    ops: f64,
    p50: f64,
    p99: f64,
    /// The server's CPU per operation (all its processes).
    cpu_us: f64,
    /// Its kernel share, in %.
    sys_pct: f64,
    /// Parse: node's and PostgreSQL's parts of `cpu_us`.
    parts: Vec<(&'static str, f64)>,
    /// The load generator's CPU per operation (HTTP targets).
    gen_us: f64,
    errors: u64,
    /// 2xx answers without the object (a read that found nothing, a query with no result).
    misses: u64,
    other_pct: f64,
    noisy: bool,
    /// Objects the target held when the run began.
    rows: usize,
}

/// Every target, in the order of the table.
const TARGETS: [&str; 5] = ["mar", "sqlite", "parse", "nginx-fixed", "sqlite-eds"];

/// nginx answering EDS's reads and queries with fixed bodies.
const FIXED_CONF: &str = include_str!("../nginx/nginx-eds-fixed.conf");

/// A stored object as EDS answers a read of it (its size and shape; nginx sends it as is).
fn fixed_object() -> String {
    let mut v: Value = serde_json::from_str(&object_json("r0c0n1", 1)).unwrap();
    v["id"] = json!("692cf00e6f1d2a3b4c000001");
    v["objectType"] = json!(format!("objects.{EDS_TYPE}"));
    v["createdAt"] = json!("2026-12-01T02:00:00.000Z");
    v["updatedAt"] = json!("2026-12-01T02:00:00.000Z");
    v.to_string()
}

/// How a target's API is called.
enum Api {
    Eds { backend: String, secret: String },
    Parse,
}

/// An HTTP target: mini-MAR or Parse Server.
struct HttpTarget {
    addr: SocketAddr,
    host: String,
    api: Arc<Api>,
    /// (id, k) of every object it stored (as far as we saw the answers).
    objects: Vec<(String, String)>,
    /// Its processes: (the server, the database) for the CPU split.
    pids: Box<dyn Fn() -> (Vec<u32>, Vec<u32>)>,
    /// The main process, for VmRSS.
    main_pid: u32,
}

/// One connection's requests.
struct Client {
    api: Arc<Api>,
    host: Arc<str>,
    op: Op,
    tag: Arc<str>,
    conn: usize,
    n: u64,
    rng: Rng,
    pool: Arc<Vec<(String, String)>>,
    made: Vec<(String, String)>,
    pending: Option<String>,
    misses: u64,
}

impl Client {
    fn head(&self, buf: &mut Vec<u8>, method: &str, path: &str, body_len: Option<usize>) {
        let _ = write!(buf, "{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        match &*self.api {
            Api::Eds { backend, secret } => {
                let _ = write!(
                    buf,
                    "Enginio-Backend-Id: {backend}\r\nAuthorization: Bearer {secret}\r\n"
                );
            }
            Api::Parse => {
                let _ = write!(
                    buf,
                    "X-Parse-Application-Id: {PARSE_APP_ID}\r\nX-Parse-Master-Key: {PARSE_MASTER_KEY}\r\n"
                );
            }
        }
        if let Some(n) = body_len {
            let _ = write!(
                buf,
                "Content-Type: application/json\r\nContent-Length: {n}\r\n"
            );
        }
        buf.extend_from_slice(b"\r\n");
    }

    fn collection(&self) -> String {
        match &*self.api {
            Api::Eds { .. } => format!("/v1/objects/{EDS_TYPE}"),
            Api::Parse => format!("/parse/classes/{PARSE_CLASS}"),
        }
    }

    fn pick(&mut self) -> (String, String) {
        self.pool[self.rng.below(self.pool.len())].clone()
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

impl Requests for Client {
    fn next(&mut self, buf: &mut Vec<u8>) {
        self.n += 1;
        match self.op {
            Op::Insert => {
                let k = format!("{}c{}n{}", self.tag, self.conn, self.n);
                let body = object_json(&k, self.n);
                let path = self.collection();
                self.head(buf, "POST", &path, Some(body.len()));
                buf.extend_from_slice(body.as_bytes());
                self.pending = Some(k);
            }
            Op::Read => {
                let (id, _) = self.pick();
                let path = format!("{}/{id}", self.collection());
                self.head(buf, "GET", &path, None);
            }
            Op::Query => {
                let (_, k) = self.pick();
                let q = query_encode(&json!({ "k": k }).to_string());
                let param = match &*self.api {
                    Api::Eds { .. } => "q",
                    Api::Parse => "where",
                };
                let path = format!("{}?{param}={q}", self.collection());
                self.head(buf, "GET", &path, None);
            }
        }
    }

    fn answered(&mut self, status: u16, body: &[u8]) {
        if !(200..300).contains(&status) {
            return;
        }
        match self.op {
            Op::Insert => {
                let key = match &*self.api {
                    Api::Eds { .. } => "id",
                    Api::Parse => "objectId",
                };
                if let (Some(id), Some(k)) = (json_str(body, key), self.pending.take()) {
                    self.made.push((id.to_owned(), k));
                }
            }
            Op::Read => {
                if !contains(body, b"\"k\":\"") {
                    self.misses += 1;
                }
            }
            Op::Query => {
                if !contains(body, b"\"results\":[{") {
                    self.misses += 1;
                }
            }
        }
    }
}

fn main() {
    let args = Args::from_env();
    match args.positional.first().map(String::as_str) {
        None => bench(&args),
        Some("raw") => raw_worker(&args),
        Some(other) => {
            eprintln!("unknown command {other:?}\n\n{USAGE}");
            std::process::exit(64);
        }
    }
}

fn bench(args: &Args) {
    let cfg = Cfg {
        rounds: args.get("rounds", 3),
        warmup: Duration::from_secs_f64(args.get("warmup", 2.0)),
        duration: Duration::from_secs_f64(args.get("duration", 8.0)),
        conns: args.get("conns", 16),
        threads: args.get("threads", 1),
        ops: args
            .list("ops", "insert,read,query")
            .iter()
            .map(|o| match o.as_str() {
                "insert" => Op::Insert,
                "read" => Op::Read,
                "query" => Op::Query,
                other => {
                    eprintln!("--ops: {other:?} is not insert, read or query\n\n{USAGE}");
                    std::process::exit(64)
                }
            })
            .collect(),
        quiet: Quiet {
            off: args.flag("no-quiet"),
            timeout: Duration::from_secs_f64(args.get("quiet-timeout", 120.0)),
        },
    };
    let targets = args.list("targets", "mar,sqlite,parse,nginx-fixed");
    args.finish(USAGE);
    if let Some(t) = targets.iter().find(|t| !TARGETS.contains(&t.as_str())) {
        eprintln!("--targets: unknown target {t:?}\n\n{USAGE}");
        std::process::exit(64);
    }
    let has = |t: &str| targets.iter().any(|x| x == t);
    if has("mar") {
        subject::check_mar_bin();
    }
    report::catch_ctrl_c();
    report::warn_debug_build();
    procfs::raise_nofile();
    let versions = has("parse").then(parse_ref::ensure_installed);

    let scratch = tempfile::Builder::new()
        .prefix("mar-bench-eds-crud-")
        .tempdir_in(mar_tests::scratch_root())
        .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    println!(
        "eds-crud: {} cpus, {} rounds of {:.0}s after {:.0}s warm-up, {} connections (raw \
         SQLite: {} threads), load generator {} thread(s), objects of {OBJECT_BYTES} bytes with 5 \
         properties, e.g. {}",
        procfs::cpus(),
        cfg.rounds,
        cfg.duration.as_secs_f64(),
        cfg.warmup.as_secs_f64(),
        cfg.conns,
        cfg.conns,
        cfg.threads,
        object_json("r1c0n1", 1)
    );

    // mini-MAR with its defaults, one EDS backend whose `k` is declared indexed.
    let mar = has("mar").then(Mar::start);
    let mut mar_target = mar.as_ref().map(|m| {
        let out = m.server.mar(&["services:create", "eds", "bench", "--json"]);
        assert!(out.ok(), "services:create failed: {}", out.all());
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        let api = Arc::new(Api::Eds {
            backend: v["id"].as_str().unwrap().to_owned(),
            secret: v["secret"].as_str().unwrap().to_owned(),
        });
        let pid = m.pid;
        println!("mar serve: pid {pid}, EDS backend {}", v["id"].as_str().unwrap_or("?"));
        let t = HttpTarget {
            addr: m.addr(),
            host: "localhost".to_owned(),
            api,
            objects: Vec::new(),
            pids: Box::new(move || {
                let mut v = vec![pid];
                v.extend(procfs::descendants(pid));
                (v, Vec::new())
            }),
            main_pid: pid,
        };
        let def = json!({"name": EDS_TYPE, "properties": [{"name": "k", "type": "string", "indexed": true}]});
        let (s, body) = setup_call(&t, "POST", "/v1/object_types", &def.to_string());
        assert_eq!(s, 201, "declaring {EDS_TYPE}: {body}");
        check_target("mar", &t);
        t
    });

    // Parse Server on a private PostgreSQL cluster, its class declared with an index on `k`.
    let pg = versions
        .as_ref()
        .map(|(_, bin)| Postgres::start(bin, scratch.path()));
    let parse = pg.as_ref().map(|pg| {
        ParseServer::start(
            &pg.uri(),
            PARSE_APP_ID,
            PARSE_MASTER_KEY,
            &scratch.path().join("parse-logs"),
        )
    });
    let mut parse_target = parse.as_ref().map(|p| {
        let pg = pg.as_ref().unwrap();
        let (node, pg_pid) = (p.pid(), pg.pid);
        let t = HttpTarget {
            addr: p.addr,
            host: p.addr.to_string(),
            api: Arc::new(Api::Parse),
            objects: Vec::new(),
            pids: Box::new(move || {
                let mut db = vec![pg_pid];
                db.extend(procfs::descendants(pg_pid));
                (vec![node], db)
            }),
            main_pid: node,
        };
        let schema = json!({
            "className": PARSE_CLASS,
            "fields": {
                "k": {"type": "String"}, "title": {"type": "String"}, "count": {"type": "Number"},
                "done": {"type": "Boolean"}, "note": {"type": "String"}
            },
            "indexes": {"k_1": {"k": 1}}
        });
        let (s, body) = setup_call(
            &t,
            "POST",
            &format!("/parse/schemas/{PARSE_CLASS}"),
            &schema.to_string(),
        );
        assert_eq!(s, 200, "declaring {PARSE_CLASS}: {body}");
        check_target("parse", &t);
        let indexes = pg.psql(&format!(
            "SELECT indexdef FROM pg_indexes WHERE tablename = '{PARSE_CLASS}' ORDER BY 1"
        ));
        println!(
            "parse-server {} on {}: fsync={} synchronous_commit={} wal_sync_method={} \
             full_page_writes={}; {PARSE_CLASS}'s indexes: {}",
            versions.as_ref().unwrap().0,
            pg.version,
            pg.setting("fsync"),
            pg.setting("synchronous_commit"),
            pg.setting("wal_sync_method"),
            pg.setting("full_page_writes"),
            indexes.trim().replace('\n', "; ")
        );
        t
    });
    // nginx answering EDS's reads and queries with fixed bodies: the HTTP ceiling.
    let fixed = has("nginx-fixed").then(|| {
        nginx::ensure_installed();
        let object = fixed_object();
        Nginx::start(
            "eds-fixed",
            FIXED_CONF,
            "@LISTEN@",
            &[
                ("@OBJECT@", object.clone()),
                ("@QUERY@", format!(r#"{{"results":[{object}]}}"#)),
            ],
        )
    });
    let mut fixed_target = fixed.as_ref().map(|n| {
        let pids = n.pids();
        HttpTarget {
            addr: ([127, 0, 0, 1], n.port).into(),
            host: "localhost".to_owned(),
            api: Arc::new(Api::Eds {
                backend: "0".repeat(24),
                secret: "0".repeat(32),
            }),
            // Ids and keys to ask for (the answer is the same whatever they are).
            objects: (0..1000u32)
                .map(|i| (format!("{i:024x}"), format!("r0c0n{i}")))
                .collect(),
            main_pid: n.master,
            pids: Box::new(move || (pids.clone(), Vec::new())),
        }
    });
    let raw_db = scratch.path().join("raw.db");
    let raw_eds_db = scratch.path().join("raw-eds.db");

    let rss_before = mar_target
        .as_ref()
        .and_then(|t| procfs::rss_kib(t.main_pid));
    let node_rss_before = parse_target
        .as_ref()
        .and_then(|t| procfs::rss_kib(t.main_pid));

    let names: Vec<&str> = TARGETS.into_iter().filter(|t| has(t)).collect();
    // runs[op][target]
    let mut runs: Vec<Vec<Vec<Run>>> = vec![vec![Vec::new(); names.len()]; OPS.len()];
    'rounds: for round in 0..cfg.rounds {
        for (oi, &op) in OPS.iter().enumerate() {
            if !cfg.ops.contains(&op) {
                continue;
            }
            for i in 0..names.len() {
                if report::stop_requested() {
                    break 'rounds;
                }
                // Turn the order each round, so no target always runs first or last.
                let ti = (i + round) % names.len();
                let name = names[ti];
                if name == "nginx-fixed" && op == Op::Insert {
                    // No storage, so nothing to compare an insert with.
                    continue;
                }
                cfg.quiet.wait();
                let tag = format!("r{}", round + 1);
                let r = match name {
                    "mar" => measure_http(mar_target.as_mut().unwrap(), op, &tag, &cfg),
                    "nginx-fixed" => measure_http(fixed_target.as_mut().unwrap(), op, &tag, &cfg),
                    "parse" => measure_http(parse_target.as_mut().unwrap(), op, &tag, &cfg),
                    "sqlite" => measure_raw(&raw_db, false, op, &tag, &cfg),
                    _ => measure_raw(&raw_eds_db, true, op, &tag, &cfg),
                };
                print_run(round, op, name, &r);
                runs[oi][ti].push(r);
            }
        }
    }

    let rss_after = mar_target
        .as_ref()
        .and_then(|t| procfs::rss_kib(t.main_pid));
    let node_rss_after = parse_target
        .as_ref()
        .and_then(|t| procfs::rss_kib(t.main_pid));
    summary(&names, &runs);
    let kib =
        |k: Option<u64>| k.map_or("-".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    println!(
        "\nmemory (VmRSS): mar serve {} before the rounds, {} after ({} objects stored); \
         Parse's node {} before, {} after ({} objects; PostgreSQL's processes not counted)",
        kib(rss_before),
        kib(rss_after),
        mar_target.as_ref().map_or(0, |t| t.objects.len()),
        kib(node_rss_before),
        kib(node_rss_after),
        parse_target.as_ref().map_or(0, |t| t.objects.len()),
    );

    drop(fixed);
    drop(parse);
    drop(pg);
    if let Some(m) = mar {
        m.stop();
    }
}

/// A setup request to a target, with its credentials.
fn setup_call(t: &HttpTarget, method: &str, path: &str, body: &str) -> (u16, String) {
    let h: Vec<(String, String)> = match &*t.api {
        Api::Eds { backend, secret } => vec![
            ("Enginio-Backend-Id".into(), backend.clone()),
            ("Authorization".into(), format!("Bearer {secret}")),
        ],
        Api::Parse => vec![
            ("X-Parse-Application-Id".into(), PARSE_APP_ID.into()),
            ("X-Parse-Master-Key".into(), PARSE_MASTER_KEY.into()),
        ],
    };
    let mut headers: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    headers.push(("Content-Type", "application/json"));
    reqload::call(t.addr, method, &t.host, path, &headers, body)
        .unwrap_or_else(|| panic!("{method} {path}: no answer from {}", t.addr))
}

/// One object through the client the load uses: created, read back, found by `k`.
fn check_target(name: &str, t: &HttpTarget) {
    let mut c = client(t, Op::Insert, "check", 0, Arc::new(Vec::new()));
    for op in OPS {
        c.op = op;
        if op != Op::Insert {
            c.pool = Arc::new(c.made.clone());
        }
        let mut req = Vec::new();
        c.next(&mut req);
        let text = String::from_utf8(req).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        let mut first = lines.next().unwrap().split(' ');
        let (method, path) = (first.next().unwrap(), first.next().unwrap());
        let (status, answer) = setup_call(t, method, path, body);
        let misses = c.misses;
        c.answered(status, answer.as_bytes());
        assert!(
            (200..300).contains(&status) && c.misses == misses && !c.made.is_empty(),
            "{name}: {method} {path} answered {status}: {answer}"
        );
    }
}

fn client(
    t: &HttpTarget,
    op: Op,
    tag: &str,
    conn: usize,
    pool: Arc<Vec<(String, String)>>,
) -> Client {
    Client {
        api: t.api.clone(),
        host: t.host.as_str().into(),
        op,
        tag: tag.into(),
        conn,
        n: 0,
        rng: Rng::new(conn as u64 + 1),
        pool,
        made: Vec::new(),
        pending: None,
        misses: 0,
    }
}

/// One run of `op` against mini-MAR or Parse through the load generator.
fn measure_http(t: &mut HttpTarget, op: Op, tag: &str, cfg: &Cfg) -> Run {
    let rows = t.objects.len();
    if op != Op::Insert && t.objects.is_empty() {
        return Run {
            ops: f64::NAN,
            ..Default::default()
        };
    }
    let pool = Arc::new(t.objects.clone());
    let (api, host, tag) = (
        t.api.clone(),
        Arc::<str>::from(t.host.as_str()),
        Arc::<str>::from(tag),
    );
    let seed = rows as u64;
    let make = move |conn: usize| Client {
        api: api.clone(),
        host: host.clone(),
        op,
        tag: tag.clone(),
        conn,
        n: 0,
        rng: Rng::new(seed + conn as u64 + 1),
        pool: pool.clone(),
        made: Vec::new(),
        pending: None,
        misses: 0,
    };
    let load = ReqLoad {
        addr: t.addr,
        conns: cfg.conns,
        threads: cfg.threads,
        warmup: cfg.warmup,
        duration: cfg.duration,
    };
    // The processes are listed when the window starts: PostgreSQL starts its backends as
    // Parse's pool fills during the warm-up.
    let mut watched = Watched::default();
    let mut snaps = Vec::new();
    let (res, clients) = run_requests(&load, make, |m| {
        if m == Mark::Start {
            let (server, db) = (t.pids)();
            watched = Watched {
                proxy: server,
                backend: db,
            };
        }
        snaps.push(watched.snap());
    });
    let cpu = CpuUse::between(&snaps[0], &snaps[1]);
    let mut misses = 0;
    for c in clients {
        misses += c.misses;
        t.objects.extend(c.made);
    }
    if let Some(e) = &res.first_error {
        println!("    first error: {e}");
    }
    let n = res.ok.max(1) as f64;
    let server_s = cpu.proxy_s + cpu.backend_s;
    let parts = if cpu.backend_s > 0.0 {
        vec![
            ("node", cpu.proxy_s * 1e6 / n),
            ("postgres", cpu.backend_s * 1e6 / n),
        ]
    } else {
        Vec::new()
    };
    Run {
        ops: res.rps(),
        p50: res.hist.quantile(0.5),
        p99: res.hist.quantile(0.99),
        cpu_us: server_s * 1e6 / n,
        // Parse's split is node/PostgreSQL instead.
        sys_pct: if cpu.backend_s > 0.0 {
            f64::NAN
        } else {
            100.0 * cpu.proxy_sys_s / server_s.max(1e-9)
        },
        parts,
        gen_us: cpu.gen_s * 1e6 / n,
        errors: res.errors + res.non2xx,
        misses,
        other_pct: cpu.other_pct,
        noisy: cpu.other_pct > NOISY_PCT,
        rows,
    }
}

/// One run of `op` by the raw SQLite reference, a process of its own.
fn measure_raw(db: &Path, eds_shape: bool, op: Op, tag: &str, cfg: &Cfg) -> Run {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .arg("raw")
        .arg("--db")
        .arg(db)
        .args(["--op", op.arg(), "--tag", tag])
        .args(["--shape", if eds_shape { "eds" } else { "minimal" }])
        .args(["--conns", &cfg.conns.to_string()])
        .args(["--warmup", &cfg.warmup.as_secs_f64().to_string()])
        .args(["--duration", &cfg.duration.as_secs_f64().to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(v) = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .and_then(|j| serde_json::from_str::<Value>(j).ok())
    else {
        panic!(
            "eds-crud raw failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let ok = f("ok").max(1.0);
    Run {
        ops: f("ok") / f("secs"),
        p50: f("p50"),
        p99: f("p99"),
        cpu_us: f("cpu_s") * 1e6 / ok,
        sys_pct: 100.0 * f("sys_s") / f("cpu_s").max(1e-9),
        parts: Vec::new(),
        gen_us: f64::NAN,
        errors: f("errors") as u64,
        misses: f("misses") as u64,
        other_pct: f("other_pct"),
        noisy: f("other_pct") > NOISY_PCT,
        rows: f("rows") as usize,
    }
}

fn print_run(round: usize, op: Op, name: &str, r: &Run) {
    let split = if r.parts.is_empty() {
        format!("(sys {:.0}%)", r.sys_pct)
    } else {
        r.parts
            .iter()
            .map(|(n, v)| format!("{n} {}", us(*v)))
            .collect::<Vec<_>>()
            .join(" + ")
    };
    println!(
        "  round {} {:<13} {:<10} {:>7} ops/s  p50 {:>8}  p99 {:>8}  server {:>9}/op {split}  \
         loadgen {}/op  other {:.1}%  errors {}  misses {}  ({} objects){}",
        round + 1,
        op.name(),
        name,
        rate(r.ops),
        ms(r.p50),
        ms(r.p99),
        us(r.cpu_us),
        us(r.gen_us),
        r.other_pct,
        r.errors,
        r.misses,
        r.rows,
        if r.noisy { "  NOISY" } else { "" }
    );
}

fn summarize(runs: &[Run]) -> Run {
    let (clean, _) = report::clean(runs, |r| r.noisy);
    let m = |f: &dyn Fn(&Run) -> f64| median(clean.iter().map(|r| f(r)).collect());
    let parts = runs
        .first()
        .map(|r| {
            r.parts
                .iter()
                .enumerate()
                .map(|(i, (n, _))| (*n, m(&|r: &Run| r.parts.get(i).map_or(f64::NAN, |p| p.1))))
                .collect()
        })
        .unwrap_or_default();
    Run {
        ops: m(&|r| r.ops),
        p50: m(&|r| r.p50),
        p99: m(&|r| r.p99),
        cpu_us: m(&|r| r.cpu_us),
        sys_pct: m(&|r| r.sys_pct),
        parts,
        gen_us: m(&|r| r.gen_us),
        errors: runs.iter().map(|r| r.errors).sum(),
        misses: runs.iter().map(|r| r.misses).sum(),
        other_pct: m(&|r| r.other_pct),
        noisy: false,
        rows: runs.last().map_or(0, |r| r.rows),
    }
}

fn summary(names: &[&str], runs: &[Vec<Vec<Run>>]) {
    println!(
        "\n== summary: medians of clean rounds (runs with other processes > {NOISY_PCT}% of the \
         machine left out) =="
    );
    println!(
        "{:<14} {:<10} {:>9} {:>9} {:>9} {:>12}  {:<34} {:>8}",
        "operation", "target", "ops/s", "p50", "p99", "CPU µs/op", "split", "errors"
    );
    let mut sums: Vec<Vec<Run>> = Vec::new();
    for (oi, op) in OPS.iter().enumerate() {
        let mut row = Vec::new();
        for (ti, name) in names.iter().enumerate() {
            if runs[oi][ti].is_empty() {
                row.push(Run {
                    ops: f64::NAN,
                    ..Default::default()
                });
                continue;
            }
            let s = summarize(&runs[oi][ti]);
            let split = if s.parts.is_empty() {
                format!("sys {:.0}%", s.sys_pct)
            } else {
                s.parts
                    .iter()
                    .map(|(n, v)| format!("{n} {}", us(*v)))
                    .collect::<Vec<_>>()
                    .join(" + ")
            };
            println!(
                "{:<14} {:<10} {:>9} {:>9} {:>9} {:>12}  {:<34} {:>8}",
                op.name(),
                name,
                rate(s.ops),
                ms(s.p50),
                ms(s.p99),
                us(s.cpu_us),
                split,
                s.errors + s.misses
            );
            row.push(s);
        }
        sums.push(row);
    }
    let find = |oi: usize, name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .map(|ti| sums[oi][ti].clone())
    };
    println!("\n== against the targets ==");
    for (oi, op) in OPS.iter().enumerate() {
        let Some(m) = find(oi, "mar").filter(|m| !m.ops.is_nan()) else {
            continue;
        };
        let mut line = format!(
            "{:<14} mar {}/s, {}/op",
            op.name(),
            rate(m.ops),
            us(m.cpu_us)
        );
        if let Some(s) = find(oi, "sqlite").filter(|s| !s.ops.is_nan()) {
            let ratio = m.ops / s.ops;
            let target = match op {
                Op::Insert => Some(0.5),
                Op::Read => Some(0.7),
                Op::Query => None,
            };
            line.push_str(&format!(
                "; vs raw SQLite ({}/s, {}/op): {:.2}x its ops/s",
                rate(s.ops),
                us(s.cpu_us),
                ratio
            ));
            if let Some(t) = target {
                line.push_str(&format!(" (target ≥ {t:.2}) {}", verdict(ratio >= t)));
            }
            line.push_str(&format!(", {:.1}x its CPU per op", m.cpu_us / s.cpu_us));
        }
        if let Some(p) = find(oi, "parse").filter(|p| !p.ops.is_nan()) {
            let per_cpu = p.cpu_us / m.cpu_us;
            line.push_str(&format!(
                "; vs Parse ({}/s, {}/op): {:.2}x its ops/s, {:.2}x its ops per CPU second \
                 (target ≥ 3.00) {}",
                rate(p.ops),
                us(p.cpu_us),
                m.ops / p.ops,
                per_cpu,
                verdict(per_cpu >= 3.0)
            ));
        }
        if let Some(c) = find(oi, "nginx-fixed").filter(|c| !c.ops.is_nan()) {
            line.push_str(&format!(
                "; HTTP ceiling (nginx-fixed: {}/s, {}/op): mar reaches {:.2}x of it",
                rate(c.ops),
                us(c.cpu_us),
                m.ops / c.ops
            ));
            if let Some(s) = find(oi, "sqlite").filter(|s| !s.ops.is_nan()) {
                line.push_str(&format!(
                    ", and no HTTP answer here passed {:.2}x raw SQLite's ops/s",
                    c.ops / s.ops
                ));
            }
        }
        if let Some(e) = find(oi, "sqlite-eds").filter(|e| !e.ops.is_nan()) {
            line.push_str(&format!(
                "; vs raw SQLite with EDS's tables ({}/s, {}/op): {:.2}x its ops/s",
                rate(e.ops),
                us(e.cpu_us),
                m.ops / e.ops
            ));
        }
        let bad = m.errors + m.misses;
        if bad > 0 {
            line.push_str(&format!("; {bad} errors/misses"));
        }
        println!("{line}");
    }
    println!(
        "\nThe 2 cores are shared by the server under test, its database (Parse) and the load \
         generator (HTTP targets); the raw reference has neither HTTP nor a client. CPU/op is the \
         server's process tree from /proc (node + every PostgreSQL process for Parse)."
    );
}

// ---------------------------------------------------------------------------------------
// The raw SQLite reference.

/// The minimal shape: the objects as JSON text, their key indexed by expression.
const RAW_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS objects (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS objects_by_k ON objects(type, json_extract(doc, '$.k'));
";

/// EDS's shape: its own schema, so the reference follows the storage as it changes.
const EDS_SCHEMA: &str = mar_eds::sqlite::SCHEMA;

const RAW_TYPE: &str = "objects.items";

struct RawCfg {
    db: PathBuf,
    op: Op,
    conns: usize,
    start: Instant,
    end: Instant,
    tag: String,
    eds_shape: bool,
    cached: bool,
    sync: String,
}

fn raw_open(c: &RawCfg) -> Connection {
    let conn = Connection::open(&c.db).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {}; PRAGMA foreign_keys = ON; \
         PRAGMA busy_timeout = 5000;",
        c.sync
    ))
    .unwrap();
    conn
}

/// A 24-hex-digit id, as EDS's.
fn raw_id(rng: &mut Rng) -> String {
    format!("{:016x}{:08x}", rng.next_u64(), rng.next_u64() as u32)
}

/// The stored document: the client's object with the server's fields, as EDS stores it.
fn raw_doc(id: &str, k: &str, n: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let at = format!("{}.{:03}", now.as_secs(), now.subsec_millis());
    let client = object_json(k, n);
    format!(
        r#"{{"createdAt":"{at}","id":"{id}","objectType":"{RAW_TYPE}","updatedAt":"{at}",{}"#,
        &client[1..]
    )
}

fn raw_worker(args: &Args) {
    let op = match args.get("op", "insert".to_owned()).as_str() {
        "insert" => Op::Insert,
        "read" => Op::Read,
        "query" => Op::Query,
        other => {
            eprintln!("--op {other}: insert, read or query");
            std::process::exit(64);
        }
    };
    let db: String = args.get("db", String::new());
    let warmup = Duration::from_secs_f64(args.get("warmup", 2.0));
    let duration = Duration::from_secs_f64(args.get("duration", 8.0));
    let c = RawCfg {
        db: PathBuf::from(&db),
        op,
        conns: args.get("conns", 16),
        start: Instant::now(),
        end: Instant::now(),
        tag: args.get("tag", "r".to_owned()),
        eds_shape: args.get("shape", "minimal".to_owned()) == "eds",
        cached: args.flag("cached"),
        sync: args.get("sync", "FULL".to_owned()),
    };
    args.finish(USAGE);
    if db.is_empty() {
        eprintln!("--db FILE is needed\n\n{USAGE}");
        std::process::exit(64);
    }
    let setup = raw_open(&c);
    setup
        .execute_batch(if c.eds_shape { EDS_SCHEMA } else { RAW_SCHEMA })
        .unwrap();
    // The objects to read: every one stored so far (not measured).
    let pool: Arc<Vec<(String, String)>> = Arc::new(if op == Op::Insert {
        Vec::new()
    } else {
        let mut stmt = setup
            .prepare("SELECT id, json_extract(doc, '$.k') FROM objects")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<Vec<(String, String)>, _>>()
            .unwrap()
    });
    let rows: i64 = setup
        .query_row("SELECT count(*) FROM objects", [], |r| r.get(0))
        .unwrap();
    if op != Op::Insert && pool.is_empty() {
        eprintln!("no objects in {db}: run --op insert first");
        std::process::exit(1);
    }
    let start = Instant::now() + warmup;
    let c = Arc::new(RawCfg {
        start,
        end: start + duration,
        ..c
    });
    let writer = Arc::new(Mutex::new(setup));
    let handles: Vec<_> = (0..c.conns)
        .map(|t| {
            let (c, writer, pool) = (c.clone(), writer.clone(), pool.clone());
            std::thread::spawn(move || raw_thread(&c, t, &writer, &pool))
        })
        .collect();
    let me = std::process::id();
    sleep_until(c.start);
    let (cpu0, sys0) = (procfs::cpu_split(me).unwrap(), procfs::sys_cpu());
    sleep_until(c.end);
    let (cpu1, sys1) = (procfs::cpu_split(me).unwrap(), procfs::sys_cpu());
    let (mut ok, mut errors, mut misses, mut hist) = (0u64, 0u64, 0u64, Hist::new());
    for h in handles {
        let (o, e, m, hh) = h.join().unwrap();
        ok += o;
        errors += e;
        misses += m;
        hist.merge(&hh);
    }
    let t = procfs::TICKS_PER_SEC;
    let own = (cpu1.0 + cpu1.1).saturating_sub(cpu0.0 + cpu0.1) as f64;
    let busy = (sys1.busy + sys1.steal).saturating_sub(sys0.busy + sys0.steal) as f64;
    let total = sys1.total.saturating_sub(sys0.total).max(1) as f64;
    let result = json!({
        "ok": ok,
        "secs": duration.as_secs_f64(),
        "cpu_s": own / t,
        "sys_s": cpu1.1.saturating_sub(cpu0.1) as f64 / t,
        "p50": hist.quantile(0.5),
        "p99": hist.quantile(0.99),
        "errors": errors,
        "misses": misses,
        "other_pct": (100.0 * (busy - own) / total).max(0.0),
        "rows": rows,
    });
    println!("RESULT {result}");
}

/// One thread of the raw reference: (ok, errors, misses, latencies) in the window.
fn raw_thread(
    c: &RawCfg,
    t: usize,
    writer: &Mutex<Connection>,
    pool: &[(String, String)],
) -> (u64, u64, u64, Hist) {
    // Seeded by the clock too: every run must make ids no earlier run made.
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut rng = Rng::new(clock ^ ((t as u64) << 48) ^ pool.len() as u64);
    let (mut ok, mut errors, mut misses, mut hist) = (0, 0, 0, Hist::new());
    let reader = (c.op != Op::Insert).then(|| raw_open(c));
    let mut n = 0u64;
    loop {
        let sent = Instant::now();
        if sent >= c.end {
            break;
        }
        n += 1;
        let res: rusqlite::Result<bool> = match c.op {
            Op::Insert => {
                let id = raw_id(&mut rng);
                let k = format!("{}c{t}n{n}", c.tag);
                let doc = raw_doc(&id, &k, n);
                let mut w = writer.lock().unwrap();
                if c.eds_shape {
                    raw_insert_eds(&mut w, &id, &k, &doc, c.cached).map(|()| true)
                } else {
                    w.prepare_cached("INSERT INTO objects (id, type, doc) VALUES (?1, ?2, ?3)")
                        .and_then(|mut s| s.execute(params![id, RAW_TYPE, doc]))
                        .map(|_| true)
                }
            }
            Op::Read => {
                let (id, _) = &pool[rng.below(pool.len())];
                let r = reader.as_ref().unwrap();
                r.prepare_cached("SELECT doc FROM objects WHERE id = ?1")
                    .and_then(|mut s| s.query_row(params![id], |row| row.get::<_, String>(0)))
                    .map(|doc| !doc.is_empty())
            }
            Op::Query => {
                let (_, k) = &pool[rng.below(pool.len())];
                let r = reader.as_ref().unwrap();
                let sql = if c.eds_shape {
                    "SELECT o.doc FROM objects o WHERE o.seq IN (SELECT object FROM idx WHERE \
                     type = ?1 AND name = 'k' AND value = ?2)"
                } else {
                    "SELECT doc FROM objects WHERE type = ?1 AND json_extract(doc, '$.k') = ?2"
                };
                r.prepare_cached(sql)
                    .and_then(|mut s| {
                        s.query_map(params![RAW_TYPE, k], |row| row.get::<_, String>(0))?
                            .collect::<rusqlite::Result<Vec<String>>>()
                    })
                    .map(|docs| !docs.is_empty())
            }
        };
        let now = Instant::now();
        if now >= c.start && now < c.end {
            match res {
                Ok(true) => {
                    ok += 1;
                    hist.record((now - sent).as_micros() as u64);
                }
                Ok(false) => misses += 1,
                Err(_) => errors += 1,
            }
        }
    }
    (ok, errors, misses, hist)
}

/// An insert as EDS writes it: one transaction over objects, readers, idx, the full-text rows
/// and the change log (statements prepared each time, as EDS's `tx.execute`, unless `cached`).
fn raw_insert_eds(
    conn: &mut Connection,
    id: &str,
    k: &str,
    doc: &str,
    cached: bool,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    let exec = |sql: &str, p: &[&dyn rusqlite::ToSql]| -> rusqlite::Result<usize> {
        if cached {
            tx.prepare_cached(sql)?.execute(p)
        } else {
            tx.execute(sql, p)
        }
    };
    let acl = r#"{"admin":[{"id":"*","objectType":"aclSubject"}],"delete":[{"id":"*","objectType":"aclSubject"}],"read":[{"id":"*","objectType":"aclSubject"}],"update":[{"id":"*","objectType":"aclSubject"}]}"#;
    exec(
        "INSERT INTO objects (id, type, doc, acl) VALUES (?1, ?2, ?3, ?4)",
        params![id, RAW_TYPE, doc, acl],
    )?;
    let seq = tx.last_insert_rowid();
    exec("DELETE FROM readers WHERE object = ?1", params![seq])?;
    exec("DELETE FROM idx WHERE object = ?1", params![seq])?;
    exec(
        "DELETE FROM search WHERE rowid IN (SELECT rowid FROM search_docs WHERE object = ?1)",
        params![seq],
    )?;
    exec("DELETE FROM search_docs WHERE object = ?1", params![seq])?;
    exec(
        "INSERT OR IGNORE INTO readers (subject, object) VALUES (?1, ?2)",
        params!["*", seq],
    )?;
    exec(
        "INSERT OR IGNORE INTO idx (type, name, value, object) VALUES (?1, ?2, ?3, ?4)",
        params![RAW_TYPE, "k", k, seq],
    )?;
    exec(
        "INSERT INTO search_docs (object, type, prop) VALUES (?1, ?2, ?3)",
        params![seq, RAW_TYPE, "k"],
    )?;
    let rowid = tx.last_insert_rowid();
    exec(
        "INSERT INTO search (rowid, text) VALUES (?1, ?2)",
        params![rowid, format!("{k}\n")],
    )?;
    exec(
        "INSERT INTO changes (event, type, object, receivers, request_id, user_id, at) VALUES \
         (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            "create",
            RAW_TYPE,
            doc,
            r#"[{"id":"*","objectType":"aclSubject"}]"#,
            None::<String>,
            None::<String>,
            "2026-11-30T00:00:00.000Z"
        ],
    )?;
    tx.commit()
}
