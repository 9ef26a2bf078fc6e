//! Files (qtc-api.md §2.9): bytes under the backend's own directory, one file per upload
//! named by its id, described by an object of type `files` (`fileName`, `fileSize`,
//! `contentType`, `status`) that its owning object refers to through a ref property.
//!
//! Two ways in, as the clients send them: a multipart `POST /v1/files` (parts `object` and
//! `file`), and the chunked upload of qtenginio (`POST /v1/files` with JSON, then `PUT
//! /v1/files/ID/chunk` with `Content-Range: START-END/TOTAL`, END exclusive, no `bytes `
//! prefix). Bytes are written to `ID.part`, synced, and renamed to `ID` only when complete,
//! so an interrupted upload never looks complete; a sweep removes unfinished uploads after an
//! hour and bytes no object describes. A file has its owner's ACL (copied at upload), and
//! goes when its owner is deleted.
//!
//! Downloads: `GET /v1/files/ID/download_url` gives a URL signed with HMAC-SHA256 under the
//! backend's secret that works for 10 minutes without any EDS header (as qtenginio fetches
//! it). Image variants (thumbnails) are not generated: a `variant` is answered 404.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::EdsError;
use crate::acl::Perm;
use crate::backend::{Backend, Ctx};
use crate::storage::Record;

/// The largest file.
pub const MAX_FILE: u64 = 256 << 20;

/// The largest multipart upload (chunked uploads take the larger files).
pub const MAX_MULTIPART: usize = 32 << 20;

/// How long a download URL works.
pub const URL_TTL_SECS: i64 = 600;

/// How long an unfinished upload is kept.
pub const UNFINISHED_TTL_SECS: u64 = 3600;

/// One part of a multipart body.
#[derive(Debug, PartialEq, Eq)]
pub struct Part<'a> {
    /// Its form name.
    pub name: String,
    /// Its file name, for a file part.
    pub filename: Option<String>,
    /// Its Content-Type, if given.
    pub content_type: Option<String>,
    /// Its bytes.
    pub body: &'a [u8],
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    (from..=hay.len() - needle.len()).find(|&i| &hay[i..i + needle.len()] == needle)
}

/// The boundary of a `multipart/form-data` Content-Type.
pub fn boundary(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_owned())
            .filter(|b| !b.is_empty() && b.len() <= 200)
    })
}

/// The boundary of a multipart body sent without its Content-Type (the Node SDK's
/// `attachFile` loses it): the body's first line, `--BOUNDARY`.
pub fn sniff_boundary(body: &[u8]) -> Option<String> {
    let first = body.strip_prefix(b"--")?;
    let end = find(first, b"\r\n", 0)?;
    let b = std::str::from_utf8(&first[..end]).ok()?;
    (!b.is_empty() && b.len() <= 200 && b.bytes().all(|c| c.is_ascii_graphic()))
        .then(|| b.to_owned())
}

fn param(header: &str, name: &str) -> Option<String> {
    header.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"').to_owned())
    })
}

/// Splits a multipart body into its parts.
pub fn parts<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, EdsError> {
    let bad = |why: &str| EdsError::BadRequest(format!("the multipart body {why}"));
    let delim = format!("--{boundary}");
    let next_delim = format!("\r\n--{boundary}");
    let mut at = find(body, delim.as_bytes(), 0).ok_or_else(|| bad("has no boundary"))?;
    let mut out = Vec::new();
    loop {
        at += delim.len();
        if body[at..].starts_with(b"--") {
            return Ok(out);
        }
        if !body[at..].starts_with(b"\r\n") {
            return Err(bad("is malformed"));
        }
        at += 2;
        let head_end =
            find(body, b"\r\n\r\n", at).ok_or_else(|| bad("has a part without a head"))?;
        let head = std::str::from_utf8(&body[at..head_end])
            .map_err(|_| bad("has a head that is not text"))?;
        let start = head_end + 4;
        let end = find(body, next_delim.as_bytes(), start).ok_or_else(|| bad("is cut off"))?;
        let (mut name, mut filename, mut content_type) = (None, None, None);
        for line in head.split("\r\n") {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            if k.trim().eq_ignore_ascii_case("content-disposition") {
                name = param(v, "name");
                filename = param(v, "filename");
            } else if k.trim().eq_ignore_ascii_case("content-type") {
                content_type = Some(v.trim().to_owned());
            }
        }
        out.push(Part {
            name: name.ok_or_else(|| bad("has a part without a name"))?,
            filename,
            content_type,
            body: &body[start..end],
        });
        if out.len() > 16 {
            return Err(bad("has more than 16 parts"));
        }
        at = end + 2;
    }
}

