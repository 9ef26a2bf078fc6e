//! The query language of EDS lists (`q`, `sort`, `limit`, `offset`, `count`, `include`),
//! parsed into a tree that knows nothing of SQL: the MongoDB operator set the issue names
//! (`$eq $ne $gt $gte $lt $lte $in $nin $exists $regex $and $or $not $size $all
//! $elemMatch`, plus `$nor`), equality on dot paths and on refs. Each storage compiles the tree
//! to its own SQL with bound parameters (`sqlite.rs`).
//!
//! Bounds, so a hostile query cannot stall the server: nesting at most [`MAX_DEPTH`], at most
//! [`MAX_TERMS`] conditions and values in all (a `$in` of 100,000 items is refused, not run),
//! paths of at most [`MAX_PATH`] bytes with no empty segment and no quote or backslash.
//!
//! Semantics as MongoDB's where it matters to clients: a condition on an array holds if it
//! holds for any element; `$ne`/`$nin` also match objects without the property; equality with
//! a ref (`{"id":…,"objectType":…}`) compares the ref's id (and type when given).

use serde_json::{Map, Value};

use crate::EdsError;

/// Deepest nesting of `$and`/`$or`/`$not`/`$elemMatch`.
pub const MAX_DEPTH: usize = 8;
/// Most conditions plus listed values in one query.
pub const MAX_TERMS: usize = 1000;
/// Longest property path.
pub const MAX_PATH: usize = 256;
/// The default and largest `limit`.
pub const DEFAULT_LIMIT: u64 = 100;
/// The largest `limit` a client may ask for.
pub const MAX_LIMIT: u64 = 1000;

/// A property path, split at dots: `file.id` is `["file", "id"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path(pub Vec<String>);

impl Path {
    /// Checks and splits a path.
    pub fn parse(s: &str) -> Result<Self, EdsError> {
        let bad = |why: &str| EdsError::BadQuery(format!("property path {s:?}: {why}"));
        if s.is_empty() || s.len() > MAX_PATH {
            return Err(bad("must be 1 to 256 bytes"));
        }
        if s.starts_with('$') {
            return Err(bad("unknown operator"));
        }
        let parts: Vec<String> = s.split('.').map(str::to_owned).collect();
        if parts
            .iter()
            .any(|p| p.is_empty() || p.chars().any(|c| c == '"' || c == '\\' || c.is_control()))
        {
            return Err(bad(
                "has an empty part, a quote, a backslash or a control character",
            ));
        }
        Ok(Path(parts))
    }

    /// As written.
    pub fn dotted(&self) -> String {
        self.0.join(".")
    }

    /// The JSON path of SQLite's and PostgreSQL's JSON functions: `$."file"."id"`, with a
    /// numeric part as an array index (`tags.0` is `$."tags"[0]`).
    pub fn json_path(&self) -> String {
        let mut p = String::from("$");
        for part in &self.0 {
            if !part.is_empty() && part.len() <= 9 && part.bytes().all(|b| b.is_ascii_digit()) {
                p.push('[');
                p.push_str(part);
                p.push(']');
            } else {
                p.push_str(".\"");
                p.push_str(part);
                p.push('"');
            }
        }
        p
    }
}

/// A filter on objects.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Every one holds (the empty query matches all).
    And(Vec<Filter>),
    /// At least one holds.
    Or(Vec<Filter>),
    /// None holds.
    Nor(Vec<Filter>),
    /// A condition on the value at a path.
    At(Path, Cond),
    /// Conditions on the value itself (inside `$elemMatch` on scalars).
    Here(Cond),
}

/// A condition on one value (an array's elements count as its values).
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// Equal (a ref compares by id).
    Eq(Value),
    /// Not equal, or absent.
    Ne(Value),
    /// Greater than (numbers with numbers, strings with strings).
    Gt(Value),
    /// Greater or equal.
    Gte(Value),
    /// Less than.
    Lt(Value),
    /// Less or equal.
    Lte(Value),
    /// Equal to one of.
    In(Vec<Value>),
    /// Equal to none of, or absent.
    Nin(Vec<Value>),
    /// Present (even as null) or not.
    Exists(bool),
    /// A string matching a regular expression (`$options` `i`, `m`, `s`, `x` folded in).
    Regex(String),
    /// The inner conditions do not all hold.
    Not(Vec<Cond>),
    /// An array of this length.
    Size(u64),
    /// An array holding every one of.
    All(Vec<Value>),
    /// An array with an element matching.
    ElemMatch(Box<Filter>),
    /// Every one holds (several operators on one path).
    Both(Vec<Cond>),
}

