//! EDS, the data store, end to end through real HTTP as Enginio's clients speak it: a backend
//! created with the CLI, objects with the clients' quirks (no Content-Type, trailing
//! slashes, `count` as a bare flag), the query language, atomic updates, bad input answered
//! with `errors` bodies, users and sessions, usergroups, the ACL matrix with several users, a
//! type's indexes and template, attaching to an app, and durability across `kill -9`.

use bytes::Bytes;
use mar_tests::{MarServer, http};
use serde_json::{Value, json};

struct Backend {
    id: String,
    master: String,
}

fn create(mar: &MarServer, name: &str) -> Backend {
    let v = mar.create_service("eds", name);
    assert_eq!(v["api_key"].as_str().unwrap().len(), 32, "{v}");
    Backend {
        id: v["id"].as_str().unwrap().to_owned(),
        master: v["secret"].as_str().unwrap().to_owned(),
    }
}

/// One call as the Node SDK makes it: no Content-Type, the backend id, a bearer if given.
async fn call(
    mar: &MarServer,
    b: &Backend,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("enginio-backend-id", b.id.as_str())];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    let r = mar_tests::json_call(mar.addr, method, path, &headers, body).await;
    let v = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    if r.status < 500 {
        assert!(
            r.headers
                .get("content-type")
                .is_some_and(|c| c.to_str().unwrap().contains("application/json")),
            "{path}: {:?}",
            r.headers
        );
    }
    (r.status, v)
}

fn q(v: Value) -> String {
    // As qtenginio sends it: raw JSON with a few characters escaped.
    v.to_string()
        .replace('{', "%7B")
        .replace('}', "%7D")
        .replace('"', "%22")
        .replace(' ', "%20")
}

