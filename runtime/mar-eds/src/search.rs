//! Full-text search (`GET /v1/search`, qtc-api.md §2.10) over the properties a type declares
//! `indexed`, in both clients' encodings: qtenginio's `objectTypes[]=…` (repeated) with
//! `search={"phrase":…,"properties":[…]}`, and the Node SDK's comma-separated `objectTypes`
//! and `properties`, with `defaultOperator`.
//!
//! The phrase becomes an FTS5 expression in which every word is quoted, so no character a
//! client types is FTS5 syntax: only the words `AND`, `OR` and `NOT` written in capitals stay
//! operators (as in Enginio's examples, "cat OR dog"). `near` (geo search) is refused: this
//! store keeps no geo index (a decision recorded in docs/eds.md).

use serde_json::Value;

use crate::EdsError;
use crate::storage::Search;

/// The FTS5 expression for a phrase; `or` joins bare words with OR instead of AND.
pub fn fts_expression(phrase: &str, or: bool) -> Result<String, EdsError> {
    let mut out: Vec<String> = Vec::new();
    let mut last_was_word = false;
    for word in phrase.split_whitespace() {
        match word {
            "AND" | "OR" | "NOT" if last_was_word => {
                out.push(word.to_owned());
                last_was_word = false;
            }
            "AND" | "OR" | "NOT" => {}
            w => {
                if last_was_word && or {
                    out.push("OR".to_owned());
                }
                out.push(format!("\"{}\"", w.replace('"', "\"\"")));
                last_was_word = true;
            }
        }
    }
    // A trailing operator has nothing to join.
    while out
        .last()
        .is_some_and(|w| matches!(w.as_str(), "AND" | "OR" | "NOT"))
    {
        out.pop();
    }
    if out.is_empty() {
        return Err(EdsError::BadQuery(
            "search.phrase has no words to look for".to_owned(),
        ));
    }
    if out.len() > 64 {
        return Err(EdsError::BadQuery(
            "search.phrase has more than 64 words".to_owned(),
        ));
    }
    Ok(out.join(" "))
}

/// Parses a search request's query string (limits from [`crate::query::parse_params`]).
pub fn parse(query_string: Option<&str>, limit: u64, offset: u64) -> Result<Search, EdsError> {
    let mut types = Vec::new();
    let mut search = None;
    for pair in query_string
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (
            mar_http::percent_decode(k, true),
            mar_http::percent_decode(v, true),
        );
        match k.as_str() {
            "objectTypes[]" => types.push(v),
            "objectTypes" => types.extend(v.split(',').map(str::to_owned)),
            "search" => {
                search =
                    Some(serde_json::from_str::<Value>(&v).map_err(|e| {
                        EdsError::BadQuery(format!("search is not valid JSON: {e}"))
                    })?)
            }
            _ => {}
        }
    }
    let search = search.ok_or_else(|| EdsError::BadQuery("search is missing".to_owned()))?;
    let phrase = search
        .get("phrase")
        .and_then(Value::as_str)
        .ok_or_else(|| EdsError::BadQuery("search.phrase is missing".to_owned()))?;
    if search.get("near").is_some_and(|n| !n.is_null()) {
        return Err(EdsError::BadQuery(
            "search.near (geo search) is not supported by this data store".to_owned(),
        ));
    }
    let or = match search.get("defaultOperator").and_then(Value::as_str) {
        None => false,
        Some(op) if op.eq_ignore_ascii_case("and") => false,
        Some(op) if op.eq_ignore_ascii_case("or") => true,
        Some(op) => {
            return Err(EdsError::BadQuery(format!(
                "search.defaultOperator {op:?}: AND or OR"
            )));
        }
    };
    let properties: Vec<String> = match search.get("properties") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|p| {
                p.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| EdsError::BadQuery("search.properties must be names".to_owned()))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(EdsError::BadQuery(
                "search.properties must be a list or a comma-separated string".to_owned(),
            ));
        }
    };
    let types = types
        .iter()
        .filter(|t| !t.is_empty())
        .map(|t| crate::types::type_name(t))
        .collect::<Result<Vec<_>, _>>()?;
    if types.is_empty() {
        return Err(EdsError::BadQuery(
            "objectTypes is missing: the types to search".to_owned(),
        ));
    }
    if types.len() > 32 || properties.len() > 64 {
        return Err(EdsError::BadQuery(
            "at most 32 object types and 64 properties".to_owned(),
        ));
    }
    Ok(Search {
        types,
        matching: fts_expression(phrase, or)?,
        properties,
        limit,
        offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phrases_become_quoted_fts_expressions() {
        assert_eq!(
            fts_expression("cat OR dog", false).unwrap(),
            r#""cat" OR "dog""#
        );
        assert_eq!(
            fts_expression("cat dog", true).unwrap(),
            r#""cat" OR "dog""#
        );
        assert_eq!(fts_expression("cat dog", false).unwrap(), r#""cat" "dog""#);
        // Syntax a client types is text, never FTS5 syntax.
        assert_eq!(
            fts_expression(r#"a" OR title:* NEAR("#, false).unwrap(),
            r#""a""" OR "title:*" "NEAR(""#
        );
        assert_eq!(fts_expression("OR cat AND", false).unwrap(), r#""cat""#);
        assert!(fts_expression("  ", false).is_err());
    }

    #[test]
    fn both_clients_encodings() {
        let qt = parse(
            Some(r#"objectTypes[]=objects.a&objectTypes[]=objects.b&search={"phrase":"cat","properties":["title"]}"#),
            100,
            0,
        )
        .unwrap();
        assert_eq!(qt.types, ["objects.a", "objects.b"]);
        assert_eq!(qt.properties, ["title"]);
        let node = parse(
            Some(r#"search=%7B%22phrase%22%3A%22cat%20dog%22%2C%22properties%22%3A%22title%2Cbody%22%2C%22defaultOperator%22%3A%22OR%22%7D&objectTypes=objects.a%2Cobjects.b"#),
            100,
            0,
        )
        .unwrap();
        assert_eq!(node.types, ["objects.a", "objects.b"]);
        assert_eq!(node.properties, ["title", "body"]);
        assert_eq!(node.matching, r#""cat" OR "dog""#);
        assert!(
            parse(
                Some(r#"objectTypes=objects.a&search={"phrase":"x","near":{"x":1}}"#),
                1,
                0
            )
            .is_err()
        );
        assert!(parse(Some(r#"search={"phrase":"x"}"#), 1, 0).is_err());
    }
}