/// One sort key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    /// The property.
    pub path: Path,
    /// Descending.
    pub desc: bool,
}

/// A list request: filter, order, window, and what to include.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// The filter.
    pub filter: Filter,
    /// The order (insertion order after these keys).
    pub sort: Vec<SortKey>,
    /// At most this many results.
    pub limit: u64,
    /// Skip this many.
    pub offset: u64,
    /// Answer with the count only.
    pub count: bool,
    /// Ref properties to replace by the objects they refer to.
    pub include: Vec<String>,
    /// The parameters as the client sent them, echoed in the answer.
    pub echo: Value,
}

/// Parses a list request's parameters (the raw query string).
pub fn parse_params(query_string: Option<&str>) -> Result<Query, EdsError> {
    let mut q = None;
    let mut sort = None;
    let (mut limit, mut offset, mut count, mut include) = (None, None, false, None);
    for pair in query_string
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = mar_http::percent_decode(v, true);
        match mar_http::percent_decode(k, true).as_str() {
            "q" => q = Some(json_param("q", &v)?),
            "sort" => sort = Some(json_param("sort", &v)?),
            "limit" => limit = Some(number_param("limit", &v)?),
            "offset" => offset = Some(number_param("offset", &v)?),
            // A presence flag: qtenginio sends `count=`, the Node SDK `count=1`.
            "count" => count = v != "0" && v != "false",
            "include" => include = Some(json_param("include", &v)?),
            _ => {}
        }
    }
    let filter = match &q {
        None | Some(Value::Null) => Filter::And(Vec::new()),
        Some(v) => parse_filter(v)?,
    };
    let sort_keys = match &sort {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => parse_sort(v)?,
    };
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if limit > MAX_LIMIT {
        return Err(EdsError::BadQuery(format!(
            "limit {limit} is more than {MAX_LIMIT}"
        )));
    }
    let limit = if limit == 0 { DEFAULT_LIMIT } else { limit };
    let offset = offset.unwrap_or(0);
    let include = match &include {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(m)) => {
            for k in m.keys() {
                Path::parse(k)?;
            }
            m.keys().cloned().collect()
        }
        Some(_) => {
            return Err(EdsError::BadQuery(
                "include must be an object, like {\"creator\":{}}".to_owned(),
            ));
        }
    };
    let mut echo = serde_json::json!({
        "query": q.clone().unwrap_or_else(|| Value::Object(Map::new())),
        "limit": limit,
        "offset": offset,
    });
    if let Some(s) = sort {
        echo["sort"] = s;
    }
    Ok(Query {
        filter,
        sort: sort_keys,
        limit,
        offset,
        count,
        include,
        echo,
    })
}

fn json_param(name: &str, v: &str) -> Result<Value, EdsError> {
    serde_json::from_str(v)
        .map_err(|e| EdsError::BadQuery(format!("{name} is not valid JSON: {e}")))
}

fn number_param(name: &str, v: &str) -> Result<u64, EdsError> {
    if v.is_empty() {
        return Ok(0);
    }
    v.parse()
        .map_err(|_| EdsError::BadQuery(format!("{name} must be a whole number, not {v:?}")))
}

/// Parses `sort`: `[{"sortBy":"title","direction":"asc"}, …]` (a single object is taken as
/// a list of one).
pub fn parse_sort(v: &Value) -> Result<Vec<SortKey>, EdsError> {
    let items: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        Value::Object(_) => vec![v],
        _ => {
            return Err(EdsError::BadQuery(
                "sort must be a list like [{\"sortBy\":\"createdAt\",\"direction\":\"desc\"}]"
                    .to_owned(),
            ));
        }
    };
    if items.len() > 8 {
        return Err(EdsError::BadQuery("sort has more than 8 keys".to_owned()));
    }
    items
        .into_iter()
        .map(|item| {
            let by = item
                .get("sortBy")
                .and_then(Value::as_str)
                .ok_or_else(|| EdsError::BadQuery("each sort key needs sortBy".to_owned()))?;
            let desc = match item.get("direction").and_then(Value::as_str) {
                None | Some("asc") => false,
                Some("desc") => true,
                Some(other) => {
                    return Err(EdsError::BadQuery(format!(
                        "sort direction {other:?}: asc or desc"
                    )));
                }
            };
            Ok(SortKey {
                path: Path::parse(by)?,
                desc,
            })
        })
        .collect()
}