fn ids(v: &Value) -> Vec<String> {
    v["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in {v}"))
        .iter()
        .map(|o| o["title"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// Signs a user up (password `pw`) and in: its id and session token.
async fn sign_up(mar: &MarServer, b: &Backend, name: &str) -> (String, String) {
    let (s, v) = call(
        mar,
        b,
        "POST",
        "/v1/users",
        None,
        json!({"username": name, "password": "pw"}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, session) = login(mar, b, name, "pw").await;
    assert_eq!(s, 200, "{session}");
    (
        session["enginio_data"]["user"]["id"]
            .as_str()
            .unwrap()
            .to_owned(),
        session["access_token"].as_str().unwrap().to_owned(),
    )
}

async fn login(mar: &MarServer, b: &Backend, user: &str, password: &str) -> (u16, Value) {
    let body = format!("grant_type=password&username={user}&password={password}");
    let r = http(
        mar.addr,
        "POST",
        "localhost",
        "/v1/auth/oauth2/token",
        &[
            ("enginio-backend-id", b.id.as_str()),
            ("content-type", "application/x-www-form-urlencoded"),
            // A stale bearer from the previous user is ignored.
            ("authorization", "Bearer stale"),
        ],
        Bytes::from(body),
    )
    .await;
    (
        r.status,
        serde_json::from_str(&r.body).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn objects_and_queries_as_enginio_clients_send_them_and_bad_input_refused() {
    let mut mar = MarServer::start();
    let b = create(&mar, "todo");
    let m = Some(b.master.as_str());

    // Create: 201 with the server's fields; the client's read-only fields are ignored.
    let (s, first) = call(
        &mar,
        &b,
        "POST",
        "/v1/objects/todos/",
        m,
        json!({"title": "b-write", "done": false, "n": 2, "tags": ["home"], "id": "forged", "createdAt": "1999"}),
    )
    .await;
    assert_eq!(s, 201, "{first}");
    let id = first["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 24);
    assert_eq!(first["objectType"], "objects.todos");
    assert!(first["createdAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(first["createdAt"], first["updatedAt"]);
    for (title, done, n, tags) in [
        ("a-read", true, 1, json!(["work"])),
        ("c-test", true, 3, json!(["work", "home"])),
        ("d-ship", false, 4, json!([])),
    ] {
        let (s, v) = call(
            &mar,
            &b,
            "POST",
            "/v1/objects/todos",
            None,
            json!({"title": title, "done": done, "n": n, "tags": tags,
                   "list": {"$type": "ref", "$value": {"id": "0123456789abcdef01234567", "objectType": "objects.lists"}}}),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        // The Node SDK's ref encoding is stored as the plain ref.
        assert_eq!(v["list"]["objectType"], "objects.lists");
    }

    // Queries.
    let list = |query: String| {
        let (mar, b) = (&mar, &b);
        async move {
            let (s, v) = call(
                mar,
                b,
                "GET",
                &format!("/v1/objects/todos/?{query}"),
                None,
                Value::Null,
            )
            .await;
            assert_eq!(s, 200, "{query}: {v}");
            v
        }
    };
    let v = list(format!("q={}", q(json!({"done": true})))).await;
    assert_eq!(ids(&v), ["a-read", "c-test"]);
    assert_eq!(v["query"]["query"], json!({"done": true}));
    assert_eq!(v["query"]["limit"], 100);
    let sort = q(json!([{"sortBy": "title", "direction": "desc"}]));
    let v = list(format!("sort={sort}&limit=2&offset=1")).await;
    assert_eq!(ids(&v), ["c-test", "b-write"]);
    let v = list(format!("q={}&count=", q(json!({"tags": "home"})))).await;
    assert_eq!(v, json!({"count": 2}));
    let v = list(format!(
        "q={}&count=1",
        q(json!({"n": {"$gte": 2, "$lt": 4}}))
    ))
    .await;
    assert_eq!(v, json!({"count": 2}));
    let v = list(format!(
        "q={}",
        q(json!({"$or": [{"title": {"$regex": "^A", "$options": "i"}}, {"tags": {"$size": 0}}]}))
    ))
    .await;
    assert_eq!(ids(&v), ["a-read", "d-ship"]);
    let v = list(format!(
        "q={}",
        q(json!({"list": {"id": "0123456789abcdef01234567", "objectType": "objects.lists"}}))
    ))
    .await;
    assert_eq!(ids(&v).len(), 3);
    let v = list(format!("q={}", q(json!({"id": id})))).await;
    assert_eq!(ids(&v), ["b-write"]);
    // A type nobody created: empty, not an error.
    let (s, v) = call(&mar, &b, "GET", "/v1/objects/never", None, Value::Null).await;
    assert_eq!((s, v["results"].clone()), (200, json!([])));

    // Read, merge, atomic, delete.
    let (s, v) = call(
        &mar,
        &b,
        "GET",
        &format!("/v1/objects/todos/{id}"),
        None,
        Value::Null,
    )
    .await;
    assert_eq!((s, v["title"].clone()), (200, json!("b-write")));
    let (s, v) = call(
        &mar,
        &b,
        "PUT",
        &format!("/v1/objects/todos/{id}"),
        None,
        json!({"done": true, "id": id, "objectType": "objects.todos", "createdAt": first["createdAt"]}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["done"].clone(), v["title"].clone()),
        (json!(true), json!("b-write"))
    );
    assert_eq!(v["createdAt"], first["createdAt"]);
    let (s, v) = call(
        &mar,
        &b,
        "PUT",
        &format!("/v1/objects/todos/{id}/atomic"),
        None,
        json!({"$push": {"tags": "urgent"}, "$inc": {"n": 5}, "$unset": {"done": ""}}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["tags"], json!(["home", "urgent"]));
    assert_eq!(v["n"], 7);
    assert!(v.get("done").is_none(), "{v}");
    let (s, v) = call(
        &mar,
        &b,
        "PUT",
        &format!("/v1/objects/todos/{id}/atomic"),
        None,
        json!({"$pull": {"tags": "home"}}),
    )
    .await;
    assert_eq!((s, v["tags"].clone()), (200, json!(["urgent"])));

    // Bad input: each a clear `errors` body, nothing lost.
    for (method, path, body, status, says) in [
        (
            "POST",
            "/v1/objects/todos",
            Value::String("{not json".into()),
            400,
            "not valid JSON",
        ),
        (
            "GET",
            &format!("/v1/objects/todos?q={}", q(json!({"$where": "1"}))),
            Value::Null,
            400,
            "unknown operator",
        ),
        (
            "GET",
            "/v1/objects/todos?q=%7Bbad",
            Value::Null,
            400,
            "not valid JSON",
        ),
        (
            "GET",
            &format!(
                "/v1/objects/todos?sort={}",
                q(json!([{"sortBy": "x", "direction": "sideways"}]))
            ),
            Value::Null,
            400,
            "asc or desc",
        ),
        (
            "GET",
            &format!(
                "/v1/objects/todos?q={}",
                q(json!({"a\"); DROP TABLE objects; --": 1}))
            ),
            Value::Null,
            400,
            "quote",
        ),
        (
            "POST",
            "/v1/objects/todos",
            json!({"$set": 1}),
            400,
            "not a valid property name",
        ),
        (
            "POST",
            "/v1/objects/..%2F..%2Fetc",
            json!({}),
            400,
            "not an object type",
        ),
        (
            "PUT",
            &format!("/v1/objects/todos/{id}/atomic"),
            json!({"$rename": {"a": "b"}}),
            400,
            "unknown atomic operator",
        ),
        (
            "GET",
            "/v1/objects/todos/0123456789abcdef01234567",
            Value::Null,
            404,
            "no objects.todos object",
        ),
        (
            "GET",
            "/v1/objects/todos/not-an-id",
            Value::Null,
            404,
            "no objects.todos object",
        ),
    ] {
        let r = if let Value::String(raw) = &body {
            let r = http(
                mar.addr,
                method,
                "localhost",
                path,
                &[("enginio-backend-id", b.id.as_str())],
                Bytes::from(raw.clone()),
            )
            .await;
            (
                r.status,
                serde_json::from_str(&r.body).unwrap_or(Value::Null),
            )
        } else {
            call(&mar, &b, method, path, None, body.clone()).await
        };
        assert_eq!(r.0, status, "{method} {path}: {}", r.1);
        let msg = r.1["errors"][0]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path}: {}", r.1));
        assert!(msg.contains(says), "{method} {path}: {msg}");
        assert!(!r.1["errors"][0]["reason"].as_str().unwrap().is_empty());
    }
    // Past the parser's bound (a URL cannot carry 100,000; the unit tests try those).
    let huge: Vec<u32> = (0..5_000).collect();
    let (s, v) = call(
        &mar,
        &b,
        "GET",
        &format!("/v1/objects/todos?q={}", q(json!({"n": {"$in": huge}}))),
        None,
        Value::Null,
    )
    .await;
    assert_eq!(s, 400, "{v}");
    // Over the body limit: refused from its Content-Length, before the body is read (so the
    // client may not get to send it: read the answer without writing the body).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(mar.addr).await.unwrap();
        let head = format!(
            "POST /v1/objects/todos HTTP/1.1\r\nHost: localhost\r\nEnginio-Backend-Id: {}\r\nContent-Length: {}\r\n\r\n",
            b.id,
            2 << 20
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 1024];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("TooLarge"), "{answer}");
    }
    let r = http(
        mar.addr,
        "GET",
        "localhost",
        "/v1/objects/todos",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let wrong = Backend {
        id: "0123456789abcdef01234567".into(),
        master: String::new(),
    };
    assert_eq!(
        call(&mar, &wrong, "GET", "/v1/objects/todos", None, Value::Null)
            .await
            .0,
        404
    );
    let (s, v) = call(
        &mar,
        &b,
        "GET",
        "/v1/objects/todos",
        Some("wrong-token"),
        Value::Null,
    )
    .await;
    assert_eq!(s, 401, "{v}");
    let v = list("count=".to_owned()).await;
    assert_eq!(v, json!({"count": 4}), "nothing was lost to the bad calls");

    let (s, v) = call(
        &mar,
        &b,
        "DELETE",
        &format!("/v1/objects/todos/{id}"),
        None,
        Value::Null,
    )
    .await;
    assert_eq!((s, v), (200, json!({})));
    let (s, v) = call(
        &mar,
        &b,
        "GET",
        &format!("/v1/objects/todos/{id}"),
        None,
        Value::Null,
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(v["errors"][0]["reason"], "NotFound");

    // An acknowledged write survives kill -9.
    let (s, _) = call(
        &mar,
        &b,
        "POST",
        "/v1/objects/todos",
        None,
        json!({"title": "e-durable"}),
    )
    .await;
    assert_eq!(s, 201);
    mar = tokio::task::spawn_blocking(move || mar.kill9_and_restart())
        .await
        .unwrap();
    let (s, v) = call(
        &mar,
        &b,
        "GET",
        &format!("/v1/objects/todos?q={}", q(json!({"title": "e-durable"}))),
        None,
        Value::Null,
    )
    .await;
    assert_eq!((s, ids(&v)), (200, vec!["e-durable".to_owned()]));
}

#[tokio::test]
async fn users_sessions_groups_and_the_acl_matrix() {
    let mar = MarServer::start();
    let b = create(&mar, "people");
    let m = Some(b.master.as_str());

    // Sign-up: the password is never returned; Enginio's exact validation bodies.
    let mut users = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let (s, v) = call(&mar, &b, "POST", "/v1/users/", None, json!({"username": name, "password": format!("{name}-pw"), "email": format!("{name}@example.test")})).await;
        assert_eq!(s, 201, "{v}");
        assert!(v.get("password").is_none(), "{v}");
        assert_eq!(v["objectType"], "users");
        users.push(v["id"].as_str().unwrap().to_owned());
    }
    let (s, v) = call(
        &mar,
        &b,
        "POST",
        "/v1/users",
        None,
        json!({"username": "alice", "password": "x"}),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(
        v,
        json!({"errors": [{"message": "has already been taken", "property": "username", "reason": "ValidationFailed"}]})
    );
    let (s, v) = call(
        &mar,
        &b,
        "POST",
        "/v1/users",
        None,
        json!({"username": "dave"}),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(
        v,
        json!({"errors": [{"message": "can't be blank", "property": "password", "reason": "ValidationFailed"}]})
    );

    // Sessions.
    let (s, v) = login(&mar, &b, "alice", "wrong").await;
    assert_eq!((s, v["error"].clone()), (400, json!("invalid_grant")));
    let (s, v) = login(&mar, &b, "nobody", "x").await;
    assert_eq!((s, v["error"].clone()), (400, json!("invalid_grant")));
    let mut tokens = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let (s, v) = login(&mar, &b, name, &format!("{name}-pw")).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["token_type"], "bearer");
        assert!(v["expires_in"].as_i64().unwrap() > 3600);
        assert_eq!(v["enginio_data"]["user"]["username"], name);
        tokens.push(v["access_token"].as_str().unwrap().to_owned());
    }
    let (alice, bob, carol) = (
        Some(tokens[0].as_str()),
        Some(tokens[1].as_str()),
        Some(tokens[2].as_str()),
    );
    let (s, v) = call(&mar, &b, "GET", "/v1/user", alice, Value::Null).await;
    assert_eq!((s, v["id"].clone()), (200, json!(users[0])));
    assert_eq!(
        call(&mar, &b, "GET", "/v1/user", None, Value::Null).await.0,
        401
    );

    // Alice's object is hers alone by default; anonymous and Bob do not see it, and counts
    // agree with the lists.
    let (s, secret) = call(
        &mar,
        &b,
        "POST",
        "/v1/objects/notes",
        alice,
        json!({"title": "alice's"}),
    )
    .await;
    assert_eq!(s, 201);
    assert_eq!(
        secret["creator"],
        json!({"id": users[0], "objectType": "users"})
    );
    let note = secret["id"].as_str().unwrap().to_owned();
    let (_, public) = call(
        &mar,
        &b,
        "POST",
        "/v1/objects/notes",
        None,
        json!({"title": "everyone's"}),
    )
    .await;
    for (who, expect) in [
        (None, vec!["everyone's"]),
        (bob, vec!["everyone's"]),
        (alice, vec!["alice's", "everyone's"]),
        (m, vec!["alice's", "everyone's"]),
    ] {
        let (_, v) = call(&mar, &b, "GET", "/v1/objects/notes", who, Value::Null).await;
        assert_eq!(ids(&v), expect);
        let (_, c) = call(
            &mar,
            &b,
            "GET",
            "/v1/objects/notes?count=",
            who,
            Value::Null,
        )
        .await;
        assert_eq!(c["count"], expect.len());
    }
    assert_eq!(
        call(
            &mar,
            &b,
            "GET",
            &format!("/v1/objects/notes/{note}"),
            bob,
            Value::Null
        )
        .await
        .0,
        404
    );
    assert_eq!(
        call(
            &mar,
            &b,
            "PUT",
            &format!("/v1/objects/notes/{note}"),
            bob,
            json!({"title": "mine"})
        )
        .await
        .0,
        404
    );

    // A group with Bob in it gets read; Bob still may not update; Carol, outside, sees nothing.
    let (s, v) = call(
        &mar,
        &b,
        "POST",
        "/v1/usergroups",
        alice,
        json!({"name": "friends"}),
    )
    .await;
    assert_eq!(s, 403, "only the master key creates groups by default: {v}");
    let (s, group) = call(
        &mar,
        &b,
        "POST",
        "/v1/usergroups",
        m,
        json!({"name": "friends"}),
    )
    .await;
    assert_eq!(s, 201, "{group}");
    let gid = group["id"].as_str().unwrap().to_owned();
    let (s, v) = call(
        &mar,
        &b,
        "POST",
        &format!("/v1/usergroups/{gid}/members"),
        m,
        json!({"id": users[1], "objectType": "users"}),
    )
    .await;
    assert_eq!((s, v["id"].clone()), (200, json!(users[1])));
    let (_, v) = call(
        &mar,
        &b,
        "GET",
        &format!("/v1/usergroups/{gid}/members"),
        m,
        Value::Null,
    )
    .await;
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
    let grant = json!({"read": [{"id": gid, "objectType": "usergroups"}]});
    let (s, v) = call(
        &mar,
        &b,
        "PUT",
        &format!("/v1/objects/notes/{note}/access"),
        bob,
        grant.clone(),
    )
    .await;
    assert_eq!(s, 404, "Bob cannot even see it yet: {v}");
    let (s, acl) = call(
        &mar,
        &b,
        "PUT",
        &format!("/v1/objects/notes/{note}/access"),
        alice,
        grant.clone(),
    )
    .await;
    assert_eq!(s, 200, "{acl}");
    assert_eq!(acl["read"].as_array().unwrap().len(), 2);
    assert_eq!(
        acl["admin"],
        json!([{"id": users[0], "objectType": "users"}])
    );
    let (s, v) = call(
        &mar,
        &b,
        "GET",
        &format!("/v1/objects/notes/{note}"),
        bob,
        Value::Null,
    )
    .await;
    assert_eq!((s, v["title"].clone()), (200, json!("alice's")));
    let (s, v) = call(
        &mar,
        &b,
        "PUT",
        &format!("/v1/objects/notes/{note}"),
        bob,
        json!({"title": "bob's now"}),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["errors"][0]["reason"], "AccessDenied");
    assert_eq!(
        call(
            &mar,
            &b,
            "GET",
            &format!("/v1/objects/notes/{note}/access"),
            bob,
            Value::Null
        )
        .await
        .0,
        403
    );
    let (_, v) = call(&mar, &b, "GET", "/v1/objects/notes", carol, Value::Null).await;
    assert_eq!(ids(&v), ["everyone's"]);
    // Revoked: Bob is back to the public object only.
    let (s, _) = call(
        &mar,
        &b,
        "DELETE",
        &format!("/v1/objects/notes/{note}/access"),
        alice,
        grant,
    )
    .await;
    assert_eq!(s, 200);
    let (_, v) = call(&mar, &b, "GET", "/v1/objects/notes", bob, Value::Null).await;
    assert_eq!(ids(&v), ["everyone's"]);
    // The public object: anyone may change it; Bob's change names him as updater.
    let pid = public["id"].as_str().unwrap();
    let (s, v) = call(
        &mar,
        &b,
        "PUT",
        &format!("/v1/objects/notes/{pid}"),
        bob,
        json!({"seen": true}),
    )
    .await;
    assert_eq!((s, v["updater"]["id"].clone()), (200, json!(users[1])));
    // include: the creator ref becomes the user.
    let (_, v) = call(
        &mar,
        &b,
        "GET",
        &format!(
            "/v1/objects/notes/{note}?include={}",
            q(json!({"creator": {}}))
        ),
        alice,
        Value::Null,
    )
    .await;
    assert_eq!(v["creator"]["username"], "alice");

    // A declared type: an indexed property, a required one, and a template making new
    // objects readable by everyone but administered by their creator.
    let (s, v) = call(
        &mar,
        &b,
        "POST",
        "/v1/object_types",
        alice,
        json!({"name": "posts"}),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = call(&mar, &b, "POST", "/v1/object_types", m, json!({
        "name": "posts",
        "properties": [{"name": "title", "type": "string", "indexed": true, "validators": [{"type": "required"}]}],
        "accessControlListTemplate": {"read": [{"id": "*", "objectType": "aclSubject"}], "admin": [{"id": "creator", "objectType": "aclSubject"}]},
    })).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(
        &mar,
        &b,
        "POST",
        "/v1/objects/posts",
        alice,
        json!({"body": "untitled"}),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(v["errors"][0]["property"], "title");
    let (s, post) = call(
        &mar,
        &b,
        "POST",
        "/v1/objects/posts",
        alice,
        json!({"title": "hello"}),
    )
    .await;
    assert_eq!(s, 201, "{post}");
    let (_, v) = call(
        &mar,
        &b,
        "GET",
        &format!("/v1/objects/posts?q={}", q(json!({"title": "hello"}))),
        carol,
        Value::Null,
    )
    .await;
    assert_eq!(ids(&v), ["hello"]);
    let post_id = post["id"].as_str().unwrap();
    assert_eq!(
        call(
            &mar,
            &b,
            "DELETE",
            &format!("/v1/objects/posts/{post_id}"),
            carol,
            Value::Null
        )
        .await
        .0,
        403
    );
    assert_eq!(
        call(
            &mar,
            &b,
            "DELETE",
            &format!("/v1/objects/posts/{post_id}"),
            alice,
            Value::Null
        )
        .await
        .0,
        200
    );

    // A user changes its own password; its old sessions end; others may not change it.
    let me = format!("/v1/users/{}", users[2]);
    assert_eq!(
        call(&mar, &b, "PUT", &me, bob, json!({"password": "hijacked"}))
            .await
            .0,
        403
    );
    let (s, v) = call(
        &mar,
        &b,
        "PUT",
        &me,
        carol,
        json!({"password": "carol-new"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        call(&mar, &b, "GET", "/v1/user", carol, Value::Null)
            .await
            .0,
        401
    );
    assert_eq!(login(&mar, &b, "carol", "carol-pw").await.0, 400);
    assert_eq!(login(&mar, &b, "carol", "carol-new").await.0, 200);

    // Revoke ends a session.
    let r = http(
        mar.addr,
        "POST",
        "localhost",
        "/v1/auth/oauth2/revoke",
        &[("enginio-backend-id", b.id.as_str())],
        Bytes::from(format!("token={}", tokens[0])),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        call(&mar, &b, "GET", "/v1/user", alice, Value::Null)
            .await
            .0,
        401
    );
    // Member removal without naming the member is refused (qtenginio sends no body).
    let (s, v) = call(
        &mar,
        &b,
        "DELETE",
        &format!("/v1/usergroups/{gid}/members"),
        m,
        Value::Null,
    )
    .await;
    assert_eq!(s, 400, "{v}");
}

/// Attached to an app, a backend's address, id and master key are in its environment; a
/// destroyed backend takes its data file with it.
#[tokio::test]
async fn an_attached_backend_gives_the_app_its_variables_and_destroying_it_deletes_its_data() {
    let mar = MarServer::start();
    mar.deploy_lifecycle("store", &[]);
    let b = create(&mar, "shop");
    let out = mar.mar(&["services:attach", "shop", "-a", "store"]);
    assert!(out.ok(), "{}", out.all());
    assert_eq!(
        mar.get("store.localhost", "/env/EDS_BACKEND_ID")
            .await
            .body
            .trim(),
        b.id
    );
    assert_eq!(
        mar.get("store.localhost", "/env/EDS_SECRET")
            .await
            .body
            .trim(),
        b.master
    );
    assert_eq!(
        mar.get("store.localhost", "/env/EDS_ADDRESS")
            .await
            .body
            .trim(),
        format!("http://localhost:{}", mar.addr.port())
    );
    let info = mar.mar(&["services:info", "shop"]);
    assert!(
        info.stdout.contains("Master key:") && info.stdout.contains("API key:"),
        "{}",
        info.stdout
    );
    let file = mar.data_dir.join("eds").join(format!("{}.db", b.id));
    assert!(file.exists());
    // The attached app itself cannot read the backend's file (or its files' directory): its
    // data goes through the API, with its permissions.
    for target in [
        file.clone(),
        mar.data_dir.join("eds").join(format!("{}.files", b.id)),
    ] {
        let r = mar
            .get(
                "store.localhost",
                &format!("/read?path={}", target.display()),
            )
            .await;
        assert_eq!(
            r.status,
            403,
            "the app read {}: {}",
            target.display(),
            r.body
        );
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(mar.data_dir.join("eds"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    assert!(mar.mar(&["services:detach", "shop", "-a", "store"]).ok());
    let out = mar.mar(&["services:destroy", "shop", "--confirm", "shop"]);
    assert!(out.ok(), "{}", out.all());
    assert!(!file.exists(), "the data went with the backend");
    assert_eq!(
        call(&mar, &b, "GET", "/v1/objects/x", None, Value::Null)
            .await
            .0,
        404
    );
}

/// The talk's flow with no user code: a backend linked to a gateway pushes each change to
/// the sockets tagged with the object's readers (everyone's sockets for a public object, the
/// owner's for a private one). And a webhook to an app gets every change at least once, in
/// order, even when its receiver was down and `mar serve` was killed with changes pending.
#[tokio::test]
async fn changes_reach_a_linked_gateway_and_a_webhook_at_least_once_across_kill_9() {
    let mut mar = MarServer::start();
    mar.deploy_lifecycle("hooks", &[]);
    let b = create(&mar, "data");
    let m = Some(b.master.as_str());
    let g = mar.create_service("mws", "push");
    let (gid, gsecret) = (
        g["id"].as_str().unwrap().to_owned(),
        g["secret"].as_str().unwrap().to_owned(),
    );
    let out = mar.mar(&["services:link", "data", "push"]);
    assert!(out.ok(), "{}", out.all());
    let again = mar.mar(&["services:link", "data", "push"]);
    assert!(
        !again.ok() && again.all().contains("already linked"),
        "{}",
        again.all()
    );
    let wrong = mar.mar(&["services:link", "push", "data"]);
    assert!(
        !wrong.ok() && wrong.all().contains("link an EDS backend"),
        "{}",
        wrong.all()
    );

    // Alice, and one socket for her, one for everyone.
    let (alice_id, token) = sign_up(&mar, &b, "alice").await;
    let reserve = |tags: Value| {
        let (mar, gid, gsecret) = (&mar, gid.clone(), gsecret.clone());
        async move {
            let auth = format!("Bearer {gsecret}");
            let r = http(
                mar.addr,
                "POST",
                "localhost",
                &format!("/v1/gateways/{gid}/sockets"),
                &[("authorization", auth.as_str())],
                Bytes::from(json!({"tags": tags}).to_string()),
            )
            .await;
            let v: Value = serde_json::from_str(&r.body).unwrap();
            let uri = v["uri"].as_str().unwrap();
            let path = &uri[uri.find("/v1/").unwrap()..];
            mar_tests::ws_connect(mar.addr, "localhost", path).await
        }
    };
    let mut hers = reserve(json!([format!("users.{alice_id}")])).await;
    let mut everyone = reserve(json!([])).await;

    let (s, _) = call(
        &mar,
        &b,
        "POST",
        "/v1/objects/todos",
        Some(&token),
        json!({"title": "private"}),
    )
    .await;
    assert_eq!(s, 201);
    let v = next(&mut hers).await;
    assert_eq!(v["object"]["title"], "private");
    assert_eq!(v["meta"]["eventName"], "create");
    assert_eq!(v["meta"]["backendId"], b.id.as_str());
    assert_eq!(v["meta"]["userId"], alice_id.as_str());
    let (s, public) = call(
        &mar,
        &b,
        "POST",
        "/v1/objects/todos",
        None,
        json!({"title": "public"}),
    )
    .await;
    assert_eq!(s, 201);
    // The public one is the first thing the everyone-socket hears: the private one never came.
    assert_eq!(next(&mut everyone).await["object"]["title"], "public");
    assert_eq!(next(&mut hers).await["object"]["title"], "public");
    let pid = public["id"].as_str().unwrap();
    call(
        &mar,
        &b,
        "DELETE",
        &format!("/v1/objects/todos/{pid}"),
        None,
        Value::Null,
    )
    .await;
    let v = next(&mut everyone).await;
    assert_eq!(
        (v["meta"]["eventName"].clone(), v["object"]["id"].clone()),
        (json!("delete"), json!(pid))
    );

    // Webhooks: refused targets, then one to the app, with a header for its receiver.
    for (url, says) in [
        ("http://127.0.0.1:9/x", "may not reach"),
        ("http://169.254.169.254/latest", "may not reach"),
        ("https://hooks.example.test/", "not delivered yet"),
        ("ftp://x/", "http://"),
    ] {
        let (s, v) = call(&mar, &b, "POST", "/v1/webhooks", m, json!({"url": url})).await;
        assert_eq!(s, 400, "{url}: {v}");
        assert!(
            v["errors"][0]["message"].as_str().unwrap().contains(says),
            "{url}: {v}"
        );
    }
    assert_eq!(
        call(
            &mar,
            &b,
            "POST",
            "/v1/webhooks",
            Some(&token),
            json!({"url": "http://hooks.localhost/inbox"})
        )
        .await
        .0,
        403
    );
    let (s, hook) = call(&mar, &b, "POST", "/v1/webhooks", m, json!({"url": "http://hooks.localhost/inbox", "objectTypes": ["todos"], "headers": {"Authorization": "Bearer hook-secret"}})).await;
    assert_eq!(s, 201, "{hook}");
    assert_eq!(
        hook["headers"],
        json!(["authorization"]),
        "values stay hidden"
    );
    let r = http(
        mar.addr,
        "POST",
        "localhost",
        "/v1/objects/todos",
        &[
            ("enginio-backend-id", b.id.as_str()),
            ("x-request-id", "0123456789abcdef0123456789abcdef"),
        ],
        Bytes::from(json!({"title": "hooked"}).to_string()),
    )
    .await;
    assert_eq!(r.status, 201);
    call(
        &mar,
        &b,
        "POST",
        "/v1/objects/other",
        None,
        json!({"title": "not wanted"}),
    )
    .await;
    let kept = inbox_until(&mar, 1).await;
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0]["auth"], "Bearer hook-secret");
    let body: Value = serde_json::from_str(kept[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["payload"]["object"]["title"], "hooked");
    assert_eq!(
        body["payload"]["meta"]["requestId"],
        "0123456789abcdef0123456789abcdef"
    );
    assert_eq!(
        body["receivers"],
        json!([{"id": "*", "objectType": "aclSubject"}])
    );

    // The receiver goes down; three changes wait in the outbox; mar serve is killed.
    assert!(mar.mar(&["ps:scale", "web=0", "-a", "hooks"]).ok());
    for t in ["w1", "w2", "w3"] {
        assert_eq!(
            call(
                &mar,
                &b,
                "POST",
                "/v1/objects/todos",
                None,
                json!({"title": t})
            )
            .await
            .0,
            201
        );
    }
    mar = tokio::task::spawn_blocking(move || mar.kill9_and_restart())
        .await
        .unwrap();
    assert!(mar.mar(&["ps:scale", "web=1", "-a", "hooks"]).ok());
    let kept = inbox_until(&mar, 3).await;
    let titles: Vec<String> = kept
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(e["body"].as_str().unwrap()).unwrap()["payload"]["object"]
                ["title"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(titles, ["w1", "w2", "w3"], "all of them, in order");
}

/// What the lifecycle fixture's `/inbox` kept, once it holds at least `n` entries (30 s).
async fn inbox_until(mar: &MarServer, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = mar.get("hooks.localhost", "/inbox").await;
        let kept: Vec<Value> = if r.status == 200 {
            r.body
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        } else {
            Vec::new()
        };
        if kept.len() >= n || std::time::Instant::now() > deadline {
            return kept;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The next message on a socket, as JSON.
async fn next(ws: &mut mar_tests::Ws) -> Value {
    serde_json::from_str(&mar_tests::next_text(ws).await).unwrap()
}

/// MWS's `eds` access mode: a backend's signed-in users get socket URIs tagged with their
/// ids and groups, by their EDS token alone; with the backend linked, a user's private change
/// reaches that user's socket with no server code at all. Tokens that are missing or unknown
/// get 401; a user's token may not publish (403).
#[tokio::test]
async fn a_gateway_in_eds_mode_tags_sockets_with_the_signed_in_user() {
    let mar = MarServer::start();
    let b = create(&mar, "auth");
    let m = Some(b.master.as_str());
    let g = mar.create_service("mws", "rt");
    let (gid, gsecret) = (g["id"].as_str().unwrap(), g["secret"].as_str().unwrap());
    let gw = |method: &'static str, path: String, bearer: Option<String>, body: Value| {
        let mar = &mar;
        async move {
            let auth = bearer.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("authorization", a.as_str())).collect();
            let body = if body.is_null() {
                Bytes::new()
            } else {
                Bytes::from(body.to_string())
            };
            let r = http(mar.addr, method, "localhost", &path, &headers, body).await;
            (
                r.status,
                serde_json::from_str::<Value>(&r.body).unwrap_or(Value::Null),
            )
        }
    };
    let config = format!("/v1/gateways/{gid}/configuration");
    let (s, v) = gw(
        "PUT",
        config.clone(),
        Some(gsecret.to_owned()),
        json!({"identityProvider": {"type": "eds", "backendId": "0123456789abcdef01234567"}}),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    let (s, v) = gw(
        "PUT",
        config.clone(),
        Some(gsecret.to_owned()),
        json!({"identityProvider": {"type": "eds", "backendId": b.id}}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["identityProvider"],
        json!({"type": "eds", "backendId": b.id})
    );
    assert!(mar.mar(&["services:link", "auth", "rt"]).ok());

    let (ann, token) = sign_up(&mar, &b, "ann").await;
    let (_, group) = call(
        &mar,
        &b,
        "POST",
        "/v1/usergroups",
        m,
        json!({"name": "team"}),
    )
    .await;
    let team = group["id"].as_str().unwrap().to_owned();
    call(
        &mar,
        &b,
        "POST",
        &format!("/v1/usergroups/{team}/members"),
        m,
        json!({"id": ann, "objectType": "users"}),
    )
    .await;

    let uri = format!("/v1/gateways/{gid}/websocket_uri");
    assert_eq!(gw("GET", uri.clone(), None, Value::Null).await.0, 401);
    assert_eq!(
        gw("GET", uri.clone(), Some("not-a-token".into()), Value::Null)
            .await
            .0,
        401
    );
    let (s, v) = gw("GET", uri.clone(), Some(token.clone()), Value::Null).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["tags"],
        json!([format!("users.{ann}"), format!("usergroups.{team}")])
    );
    let u = v["uri"].as_str().unwrap();
    let mut ws = mar_tests::ws_connect(mar.addr, "localhost", &u[u.find("/v1/").unwrap()..]).await;
    let (s, v) = gw(
        "POST",
        format!("/v1/gateways/{gid}/messages"),
        Some(token.clone()),
        json!({"data": "x", "receivers": {"sockets": ["*"]}}),
    )
    .await;
    assert_eq!(s, 403, "{v}");

    // Ann's private object reaches her socket through the link.
    let (s, _) = call(
        &mar,
        &b,
        "POST",
        "/v1/objects/todos",
        Some(&token),
        json!({"title": "mine"}),
    )
    .await;
    assert_eq!(s, 201);
    let v = next(&mut ws).await;
    assert_eq!(v["object"]["title"], "mine");
    // A public object reaches every socket; then its ACL is narrowed to Ann's group, and that
    // change reaches her through the group's tag alone (`*` is no longer among its readers).
    let (_, shared) = call(
        &mar,
        &b,
        "POST",
        "/v1/objects/todos",
        m,
        json!({"title": "team's"}),
    )
    .await;
    let v = next(&mut ws).await;
    assert_eq!(
        (v["object"]["title"].clone(), v["meta"]["eventName"].clone()),
        (json!("team's"), json!("create"))
    );
    let sid = shared["id"].as_str().unwrap();
    let (s, acl) = call(
        &mar,
        &b,
        "POST",
        &format!("/v1/objects/todos/{sid}/access"),
        m,
        json!({"read": [{"id": team, "objectType": "usergroups"}]}),
    )
    .await;
    assert_eq!(
        (s, acl["read"].as_array().unwrap().len()),
        (200, 1),
        "{acl}"
    );
    let v = next(&mut ws).await;
    assert_eq!(
        (v["object"]["id"].clone(), v["meta"]["eventName"].clone()),
        (json!(sid), json!("update"))
    );
}

fn multipart(object: &Value, name: &str, bytes: &[u8]) -> (String, Bytes) {
    let boundary = "----mar-test-boundary";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"object\"\r\n\r\n{object}\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: image/png\r\n\r\n").as_bytes());
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (
        format!("multipart/form-data; boundary=\"{boundary}\""),
        Bytes::from(body),
    )
}

/// Files both ways (multipart, and qtenginio's chunks with exclusive ends), `include` of the
/// file ref, signed download URLs that need no EDS header and refuse a forged signature, the
/// bytes deleted with their owning object, an interrupted upload leaving nothing; and
/// full-text search over indexed properties in both clients' encodings, with ACL applied.
#[tokio::test]
async fn files_round_trip_both_ways_and_search_finds_indexed_text() {
    let mar = MarServer::start();
    let b = create(&mar, "media");
    let m = Some(b.master.as_str());
    let files_dir = mar.data_dir.join("eds").join(format!("{}.files", b.id));
    let (_, img) = call(
        &mar,
        &b,
        "POST",
        "/v1/objects/images",
        None,
        json!({"title": "cat picture"}),
    )
    .await;
    let img_id = img["id"].as_str().unwrap().to_owned();

    // Multipart.
    let bytes: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let object = json!({"file": {"fileName": "cat.png"}, "targetFileProperty": {"objectType": "objects.images", "id": img_id, "propertyName": "picture"}});
    let (ct, body) = multipart(&object, "cat.png", &bytes);
    let r = http(
        mar.addr,
        "POST",
        "localhost",
        "/v1/files/",
        &[
            ("enginio-backend-id", b.id.as_str()),
            ("content-type", ct.as_str()),
            ("mime-version", "1.0"),
        ],
        body,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let file: Value = serde_json::from_str(&r.body).unwrap();
    let fid = file["id"].as_str().unwrap().to_owned();
    assert_eq!(
        (
            file["objectType"].clone(),
            file["fileName"].clone(),
            file["fileSize"].clone(),
            file["status"].clone()
        ),
        (
            json!("files"),
            json!("cat.png"),
            json!(70_000),
            json!("complete")
        )
    );
    let (_, v) = call(
        &mar,
        &b,
        "GET",
        &format!(
            "/v1/objects/images/{img_id}?include={}",
            q(json!({"picture": {}}))
        ),
        None,
        Value::Null,
    )
    .await;
    assert_eq!(v["picture"]["fileName"], "cat.png", "{v}");
    let (_, v) = call(
        &mar,
        &b,
        "GET",
        &format!("/v1/objects/images/{img_id}"),
        None,
        Value::Null,
    )
    .await;
    assert_eq!(v["picture"], json!({"id": fid, "objectType": "files"}));
    let (s, url) = call(
        &mar,
        &b,
        "GET",
        &format!("/v1/files/{fid}/download_url"),
        None,
        Value::Null,
    )
    .await;
    assert_eq!(s, 200, "{url}");
    assert!(url["expiresAt"].as_str().unwrap().ends_with('Z'));
    let expiring = url["expiringUrl"].as_str().unwrap().to_owned();
    let path = &expiring[expiring.find("/v1/").unwrap()..];
    let r = http(mar.addr, "GET", "localhost", path, &[], Bytes::new()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, String::from_utf8_lossy(&bytes), "the same bytes");
    let forged = path.replace("signature=", "signature=0");
    assert_eq!(
        http(mar.addr, "GET", "localhost", &forged, &[], Bytes::new())
            .await
            .status,
        403
    );
    assert_eq!(
        call(
            &mar,
            &b,
            "GET",
            &format!("/v1/files/{fid}/download_url?variant=thumbnail"),
            None,
            Value::Null
        )
        .await
        .0,
        404
    );

    // Chunked, as qtenginio sends it: JSON first, then ranges with exclusive ends.
    let object = json!({"file": {"fileName": "notes.txt"}, "targetFileProperty": {"objectType": "objects.images", "id": img_id, "propertyName": "notes"}});
    let (s, f2) = call(&mar, &b, "POST", "/v1/files", None, object).await;
    assert_eq!(
        (s, f2["status"].clone(), f2["objectType"].clone()),
        (201, json!("empty"), json!("files")),
        "{f2}"
    );
    let f2id = f2["id"].as_str().unwrap().to_owned();
    let chunk = |range: &'static str, data: &'static [u8]| {
        let (mar, bid, f2id) = (&mar, b.id.clone(), f2id.clone());
        async move {
            let r = http(
                mar.addr,
                "PUT",
                "localhost",
                &format!("/v1/files/{f2id}/chunk"),
                &[
                    ("enginio-backend-id", bid.as_str()),
                    ("content-type", "application/octet-stream"),
                    ("content-range", range),
                ],
                Bytes::from_static(data),
            )
            .await;
            (
                r.status,
                serde_json::from_str::<Value>(&r.body).unwrap_or(Value::Null),
            )
        }
    };
    let (s, v) = chunk("0-5/10", b"hello").await;
    assert_eq!(
        (s, v["status"].clone(), v["id"].clone()),
        (200, json!("incomplete"), json!(f2id)),
        "{v}"
    );
    let (s, v) = chunk("7-10/10", b"rld").await;
    assert_eq!(s, 400, "a gap is refused: {v}");
    let (s, v) = chunk("5-10/10", b"world").await;
    assert_eq!(
        (s, v["status"].clone(), v["fileSize"].clone()),
        (200, json!("complete"), json!(10)),
        "{v}"
    );
    let (_, url) = call(
        &mar,
        &b,
        "GET",
        &format!("/v1/files/{f2id}/download_url"),
        None,
        Value::Null,
    )
    .await;
    let u = url["expiringUrl"].as_str().unwrap();
    assert_eq!(
        http(
            mar.addr,
            "GET",
            "localhost",
            &u[u.find("/v1/").unwrap()..],
            &[],
            Bytes::new()
        )
        .await
        .body,
        "helloworld"
    );

    // An upload cut off half way leaves nothing behind.
    let before = std::fs::read_dir(&files_dir).unwrap().count();
    // The router logs each finished request: the cut upload's line says the server is done
    // with it.
    let posts = || {
        std::fs::read_to_string(mar.data_dir.join("logs/mar.log"))
            .unwrap_or_default()
            .matches("method=POST path=\"/v1/files\" ")
            .count()
    };
    let posted = posts();
    {
        use tokio::io::AsyncWriteExt;
        let (ct, body) = multipart(
            &json!({"targetFileProperty": {"objectType": "objects.images", "id": img_id, "propertyName": "cut"}}),
            "cut.png",
            &bytes,
        );
        let mut s = tokio::net::TcpStream::connect(mar.addr).await.unwrap();
        let head = format!(
            "POST /v1/files HTTP/1.1\r\nHost: localhost\r\nEnginio-Backend-Id: {}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
            b.id,
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body[..body.len() / 2]).await.unwrap();
        drop(s);
    }
    mar_tests::eventually(std::time::Duration::from_secs(10), || async {
        (posts() > posted).then_some(())
    })
    .await;
    assert_eq!(std::fs::read_dir(&files_dir).unwrap().count(), before);
    let (_, v) = call(
        &mar,
        &b,
        "GET",
        &format!("/v1/objects/images/{img_id}"),
        None,
        Value::Null,
    )
    .await;
    assert!(v.get("cut").is_none(), "{v}");

    // Deleting the owner deletes its files and their bytes.
    assert_eq!(
        call(
            &mar,
            &b,
            "DELETE",
            &format!("/v1/objects/images/{img_id}"),
            None,
            Value::Null
        )
        .await
        .0,
        200
    );
    assert_eq!(
        call(&mar, &b, "GET", &format!("/v1/files/{fid}"), m, Value::Null)
            .await
            .0,
        404
    );
    assert_eq!(std::fs::read_dir(&files_dir).unwrap().count(), 0);

    // Search: indexed properties only, both encodings, ACL applied.
    let (s, _) = call(&mar, &b, "POST", "/v1/object_types", m, json!({"name": "pets", "properties": [{"name": "name", "indexed": true}, {"name": "story", "indexed": true}, {"name": "secret"}]})).await;
    assert_eq!(s, 201);
    for (name, story) in [
        ("Tom", "a grey cat who hunts"),
        ("Rex", "a loyal dog"),
        ("Nemo", "a fish, no cat nor dog"),
    ] {
        call(
            &mar,
            &b,
            "POST",
            "/v1/objects/pets",
            None,
            json!({"name": name, "story": story, "secret": "cat"}),
        )
        .await;
    }
    let (_, token) = sign_up(&mar, &b, "owner").await;
    call(
        &mar,
        &b,
        "POST",
        "/v1/objects/pets",
        Some(&token),
        json!({"name": "Hidden", "story": "a private cat"}),
    )
    .await;
    let names = |v: &Value| -> Vec<String> {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["name"].as_str().unwrap().to_owned())
            .collect()
    };
    // qtenginio's encoding.
    let (s, v) = call(
        &mar,
        &b,
        "GET",
        &format!(
            "/v1/search?objectTypes[]=objects.pets&search={}",
            q(json!({"phrase": "cat", "properties": ["story"]}))
        ),
        None,
        Value::Null,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        names(&v),
        ["Tom", "Nemo"],
        "the private one and the unindexed secret stay out"
    );
    let (_, v) = call(
        &mar,
        &b,
        "GET",
        &format!(
            "/v1/search?objectTypes[]=objects.pets&search={}",
            q(json!({"phrase": "cat"}))
        ),
        Some(&token),
        Value::Null,
    )
    .await;
    assert_eq!(names(&v), ["Tom", "Nemo", "Hidden"]);
    // The Node SDK's encoding, with OR.
    let search =
        json!({"phrase": "grey loyal", "properties": "story,name", "defaultOperator": "OR"})
            .to_string();
    let enc: String = search.bytes().map(|c| format!("%{c:02X}")).collect();
    let (_, v) = call(
        &mar,
        &b,
        "GET",
        &format!("/v1/search?search={enc}&objectTypes=objects.pets"),
        None,
        Value::Null,
    )
    .await;
    assert_eq!(names(&v), ["Tom", "Rex"]);
    let (_, v) = call(
        &mar,
        &b,
        "GET",
        &format!(
            "/v1/search?objectTypes[]=objects.pets&count=&search={}",
            q(json!({"phrase": "dog"}))
        ),
        None,
        Value::Null,
    )
    .await;
    assert_eq!(v, json!({"count": 2}));
    let (s, v) = call(
        &mar,
        &b,
        "GET",
        &format!(
            "/v1/search?objectTypes[]=objects.pets&search={}",
            q(json!({"phrase": "x", "near": {"lat": 1}}))
        ),
        None,
        Value::Null,
    )
    .await;
    assert_eq!(s, 400, "{v}");
}

/// Reads one WebSocket frame as a server sends it: (fin, opcode, masked, payload).
async fn read_frame(s: &mut tokio::net::TcpStream) -> (bool, u8, bool, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut h = [0u8; 2];
    tokio::time::timeout(std::time::Duration::from_secs(5), s.read_exact(&mut h))
        .await
        .expect("a frame within 5 s")
        .unwrap();
    let mut len = u64::from(h[1] & 0x7f);
    if len == 126 {
        let mut l = [0u8; 2];
        s.read_exact(&mut l).await.unwrap();
        len = u64::from(u16::from_be_bytes(l));
    } else if len == 127 {
        let mut l = [0u8; 8];
        s.read_exact(&mut l).await.unwrap();
        len = u64::from_be_bytes(l);
    }
    let mut payload = vec![0u8; len as usize];
    s.read_exact(&mut payload).await.unwrap();
    (h[0] & 0x80 != 0, h[0] & 0x0f, h[1] & 0x80 != 0, payload)
}

/// The next text frame, answering pings as qtenginio does.
async fn next_text_frame(s: &mut tokio::net::TcpStream) -> Value {
    loop {
        let (fin, op, masked, payload) = read_frame(s).await;
        assert!(fin && !masked, "one unmasked frame per message");
        match op {
            1 => return serde_json::from_slice(&payload).unwrap(),
            9 => assert!(!payload.is_empty(), "pings carry a payload"),
            other => panic!("opcode {other}"),
        }
    }
}

/// EnginioBackendConnection's stream, with a raw TCP client writing qtenginio's handshake
/// byte for byte: the answer matches its case-sensitive expectations, notifications arrive
/// as single unmasked frames `{event, origin:{apiRequestId}, data}` for the filtered type
/// declared with `settings.websocket`, a used token is refused, and a Close 1001 is echoed.
#[tokio::test]
async fn the_notification_stream_speaks_qtenginios_exact_handshake() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mar = MarServer::start();
    let b = create(&mar, "live");
    let m = Some(b.master.as_str());
    for (name, ws) in [("todos", true), ("quiet", false)] {
        let (s, v) = call(&mar, &b, "POST", "/v1/object_types", m, json!({"name": name, "properties": [{"name": "title", "type": "string"}], "settings": {"websocket": ws}})).await;
        assert_eq!(s, 201, "{v}");
    }
    let filter = q(json!({"data": {"objectType": "objects.todos"}}));
    let (s, v) = call(
        &mar,
        &b,
        "GET",
        &format!("/v1/stream_url?filter={filter}"),
        None,
        Value::Null,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let url = v["expiringUrl"].as_str().unwrap().to_owned();
    let rest = url
        .strip_prefix("ws://localhost:")
        .unwrap_or_else(|| panic!("{url}"));
    let (port, path) = rest.split_once('/').unwrap();
    let port: u16 = port.parse().unwrap();
    let handshake = |path: String| async move {
        let mut s = tokio::net::TcpStream::connect((mar.addr.ip(), port))
            .await
            .unwrap();
        let req = format!(
            "GET /{path} HTTP/1.1\r\nHost: localhost:{port}\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            head.push(byte[0]);
        }
        (s, String::from_utf8(head).unwrap())
    };
    let (mut s, head) = handshake(path.to_owned()).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(head.contains("\r\nUpgrade: websocket\r\n"), "{head}");
    assert!(head.contains("\r\nConnection: upgrade\r\n"), "{head}");
    assert!(
        head.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );

    let rid = "00112233445566778899aabbccddeeff";
    let post = |path: &'static str, title: &'static str| {
        let (mar, bid) = (&mar, b.id.clone());
        async move {
            let r = http(
                mar.addr,
                "POST",
                "localhost",
                path,
                &[("enginio-backend-id", bid.as_str()), ("x-request-id", rid)],
                Bytes::from(json!({"title": title}).to_string()),
            )
            .await;
            assert_eq!(r.status, 201, "{}", r.body);
            serde_json::from_str::<Value>(&r.body).unwrap()
        }
    };
    post("/v1/objects/todos", "first").await;
    let n = next_text_frame(&mut s).await;
    assert_eq!(n["event"], "create");
    assert_eq!(n["origin"]["apiRequestId"], rid);
    assert_eq!(
        (n["data"]["title"].clone(), n["data"]["objectType"].clone()),
        (json!("first"), json!("objects.todos"))
    );
    // A type without settings.websocket says nothing; the next todo is the next message.
    post("/v1/objects/quiet", "hush").await;
    let second = post("/v1/objects/todos", "second").await;
    let sid = second["id"].as_str().unwrap();
    assert_eq!(next_text_frame(&mut s).await["data"]["title"], "second");
    call(
        &mar,
        &b,
        "DELETE",
        &format!("/v1/objects/todos/{sid}"),
        None,
        Value::Null,
    )
    .await;
    let n = next_text_frame(&mut s).await;
    assert_eq!(
        (n["event"].clone(), n["data"]["id"].clone()),
        (json!("delete"), json!(sid))
    );

    // The token was single-use.
    let (_, head) = handshake(path.to_owned()).await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");

    // Close 1001, masked as a client must: echoed with the same code.
    let mask = [1u8, 2, 3, 4];
    let code = 1001u16.to_be_bytes();
    s.write_all(&[
        0x88,
        0x82,
        mask[0],
        mask[1],
        mask[2],
        mask[3],
        code[0] ^ mask[0],
        code[1] ^ mask[1],
    ])
    .await
    .unwrap();
    let (_, op, _, payload) = read_frame(&mut s).await;
    assert_eq!((op, payload), (8, code.to_vec()));
}

/// The Qt Cloud Services Node SDK (`qtc` 0.6.10 from the npm registry), unchanged, against
/// EDS. It speaks only HTTPS on port 443, so this server listens there on an address of its
/// own (127.0.0.43, so no other test's port is taken); the certificate is the server's
/// self-signed one, which the SDK is told to accept.
#[tokio::test]
async fn the_qtc_node_sdk_drives_objects_queries_users_search_and_files_unchanged() {
    let dir = mar_tests::repo_root().join("tests/fixtures/qtc-mws");
    assert!(
        dir.join("node_modules/qtc").is_dir(),
        "no qtc SDK in {}: run `bash scripts/test.sh`, which installs it",
        dir.display()
    );
    let mar = MarServer::start_with_args(None, &["--https-listen", "127.0.0.43:443"]);
    let b = create(&mar, "nodesdk");
    let out = mar_tests::run_node(
        &dir,
        "eds.js",
        vec!["https://127.0.0.43".into(), b.id.clone(), b.master.clone()],
        vec![
            ("NODE_TLS_REJECT_UNAUTHORIZED", "0".into()),
            ("NODE_NO_WARNINGS", "1".into()),
        ],
    )
    .await;
    for line in [
        "inserted objects.todos 24",
        "found a node,b node",
        "count 2",
        "updated true b node",
        "findOne true",
        "removed true",
        "user nodeuser password hidden",
        "signed in nodeuser",
        "private creator true",
        "anonymous sees b node",
        "owner sees 1",
        "group node-group",
        "search the quick brown fox",
        "attached qtc-eds-",
        "file info qtc-eds-",
        "DONE",
    ] {
        assert!(out.stdout.contains(line), "no {line:?} in:\n{}", out.all());
    }
    assert!(out.stdout.contains(" 24 complete"), "{}", out.stdout);
}

/// The account API of the dashboard era: an account made with the CLI (its password from
/// standard input) signs in, creates an app whose development and production environments
/// are two separate backends with master and API keys, lists and deletes it; wrong passwords
/// and tokens are refused.
#[tokio::test]
async fn the_account_api_makes_apps_with_two_environments() {
    let mar = MarServer::start();
    let short = mar.mar_with_input(&["accounts:create", "dev@example.test"], "short\n");
    assert!(
        !short.ok() && short.all().contains("8 to 1024"),
        "{}",
        short.all()
    );
    let out = mar.mar_with_input(
        &["accounts:create", "dev@example.test"],
        "a good password\n",
    );
    assert!(out.ok(), "{}", out.all());
    assert!(mar.mar(&["accounts"]).stdout.contains("dev@example.test"));
    let token_for = |password: &'static str| {
        let mar = &mar;
        async move {
            let body = format!(
                "grant_type=password&username=dev%40example.test&password={}",
                password.replace(' ', "+")
            );
            let r = http(
                mar.addr,
                "POST",
                "localhost",
                "/v1/account/auth/oauth2/token",
                &[("content-type", "application/x-www-form-urlencoded")],
                Bytes::from(body),
            )
            .await;
            (
                r.status,
                serde_json::from_str::<Value>(&r.body).unwrap_or(Value::Null),
            )
        }
    };
    let (s, v) = token_for("wrong").await;
    assert_eq!((s, v["error"].clone()), (400, json!("invalid_grant")));
    let (s, v) = token_for("a good password").await;
    assert_eq!(s, 200, "{v}");
    let bearer = format!("Bearer {}", v["access_token"].as_str().unwrap());
    let account = |method: &'static str, path: String, body: Value| {
        let (mar, bearer) = (&mar, bearer.clone());
        async move {
            let body = if body.is_null() {
                Bytes::new()
            } else {
                Bytes::from(body.to_string())
            };
            let r = http(
                mar.addr,
                method,
                "localhost",
                &path,
                &[("authorization", bearer.as_str())],
                body,
            )
            .await;
            (
                r.status,
                serde_json::from_str::<Value>(&r.body).unwrap_or(Value::Null),
            )
        }
    };
    let (s, app) = account("POST", "/v1/account/apps".into(), json!({"name": "shop"})).await;
    assert_eq!(s, 201, "{app}");
    let envs = app["environments"].as_array().unwrap();
    assert_eq!(
        envs.iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["development", "production"]
    );
    assert_ne!(envs[0]["id"], envs[1]["id"]);
    let dev = Backend {
        id: envs[0]["id"].as_str().unwrap().into(),
        master: envs[0]["masterKeys"][0]["key"].as_str().unwrap().into(),
    };
    let prod = Backend {
        id: envs[1]["id"].as_str().unwrap().into(),
        master: envs[1]["masterKeys"][0]["key"].as_str().unwrap().into(),
    };
    assert_eq!(envs[0]["apiKeys"][0]["key"].as_str().unwrap().len(), 32);
    // The environments are separate backends.
    let (s, _) = call(
        &mar,
        &dev,
        "POST",
        "/v1/object_types",
        Some(&dev.master),
        json!({"name": "items"}),
    )
    .await;
    assert_eq!(s, 201);
    call(
        &mar,
        &dev,
        "POST",
        "/v1/objects/items",
        None,
        json!({"title": "dev only"}),
    )
    .await;
    let (_, v) = call(
        &mar,
        &prod,
        "GET",
        "/v1/objects/items?count=",
        None,
        Value::Null,
    )
    .await;
    assert_eq!(v, json!({"count": 0}));
    let (_, v) = account("GET", "/v1/account/apps".into(), Value::Null).await;
    assert_eq!(v["results"], json!([{"id": app["id"], "name": "shop"}]));
    let id = app["id"].as_str().unwrap();
    assert_eq!(
        account("GET", format!("/v1/account/apps/{id}"), Value::Null)
            .await
            .1,
        app
    );
    let r = http(
        mar.addr,
        "GET",
        "localhost",
        "/v1/account/apps",
        &[("authorization", "Bearer forged")],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 401);
    let (s, _) = account("DELETE", format!("/v1/account/apps/{id}"), Value::Null).await;
    assert_eq!(s, 200);
    assert_eq!(
        call(&mar, &dev, "GET", "/v1/objects/items", None, Value::Null)
            .await
            .0,
        404,
        "its backends went with it"
    );
    let out = mar.mar(&[
        "accounts:destroy",
        "dev@example.test",
        "--confirm",
        "dev@example.test",
    ]);
    assert!(out.ok(), "{}", out.all());
    assert_eq!(token_for("a good password").await.0, 400);
}