/// HMAC-SHA256 (RFC 2104), for download URLs.
fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .into()
}

/// What a new file object says of its bytes.
struct NewFile<'a> {
    name: &'a str,
    content_type: &'a str,
    size: u64,
    status: &'a str,
}

/// Where a file of the target object goes: `{"objectType","id","propertyName"}`.
struct Target {
    kind: String,
    id: String,
    property: String,
}

fn target_of(v: &Value) -> Result<Target, EdsError> {
    let t = v
        .get("targetFileProperty")
        .ok_or_else(|| EdsError::Validation {
            property: "targetFileProperty".to_owned(),
            message: "can't be blank".to_owned(),
        })?;
    let field = |k: &str| {
        t.get(k)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| EdsError::Validation {
                property: format!("targetFileProperty.{k}"),
                message: "can't be blank".to_owned(),
            })
    };
    let kind = field("objectType")?;
    let kind = if matches!(kind.as_str(), "users" | "usergroups") {
        kind
    } else {
        crate::types::type_name(&kind)?
    };
    let property = field("propertyName")?;
    crate::types::check_property_name(&property)?;
    Ok(Target {
        kind,
        id: field("id")?,
        property,
    })
}

fn clean_name(name: &str) -> String {
    let n: String = name
        .chars()
        .filter(|c| !c.is_control() && *c != '/' && *c != '\\')
        .take(255)
        .collect();
    if n.is_empty() { "file".to_owned() } else { n }
}

impl Backend {
    fn file_path(&self, id: &str, part: bool) -> Result<PathBuf, EdsError> {
        if !crate::ids::valid(id) {
            return Err(EdsError::NotFound(format!("no file {id}")));
        }
        Ok(self.files_dir.join(if part {
            format!("{id}.part")
        } else {
            id.to_owned()
        }))
    }

    /// The target object, if the caller may change it.
    fn writable_target(&self, ctx: &Ctx, t: &Target) -> Result<Record, EdsError> {
        match self.storage.get(&t.id)? {
            Some(r) if r.kind == t.kind && r.acl.allows(&ctx.caller, Perm::Read) => {
                if r.acl.allows(&ctx.caller, Perm::Update) {
                    Ok(r)
                } else {
                    Err(EdsError::Forbidden(
                        "you may not change the target object".to_owned(),
                    ))
                }
            }
            _ => Err(EdsError::NotFound(format!(
                "no {} object with id {}",
                t.kind, t.id
            ))),
        }
    }

    fn new_file(
        &self,
        ctx: &Ctx,
        t: &Target,
        owner: &Record,
        f: NewFile<'_>,
    ) -> Result<Record, EdsError> {
        let NewFile {
            name,
            content_type,
            size,
            status,
        } = f;
        let id = crate::ids::new_id();
        let now = crate::time::now();
        let mut doc = serde_json::Map::new();
        doc.insert("id".into(), json!(id));
        doc.insert("objectType".into(), json!("files"));
        doc.insert("fileName".into(), json!(clean_name(name)));
        doc.insert("fileSize".into(), json!(size));
        doc.insert("contentType".into(), json!(content_type));
        doc.insert("status".into(), json!(status));
        doc.insert("createdAt".into(), json!(now));
        doc.insert("updatedAt".into(), json!(now));
        if let Some(u) = ctx.caller.user_id() {
            doc.insert("creator".into(), json!({"id": u, "objectType": "users"}));
        }
        let r = Record {
            id,
            kind: "files".to_owned(),
            doc,
            acl: owner.acl.clone(),
        };
        self.storage
            .insert_file(&r, &t.id, &t.property, ctx.change("create"))?;
        Ok(r)
    }