/// Parses `q`.
pub fn parse_filter(v: &Value) -> Result<Filter, EdsError> {
    let mut budget = MAX_TERMS;
    filter(v, 0, &mut budget)
}

fn spend(budget: &mut usize, n: usize) -> Result<(), EdsError> {
    if n > *budget {
        return Err(EdsError::BadQuery(format!(
            "the query has more than {MAX_TERMS} conditions and values"
        )));
    }
    *budget -= n;
    Ok(())
}

fn deeper(depth: usize) -> Result<usize, EdsError> {
    if depth >= MAX_DEPTH {
        return Err(EdsError::BadQuery(format!(
            "the query nests deeper than {MAX_DEPTH} levels"
        )));
    }
    Ok(depth + 1)
}

fn filter(v: &Value, depth: usize, budget: &mut usize) -> Result<Filter, EdsError> {
    let Value::Object(m) = v else {
        return Err(EdsError::BadQuery(
            "q must be a JSON object, like {\"completed\":true}".to_owned(),
        ));
    };
    let mut all = Vec::new();
    for (k, v) in m {
        spend(budget, 1)?;
        let f = match k.as_str() {
            "$and" | "$or" | "$nor" => {
                let Value::Array(items) = v else {
                    return Err(EdsError::BadQuery(format!("{k} takes a list of queries")));
                };
                if items.is_empty() {
                    return Err(EdsError::BadQuery(format!("{k} takes a non-empty list")));
                }
                let d = deeper(depth)?;
                let fs = items
                    .iter()
                    .map(|i| filter(i, d, budget))
                    .collect::<Result<Vec<_>, _>>()?;
                match k.as_str() {
                    "$and" => Filter::And(fs),
                    "$or" => Filter::Or(fs),
                    _ => Filter::Nor(fs),
                }
            }
            op if op.starts_with('$') => {
                return Err(EdsError::BadQuery(format!("unknown operator {op}")));
            }
            path => Filter::At(Path::parse(path)?, cond(v, depth, budget)?),
        };
        all.push(f);
    }
    Ok(if all.len() == 1 {
        all.remove(0)
    } else {
        Filter::And(all)
    })
}

