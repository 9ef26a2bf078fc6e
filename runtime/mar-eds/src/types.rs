//! Object types (`POST /v1/object_types`, qtc-api.md §4.4): declared properties with their
//! types, `indexed` flags (equality queries on them use an index; full-text search covers
//! them) and `required` validators, ref targets, `settings.websocket`, and this server's
//! additions: the type's `permissions` and its `accessControlListTemplate`. Types are
//! optional: an undeclared type stores any JSON (schemaless), as Enginio's getting-started
//! docs did.

use serde_json::{Map, Value, json};

use crate::EdsError;
use crate::acl::{Acl, TypePerms};

/// One declared property.
#[derive(Debug, Clone, PartialEq)]
pub struct PropDef {
    /// Its name.
    pub name: String,
    /// `string`, `number`, `boolean`, `ref`, `hash`, `array`, `time` or `objectid`.
    pub kind: String,
    /// Equality queries on it use an index; search covers it.
    pub indexed: bool,
    /// An object without it is refused (`ValidationFailed`, "is required").
    pub required: bool,
}

const KINDS: &[&str] = &[
    "string", "number", "boolean", "ref", "hash", "array", "time", "objectid",
];

/// A declared type.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeDef {
    /// `objects.NAME`, `users` or `usergroups`.
    pub name: String,
    /// Its declared properties.
    pub properties: Vec<PropDef>,
    /// Who may list and create (defaults when not declared).
    pub permissions: Option<TypePerms>,
    /// The ACL new objects get.
    pub template: Option<Acl>,
    /// The definition as given, answered back.
    pub raw: Value,
}

impl TypeDef {
    /// Parses a definition: `{"name":"todos","properties":[…],"settings":{…}}`.
    pub fn parse(v: &Value) -> Result<Self, EdsError> {
        let invalid = |property: &str, message: &str| EdsError::Validation {
            property: property.to_owned(),
            message: message.to_owned(),
        };
        let Value::Object(m) = v else {
            return Err(invalid("name", "the body must be an object"));
        };
        let short = m
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("name", "can't be blank"))?;
        let name = type_name(short)?;
        let mut properties = Vec::new();
        if let Some(props) = m.get("properties") {
            let Value::Array(items) = props else {
                return Err(invalid("properties", "must be a list"));
            };
            if items.len() > 256 {
                return Err(invalid("properties", "more than 256"));
            }
            for p in items {
                let pname = p
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("properties.name", "can't be blank"))?;
                check_property_name(pname)?;
                let kind = p.get("type").and_then(Value::as_str).unwrap_or("string");
                if !KINDS.contains(&kind) {
                    return Err(invalid(
                        "properties.type",
                        &format!("{kind:?} is not one of {}", KINDS.join(", ")),
                    ));
                }
                let required = p.get("required").and_then(Value::as_bool).unwrap_or(false)
                    || p.get("validators")
                        .and_then(Value::as_array)
                        .is_some_and(|vs| {
                            vs.iter()
                                .any(|v| v.get("type").and_then(Value::as_str) == Some("required"))
                        });
                properties.push(PropDef {
                    name: pname.to_owned(),
                    kind: kind.to_owned(),
                    indexed: p.get("indexed").and_then(Value::as_bool).unwrap_or(false),
                    required,
                });
            }
        }
        let permissions = match m.get("permissions") {
            None | Some(Value::Null) => None,
            Some(p) => Some(TypePerms::parse(p, &name)?),
        };
        let template = match m.get("accessControlListTemplate") {
            None | Some(Value::Null) => None,
            Some(t) => Some(Acl::parse(t)?),
        };
        let mut raw = v.clone();
        raw["name"] = json!(short);
        Ok(TypeDef {
            name,
            properties,
            permissions,
            template,
            raw,
        })
    }

    /// The names of its indexed properties.
    pub fn indexed(&self) -> Vec<String> {
        self.properties
            .iter()
            .filter(|p| p.indexed)
            .map(|p| p.name.clone())
            .collect()
    }

    /// Checks an object's custom properties against the declaration (`complete`: the whole
    /// object, so required properties must be there).
    pub fn validate(&self, obj: &Map<String, Value>, complete: bool) -> Result<(), EdsError> {
        for p in &self.properties {
            match obj.get(&p.name) {
                None if complete && p.required => {
                    return Err(EdsError::Validation {
                        property: p.name.clone(),
                        message: "is required".to_owned(),
                    });
                }
                None | Some(Value::Null) => {}
                Some(v) => {
                    let ok = match p.kind.as_str() {
                        "string" | "objectid" | "time" => v.is_string(),
                        "number" => v.is_number(),
                        "boolean" => v.is_boolean(),
                        "ref" => v.get("id").is_some_and(Value::is_string),
                        "hash" => v.is_object(),
                        "array" => v.is_array(),
                        _ => true,
                    };
                    if !ok {
                        return Err(EdsError::Validation {
                            property: p.name.clone(),
                            message: format!("must be a {}", p.kind),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// `todos`, `objects.todos`, `users` or `usergroups` → the stored type name.
pub fn type_name(s: &str) -> Result<String, EdsError> {
    let short = s.strip_prefix("objects.").unwrap_or(s);
    if matches!(s, "users" | "usergroups") {
        return Ok(s.to_owned());
    }
    if short.is_empty()
        || short.len() > 64
        || !short
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(EdsError::BadRequest(format!(
            "{s:?} is not an object type: letters, digits, _ and -, at most 64"
        )));
    }
    Ok(format!("objects.{short}"))
}

/// A property name a client may write: not reserved-looking (`$…`), no dot (paths use it),
/// no control characters, at most 256 bytes.
pub fn check_property_name(name: &str) -> Result<(), EdsError> {
    if name.is_empty()
        || name.len() > 256
        || name.starts_with('$')
        || name.contains('.')
        || name
            .chars()
            .any(|c| c.is_control() || c == '"' || c == '\\')
    {
        return Err(EdsError::Validation {
            property: name.chars().take(64).collect(),
            message: "is not a valid property name (no $ at the start, no dots, quotes or control characters)".to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_parse_and_validate() {
        let t = TypeDef::parse(&json!({
            "name": "todos",
            "properties": [
                {"name": "title", "type": "string", "indexed": true, "validators": [{"type": "required"}]},
                {"name": "done", "type": "boolean"},
            ],
            "settings": {"websocket": true},
        }))
        .unwrap();
        assert_eq!(t.name, "objects.todos");
        assert_eq!(t.indexed(), vec!["title"]);
        let obj = |v: Value| v.as_object().unwrap().clone();
        assert!(
            t.validate(&obj(json!({"title": "a", "done": false})), true)
                .is_ok()
        );
        let e = t.validate(&obj(json!({"done": false})), true).unwrap_err();
        assert_eq!(e.to_string(), "title is required");
        assert!(t.validate(&obj(json!({"done": false})), false).is_ok());
        assert!(t.validate(&obj(json!({"title": 5})), true).is_err());
        assert!(TypeDef::parse(&json!({"name": "bad name"})).is_err());
        assert!(TypeDef::parse(&json!({"name": "t", "properties": [{"name": "a.b"}]})).is_err());
        assert!(
            TypeDef::parse(&json!({"name": "t", "properties": [{"name": "a", "type": "blob"}]}))
                .is_err()
        );
        assert_eq!(type_name("objects.todos").unwrap(), "objects.todos");
        assert!(type_name("../etc").is_err());
    }
}