    /// Points the target's property at a finished file.
    fn attach(&self, ctx: &Ctx, t: &Target, file_id: &str) -> Result<(), EdsError> {
        let reference = json!({"id": file_id, "objectType": "files"});
        self.update(
            ctx,
            &t.kind,
            &t.id,
            &json!({ t.property.clone(): reference }),
        )
        .map(|_| ())
    }

    /// Writes bytes to `ID.part`, syncs them, and renames the file into place.
    fn write_complete(&self, id: &str, bytes: &[u8]) -> Result<(), EdsError> {
        let io = |e: std::io::Error| EdsError::Storage(format!("file {id}: {e}"));
        let part = self.file_path(id, true)?;
        let mut f = std::fs::File::create(&part).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&part, self.file_path(id, false)?).map_err(io)
    }

    /// `POST /v1/files`, multipart with this boundary: the `object` part says where, the
    /// `file` part is the bytes. 201 with the file object.
    pub fn upload(&self, ctx: &Ctx, boundary: &str, body: &[u8]) -> Result<Value, EdsError> {
        let parts = parts(body, boundary)?;
        let object = parts
            .iter()
            .find(|p| p.name == "object")
            .ok_or_else(|| EdsError::BadRequest("the object part is missing".to_owned()))?;
        let object: Value = serde_json::from_slice(object.body)
            .map_err(|e| EdsError::BadRequest(format!("the object part is not JSON: {e}")))?;
        let file = parts
            .iter()
            .find(|p| p.name == "file")
            .ok_or_else(|| EdsError::BadRequest("the file part is missing".to_owned()))?;
        let t = target_of(&object)?;
        let owner = self.writable_target(ctx, &t)?;
        let name = object["file"]["fileName"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| file.filename.clone())
            .or_else(|| {
                parts
                    .iter()
                    .find(|p| p.name == "filename")
                    .map(|p| String::from_utf8_lossy(p.body).into_owned())
            })
            .unwrap_or_default();
        let kind = file
            .content_type
            .clone()
            .unwrap_or_else(|| "application/octet-stream".to_owned());
        let r = self.new_file(
            ctx,
            &t,
            &owner,
            NewFile {
                name: &name,
                content_type: &kind,
                size: file.body.len() as u64,
                status: "complete",
            },
        )?;
        let done = self
            .write_complete(&r.id, file.body)
            .and_then(|()| self.attach(ctx, &t, &r.id));
        if let Err(e) = done {
            self.drop_file(&r.id);
            return Err(e);
        }
        self.wrote();
        Ok(Value::Object(r.doc))
    }

    /// `POST /v1/files` with JSON: a chunked upload begins (status `empty`).
    pub fn begin_upload(&self, ctx: &Ctx, body: &Value) -> Result<Value, EdsError> {
        let t = target_of(body)?;
        let owner = self.writable_target(ctx, &t)?;
        let name = body["file"]["fileName"].as_str().unwrap_or("");
        let r = self.new_file(
            ctx,
            &t,
            &owner,
            NewFile {
                name,
                content_type: "application/octet-stream",
                size: 0,
                status: "empty",
            },
        )?;
        let part = self.file_path(&r.id, true)?;
        if let Err(e) = std::fs::File::create(&part) {
            self.drop_file(&r.id);
            return Err(EdsError::Storage(format!("file {}: {e}", r.id)));
        }
        Ok(Value::Object(r.doc))
    }

    /// `PUT /v1/files/ID/chunk`: appends the chunk at `START-END/TOTAL`; complete at TOTAL.
    pub fn chunk(&self, ctx: &Ctx, id: &str, range: &str, bytes: &[u8]) -> Result<Value, EdsError> {
        let bad = |why: String| EdsError::BadRequest(format!("Content-Range {range:?}: {why}"));
        let spec = range.trim().trim_start_matches("bytes ").trim();
        let (span, total) = spec
            .split_once('/')
            .ok_or_else(|| bad("START-END/TOTAL".to_owned()))?;
        let (start, end) = span
            .split_once('-')
            .ok_or_else(|| bad("START-END/TOTAL".to_owned()))?;
        let num = |s: &str| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| bad(format!("{s:?} is not a number")))
        };
        let (start, end, total) = (num(start)?, num(end)?, num(total)?);
        if end < start || end - start != bytes.len() as u64 || end > total {
            return Err(bad(format!("the chunk has {} bytes", bytes.len())));
        }
        if total > MAX_FILE {
            return Err(EdsError::TooLarge(format!(
                "files are at most {} MiB",
                MAX_FILE >> 20
            )));
        }
        let file = match self.storage.get(id)? {
            Some(r) if r.kind == "files" && r.acl.allows(&ctx.caller, Perm::Read) => r,
            _ => return Err(EdsError::NotFound(format!("no file {id}"))),
        };
        if !file.acl.allows(&ctx.caller, Perm::Update) {
            return Err(EdsError::Forbidden(
                "you may not upload to this file".to_owned(),
            ));
        }
        if file.doc.get("status").and_then(Value::as_str) == Some("complete") {
            return Err(EdsError::BadRequest(format!("file {id} is complete")));
        }
        let part = self.file_path(id, true)?;
        let io = |e: std::io::Error| EdsError::Storage(format!("file {id}: {e}"));
        let have = std::fs::metadata(&part).map_err(io)?.len();
        if start != have {
            return Err(bad(format!("the upload has {have} bytes; send from there")));
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&part)
            .map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        let complete = end == total;
        if complete {
            std::fs::rename(&part, self.file_path(id, false)?).map_err(io)?;
        }
        let status = if complete { "complete" } else { "incomplete" };
        let master = Ctx {
            caller: crate::acl::Caller::Master,
            request_id: ctx.request_id.clone(),
        };
        let doc = self.update(
            &master,
            "files",
            id,
            &json!({"fileSize": end, "status": status}),
        )?;
        if complete {
            let (owner, property) = self
                .storage
                .file_owner(id)?
                .ok_or_else(|| EdsError::NotFound(format!("no file {id}")))?;
            let owner_kind = self
                .storage
                .get(&owner)?
                .map(|r| r.kind)
                .ok_or_else(|| EdsError::NotFound(format!("file {id}'s object is gone")))?;
            let t = Target {
                kind: owner_kind,
                id: owner,
                property,
            };
            self.attach(ctx, &t, id)?;
            self.wrote();
        }
        Ok(doc)
    }

    /// `GET /v1/files/ID/download_url`: a signed URL under `base` (scheme and host).
    pub fn download_url(
        &self,
        ctx: &Ctx,
        id: &str,
        variant: Option<&str>,
        base: &str,
    ) -> Result<Value, EdsError> {
        let file = self.get(ctx, "files", id, &[])?;
        if variant.is_some_and(|v| !v.is_empty()) {
            return Err(EdsError::NotFound(
                "no such variant: this data store does not make image variants".to_owned(),
            ));
        }
        if file.get("status").and_then(Value::as_str) != Some("complete") {
            return Err(EdsError::BadRequest(format!(
                "file {id} is not complete yet"
            )));
        }
        let expires = crate::time::unix_now() + URL_TTL_SECS;
        let sig = self.sign(id, expires);
        Ok(json!({
            "expiringUrl": format!("{base}/v1/files/{id}/download?backend={}&expires={expires}&signature={sig}", self.id),
            "expiresAt": crate::time::rfc3339_from_millis((expires * 1000) as f64),
        }))
    }

    fn sign(&self, id: &str, expires: i64) -> String {
        crate::ids::hex(&hmac(
            self.secret_bytes(),
            format!("{}|{id}|{expires}", self.id).as_bytes(),
        ))
    }

    /// Checks a download URL's signature and expiry; the file's path, name and type.
    pub fn download(
        &self,
        id: &str,
        expires: &str,
        signature: &str,
    ) -> Result<(PathBuf, String, String), EdsError> {
        let denied = || EdsError::Forbidden("the download URL is wrong or has expired".to_owned());
        let expires: i64 = expires.parse().map_err(|_| denied())?;
        let good = self.sign(id, expires);
        let same = mar_http::credentials::secrets_match(good.as_bytes(), signature.as_bytes());
        if !same || expires < crate::time::unix_now() {
            return Err(denied());
        }
        let r = self
            .storage
            .get(id)?
            .filter(|r| r.kind == "files")
            .ok_or_else(|| EdsError::NotFound(format!("no file {id}")))?;
        let name = r
            .doc
            .get("fileName")
            .and_then(Value::as_str)
            .unwrap_or("file")
            .to_owned();
        let kind = r
            .doc
            .get("contentType")
            .and_then(Value::as_str)
            .unwrap_or("application/octet-stream")
            .to_owned();
        Ok((self.file_path(id, false)?, name, kind))
    }

    /// Forgets a file: its object and its bytes.
    fn drop_file(&self, id: &str) {
        let _ = self.storage.delete(
            id,
            &mut |_| Ok(()),
            crate::storage::Change {
                event: "delete",
                request_id: None,
                user_id: None,
            },
        );
        self.remove_bytes(id);
    }

    /// Removes a file's bytes, finished or not.
    pub(crate) fn remove_bytes(&self, id: &str) {
        for part in [false, true] {
            if let Ok(p) = self.file_path(id, part) {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    /// Removes unfinished uploads older than an hour, and bytes no file object describes.
    pub fn sweep_files(&self) -> Result<(), EdsError> {
        let states = self.storage.file_states()?;
        let cutoff = humantime::format_rfc3339_millis(
            std::time::SystemTime::now() - std::time::Duration::from_secs(UNFINISHED_TTL_SECS),
        )
        .to_string();
        for (id, complete, updated) in &states {
            if !complete && updated.as_str() < cutoff.as_str() {
                self.drop_file(id);
            }
        }
        let known: std::collections::HashSet<&str> =
            states.iter().map(|(id, ..)| id.as_str()).collect();
        if let Ok(entries) = std::fs::read_dir(&self.files_dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let id = name.trim_end_matches(".part");
                if !known.contains(id) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }
}

/// The directory a backend's files live in, beside its database.
pub fn dir_for(db: &Path) -> PathBuf {
    db.with_extension("files")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_bodies_as_the_clients_send_them() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"object\"\r\n\r\n{\"a\":1}\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.png\"\r\nContent-Type: image/png\r\n\r\n\x89PNG\r\n--XY\r\n--XyZ--\r\n";
        let b = boundary("multipart/form-data; boundary=\"XyZ\"").unwrap();
        let p = parts(body, &b).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].name, "object");
        assert_eq!(p[0].body, b"{\"a\":1}");
        assert_eq!(p[1].filename.as_deref(), Some("t.png"));
        assert_eq!(p[1].content_type.as_deref(), Some("image/png"));
        assert_eq!(p[1].body, b"\x89PNG\r\n--XY");
        assert!(
            parts(
                b"--XyZ\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\nno end",
                "XyZ"
            )
            .is_err()
        );
        assert!(boundary("application/json").is_none());
        assert_eq!(sniff_boundary(body).as_deref(), Some("XyZ"));
        assert_eq!(sniff_boundary(b"{\"json\": 1}"), None);
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231, test case 2.
        let mac = hmac(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            crate::ids::hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