/// A value's conditions: an object whose keys all start with `$` is operators; anything
/// else is equality.
fn cond(v: &Value, depth: usize, budget: &mut usize) -> Result<Cond, EdsError> {
    let Value::Object(m) = v else {
        return Ok(Cond::Eq(v.clone()));
    };
    let ops = m.keys().filter(|k| k.starts_with('$')).count();
    if ops == 0 || is_special(m) {
        return Ok(Cond::Eq(normalize(v)));
    }
    if ops != m.len() {
        return Err(EdsError::BadQuery(
            "an object mixes operators and properties".to_owned(),
        ));
    }
    let mut conds = Vec::new();
    let options = m.get("$options").and_then(Value::as_str).unwrap_or("");
    for (op, arg) in m {
        spend(budget, 1)?;
        let c = match op.as_str() {
            "$eq" => Cond::Eq(normalize(arg)),
            "$ne" => Cond::Ne(normalize(arg)),
            "$gt" => Cond::Gt(scalar(op, arg)?),
            "$gte" => Cond::Gte(scalar(op, arg)?),
            "$lt" => Cond::Lt(scalar(op, arg)?),
            "$lte" => Cond::Lte(scalar(op, arg)?),
            "$in" => Cond::In(list(op, arg, budget)?),
            "$nin" => Cond::Nin(list(op, arg, budget)?),
            "$all" => Cond::All(list(op, arg, budget)?),
            "$exists" => Cond::Exists(match arg {
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => return Err(EdsError::BadQuery("$exists takes true or false".to_owned())),
            }),
            "$size" => Cond::Size(
                arg.as_u64()
                    .ok_or_else(|| EdsError::BadQuery("$size takes a whole number".to_owned()))?,
            ),
            "$regex" => {
                let Value::String(re) = arg else {
                    return Err(EdsError::BadQuery("$regex takes a string".to_owned()));
                };
                Cond::Regex(regex_with(re, options)?)
            }
            "$options" => continue,
            "$not" => {
                let d = deeper(depth)?;
                match cond(arg, d, budget)? {
                    Cond::Both(cs) => Cond::Not(cs),
                    Cond::Eq(_) => {
                        return Err(EdsError::BadQuery(
                            "$not takes operators, like {\"$not\":{\"$gt\":5}}".to_owned(),
                        ));
                    }
                    c => Cond::Not(vec![c]),
                }
            }
            "$elemMatch" => {
                let d = deeper(depth)?;
                let Value::Object(inner) = arg else {
                    return Err(EdsError::BadQuery("$elemMatch takes an object".to_owned()));
                };
                let on_element = !inner.is_empty()
                    && inner.keys().all(|k| k.starts_with('$'))
                    && !inner
                        .keys()
                        .any(|k| matches!(k.as_str(), "$and" | "$or" | "$nor"));
                if on_element {
                    Cond::ElemMatch(Box::new(Filter::Here(cond(arg, d, budget)?)))
                } else {
                    Cond::ElemMatch(Box::new(filter(arg, d, budget)?))
                }
            }
            other => return Err(EdsError::BadQuery(format!("unknown operator {other}"))),
        };
        conds.push(c);
    }
    if m.contains_key("$options") && !m.contains_key("$regex") {
        return Err(EdsError::BadQuery("$options goes with $regex".to_owned()));
    }
    Ok(if conds.len() == 1 {
        conds.remove(0)
    } else {
        Cond::Both(conds)
    })
}

/// `{"$type":…,"$value":…}`: one of the special encodings, taken as a value.
fn is_special(m: &Map<String, Value>) -> bool {
    m.len() == 2 && m.contains_key("$type") && m.contains_key("$value")
}

/// A value as stored: the special encodings of the Node SDK (`$type` ref, time, geoloc)
/// become the plain forms qtenginio uses and the store keeps.
pub fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(m) if is_special(m) => {
            let inner = &m["$value"];
            match m["$type"].as_str() {
                Some("ref") => normalize(inner),
                Some("time") => match inner {
                    Value::Number(n) => n
                        .as_f64()
                        .map(|ms| Value::String(crate::time::rfc3339_from_millis(ms)))
                        .unwrap_or(Value::Null),
                    other => other.clone(),
                },
                // [lon, lat], MongoDB's order (our decision for the spec's open point).
                Some("geoloc") => inner.clone(),
                _ => v.clone(),
            }
        }
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), normalize(v))).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        other => other.clone(),
    }
}

fn scalar(op: &str, v: &Value) -> Result<Value, EdsError> {
    match normalize(v) {
        v @ (Value::Number(_) | Value::String(_)) => Ok(v),
        _ => Err(EdsError::BadQuery(format!(
            "{op} compares with a number or a string"
        ))),
    }
}

fn list(op: &str, v: &Value, budget: &mut usize) -> Result<Vec<Value>, EdsError> {
    let Value::Array(items) = v else {
        return Err(EdsError::BadQuery(format!("{op} takes a list")));
    };
    spend(budget, items.len())?;
    Ok(items.iter().map(normalize).collect())
}

/// A regular expression with MongoDB's `$options` as inline flags, checked now (the regex
/// crate runs in linear time and bounds the compiled size, so no pattern can stall a query).
fn regex_with(re: &str, options: &str) -> Result<String, EdsError> {
    if re.len() > 1024 {
        return Err(EdsError::BadQuery(
            "$regex is longer than 1024 bytes".to_owned(),
        ));
    }
    let mut flags = String::new();
    for c in options.chars() {
        match c {
            'i' | 'm' | 's' | 'x' => flags.push(c),
            other => {
                return Err(EdsError::BadQuery(format!(
                    "$options {other:?}: i, m, s or x"
                )));
            }
        }
    }
    let full = if flags.is_empty() {
        re.to_owned()
    } else {
        format!("(?{flags}){re}")
    };
    regex::RegexBuilder::new(&full)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| EdsError::BadQuery(format!("$regex: {e}")))?;
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &str) -> Path {
        Path::parse(s).unwrap()
    }

    #[test]
    fn equality_operators_and_paths_parse() {
        assert_eq!(
            parse_filter(&json!({"completed": true})).unwrap(),
            Filter::At(p("completed"), Cond::Eq(json!(true)))
        );
        assert_eq!(
            parse_filter(&json!({"file.id": {"$exists": true}})).unwrap(),
            Filter::At(p("file.id"), Cond::Exists(true))
        );
        assert_eq!(
            parse_filter(&json!({"n": {"$gt": 1, "$lte": 5}})).unwrap(),
            Filter::At(
                p("n"),
                Cond::Both(vec![Cond::Gt(json!(1)), Cond::Lte(json!(5))])
            )
        );
        assert_eq!(
            parse_filter(&json!({"$or": [{"a": 1}, {"b": {"$in": [1, 2]}}]})).unwrap(),
            Filter::Or(vec![
                Filter::At(p("a"), Cond::Eq(json!(1))),
                Filter::At(p("b"), Cond::In(vec![json!(1), json!(2)])),
            ])
        );
        // A ref in the Node SDK's form is the plain ref.
        assert_eq!(
            parse_filter(
                &json!({"list": {"$type": "ref", "$value": {"id": "x", "objectType": "objects.l"}}})
            )
            .unwrap(),
            Filter::At(
                p("list"),
                Cond::Eq(json!({"id": "x", "objectType": "objects.l"}))
            )
        );
        assert_eq!(p("tags.0").json_path(), "$.\"tags\"[0]");
        assert_eq!(p("a.b").json_path(), "$.\"a\".\"b\"");
    }

    #[test]
    fn bad_queries_are_refused_with_a_reason() {
        for (q, says) in [
            (json!([1]), "must be a JSON object"),
            (json!({"$where": "1"}), "unknown operator $where"),
            (json!({"a": {"$foo": 1}}), "unknown operator $foo"),
            (json!({"a": {"$gt": 1, "b": 2}}), "mixes"),
            (json!({"a\"); DROP TABLE objects; --": 1}), "quote"),
            (json!({"a..b": 1}), "empty part"),
            (json!({"a": {"$regex": "("}}), "$regex"),
            (json!({"a": {"$gt": [1]}}), "compares with"),
            (json!({"a": {"$size": -1}}), "$size"),
            (json!({"a": {"$not": 5}}), "$not takes operators"),
        ] {
            let e = parse_filter(&q).unwrap_err().to_string();
            assert!(e.contains(says), "{q}: {e}");
        }
    }

    #[test]
    fn huge_and_deep_queries_are_bounded() {
        let many: Vec<u32> = (0..100_000).collect();
        let e = parse_filter(&json!({"a": {"$in": many}})).unwrap_err();
        assert!(e.to_string().contains("more than 1000"), "{e}");
        let mut deep = json!({"a": 1});
        for _ in 0..20 {
            deep = json!({"$and": [deep]});
        }
        let e = parse_filter(&deep).unwrap_err();
        assert!(e.to_string().contains("nests deeper"), "{e}");
    }

    #[test]
    fn params_as_the_clients_send_them() {
        // qtenginio: raw JSON with a few characters escaped, `count=` as a flag.
        let q = parse_params(Some(
            "q=%7B%22completed%22:true%7D&limit=5&offset=2&count=&sort=[{\"sortBy\":\"title\",\"direction\":\"desc\"}]",
        ))
        .unwrap();
        assert_eq!(q.filter, Filter::At(p("completed"), Cond::Eq(json!(true))));
        assert_eq!((q.limit, q.offset, q.count), (5, 2, true));
        assert_eq!(
            q.sort,
            vec![SortKey {
                path: p("title"),
                desc: true
            }]
        );
        assert_eq!(q.echo["query"], json!({"completed": true}));
        let q = parse_params(None).unwrap();
        assert_eq!((q.limit, q.offset, q.count), (100, 0, false));
        assert!(parse_params(Some("limit=abc")).is_err());
        assert!(parse_params(Some("limit=100000")).is_err());
        assert!(parse_params(Some("sort=[{\"sortBy\":\"a\",\"direction\":\"up\"}]")).is_err());
        assert!(parse_params(Some("q={bad")).is_err());
    }
}
