//! The forges' own published API descriptions (tests/fixtures/forges/: GitHub's
//! OpenAPI 3.0, Gitea's Swagger 2.0), read as contracts: each operation's method,
//! path and parameters, its request-body schema, and each response's schema and
//! official examples. [`validate`] checks a JSON value against one of those schemas,
//! for the loopback forge that checks every request kubescribe sends (issue 16).
//!
//! The validator knows exactly the schema keywords these descriptions use (counted
//! over every operation: `type`, `nullable`, `properties`, `required`, `items`,
//! `enum`, `additionalProperties`, `oneOf`, `$ref`, `minLength`, `maxLength`,
//! `minItems`, `uniqueItems`, `format`) and fails on any other, so a description
//! that grows a keyword is noticed, never half-checked. `format` is an annotation, as
//! JSON Schema has it by default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// One operation of a forge's API.
pub struct Operation {
    pub forge: String,
    pub id: String,
    pub method: String,
    /// The path template (`/repos/{owner}/{repo}/pulls`), without Gitea's `/api/v1`.
    pub path: String,
    pub path_params: Vec<String>,
    pub query_params: Vec<String>,
    pub body_schema: Option<Value>,
    pub body_required: bool,
    /// The schema of each query parameter, where the description gives one.
    pub query_schemas: BTreeMap<String, Value>,
    /// By status code: the response schema, if published, and its examples.
    pub responses: BTreeMap<u16, (Option<Value>, Vec<Value>)>,
    /// The file, for `$ref`s into its `definitions`.
    root: Value,
}

pub fn forges_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/forges")
}

/// Every operation `forge` (`github`, `gitea`, `gitlab`) describes.
pub fn operations(forge: &str) -> Vec<Operation> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(forges_dir().join(forge))
        .unwrap_or_else(|e| panic!("tests/fixtures/forges/{forge}: {e}"))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|file| {
            let root: Value = serde_json::from_slice(&std::fs::read(file).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let pointer = |p: &Value| -> Option<Value> {
                let p = p.as_str()?;
                Some(
                    root.pointer(p)
                        .unwrap_or_else(|| panic!("{}: no {p}", file.display()))
                        .clone(),
                )
            };
            if root.get("contract").is_none() {
                return gitlab_operation(file, root);
            }
            let contract = &root["contract"];
            let names = |key: &str| -> Vec<String> {
                contract[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            };
            let responses = contract["responses"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(code, response)| {
                    let examples = response["examples"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(pointer)
                        .collect();
                    (
                        code.parse().unwrap(),
                        (pointer(&response["schema"]), examples),
                    )
                })
                .collect();
            Operation {
                forge: forge.to_owned(),
                id: root["operationId"].as_str().unwrap_or_default().to_owned(),
                method: root["method"].as_str().unwrap().to_owned(),
                path: root["path"].as_str().unwrap().to_owned(),
                path_params: names("pathParams"),
                query_params: names("queryParams"),
                query_schemas: query_schemas(&root["operation"]["parameters"]),
                body_schema: pointer(&contract["requestBodySchema"]),
                body_required: contract["requestBodyRequired"].as_bool().unwrap_or(false),
                responses,
                root: root.clone(),
            }
        })
        // GitLab's push options are not an API operation.
        .filter(|op| !op.method.is_empty())
        .collect()
}

/// A GitLab operation: GitLab publishes attribute tables, not schemas, so the
/// contract is built from them: the documented path and query parameters, a body
/// of exactly the documented attributes (required ones present, each of its
/// documented type where that is a JSON type), and the documented example.
fn gitlab_operation(file: &Path, root: Value) -> Operation {
    let params = root["parameters"].as_array().cloned().unwrap_or_default();
    let named = |place: &str| -> Vec<String> {
        params
            .iter()
            .filter(|p| p["in"] == place)
            .filter_map(|p| p["name"].as_str())
            .map(str::to_owned)
            .collect()
    };
    let body_schema = root["requestBody"].as_object().map(|body| {
        let mut properties = serde_json::Map::new();
        for param in params.iter().filter(|p| p["in"] == "body") {
            let kind = match param["type"].as_str().unwrap_or_default() {
                "string" => Some("string"),
                "boolean" => Some("boolean"),
                "integer" => Some("integer"),
                "integer array" | "string array" | "array" => Some("array"),
                // "integer or string", "datetime", "Hash": no JSON type to check.
                _ => None,
            };
            let schema = match kind {
                Some(kind) => serde_json::json!({ "type": kind }),
                None => serde_json::json!({}),
            };
            properties.insert(param["name"].as_str().unwrap().to_owned(), schema);
        }
        serde_json::json!({
            "type": "object",
            "properties": properties,
            "required": body.get("requiredAttributes").cloned().unwrap_or(Value::Array(vec![])),
        })
    });
    let responses = root["responses"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(code, response)| {
            let examples = response.get("example").cloned().into_iter().collect();
            (code.parse().unwrap(), (None, examples))
        })
        .collect();
    Operation {
        forge: "gitlab".to_owned(),
        id: file.file_stem().unwrap().to_string_lossy().into_owned(),
        method: root["method"].as_str().unwrap_or_default().to_owned(),
        path: root["path"].as_str().unwrap_or_default().to_owned(),
        path_params: named("path"),
        query_params: named("query"),
        query_schemas: params
            .iter()
            .filter(|p| p["in"] == "query")
            .filter_map(|p| {
                let kind = match p["type"].as_str()? {
                    "integer" => "integer",
                    "boolean" => "boolean",
                    _ => return None,
                };
                Some((
                    p["name"].as_str()?.to_owned(),
                    serde_json::json!({"type": kind}),
                ))
            })
            .collect(),
        body_required: root["requestBody"]["requiredAttributes"]
            .as_array()
            .is_some_and(|r| !r.is_empty()),
        body_schema,
        responses,
        root,
    }
}

/// Query parameters' schemas: OpenAPI 3's `schema`, or Swagger 2's own `type`
/// and `enum`.
fn query_schemas(parameters: &Value) -> BTreeMap<String, Value> {
    parameters
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["in"] == "query")
        .filter_map(|p| {
            let name = p["name"].as_str()?.to_owned();
            let schema = match p.get("schema") {
                Some(schema) => schema.clone(),
                None => {
                    let mut schema = serde_json::Map::new();
                    for key in ["type", "enum"] {
                        if let Some(value) = p.get(key) {
                            schema.insert(key.to_owned(), value.clone());
                        }
                    }
                    Value::Object(schema)
                }
            };
            Some((name, schema))
        })
        .collect()
}

impl Operation {
    /// Checks one query parameter's value (as sent, a string) against its
    /// schema's type and `enum`.
    pub fn check_query(&self, name: &str, value: &str) -> Result<(), String> {
        let Some(schema) = self.query_schemas.get(name) else {
            return Ok(());
        };
        let typed = match schema["type"].as_str() {
            Some("integer") => value
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| format!("query {name}={value:?} is not an integer"))?,
            Some("boolean") => value
                .parse::<bool>()
                .map(Value::from)
                .map_err(|_| format!("query {name}={value:?} is not a boolean"))?,
            _ => Value::from(value),
        };
        if let Some(allowed) = schema["enum"].as_array() {
            if !allowed.contains(&typed) {
                return Err(format!(
                    "query {name}={value:?} is not one of {}",
                    Value::Array(allowed.clone())
                ));
            }
        }
        Ok(())
    }

    /// Checks a request body: it must match the schema, and (since no published
    /// schema forbids them, and a misspelt field would pass unnoticed) name no
    /// property the schema does not declare.
    pub fn check_body(&self, body: Option<&Value>) -> Result<(), String> {
        match (body, &self.body_schema) {
            (None, _) if self.body_required => Err("the request has no body".to_owned()),
            (None, _) => Ok(()),
            (Some(_), None) => Err("this operation takes no body".to_owned()),
            (Some(body), Some(schema)) => check(schema, body, &self.root, true, "body"),
        }
    }

    /// Checks a response body against the published schema for `status`.
    pub fn check_response(&self, status: u16, body: &Value) -> Result<(), String> {
        match self.responses.get(&status) {
            None => Err(format!(
                "{} {} publishes no {status}",
                self.method, self.path
            )),
            Some((None, _)) => Ok(()),
            Some((Some(schema), _)) => check(schema, body, &self.root, false, "response"),
        }
    }
}

/// Checks `value` against an OpenAPI schema: `Err` names the first place that does
/// not match, as a JSON pointer from `at`.
fn check(
    schema: &Value,
    value: &Value,
    root: &Value,
    strict: bool,
    at: &str,
) -> Result<(), String> {
    let Some(schema) = schema.as_object() else {
        return Err(format!("{at}: the schema is not an object"));
    };
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let target = reference
            .strip_prefix('#')
            .and_then(|p| root.pointer(p))
            .ok_or_else(|| format!("{at}: cannot resolve {reference}"))?;
        return check(target, value, root, strict, at);
    }
    for key in schema.keys() {
        const KNOWN: &[&str] = &[
            "type",
            "nullable",
            "properties",
            "required",
            "items",
            "enum",
            "additionalProperties",
            "oneOf",
            "minLength",
            "maxLength",
            "minItems",
            "uniqueItems",
            "format",
            "description",
            "example",
            "default",
            "title",
            "deprecated",
            "readOnly",
            "writeOnly",
            "externalDocs",
        ];
        if !KNOWN.contains(&key.as_str()) && !key.starts_with("x-") {
            return Err(format!(
                "{at}: the schema uses `{key}`, which this validator does not know"
            ));
        }
    }
    if value.is_null() && schema.get("nullable") == Some(&Value::Bool(true)) {
        return Ok(());
    }
    if let Some(branches) = schema.get("oneOf").and_then(Value::as_array) {
        let matching = branches
            .iter()
            .filter(|branch| check(branch, value, root, strict, at).is_ok())
            .count();
        // A null that several nullable branches allow is still one value.
        if matching == 1 || (matching > 1 && value.is_null()) {
            return Ok(());
        }
        return Err(format!(
            "{at}: matches {matching} of the {} `oneOf` schemas, not one",
            branches.len()
        ));
    }
    if let Some(kind) = schema.get("type").and_then(Value::as_str) {
        let fits = match kind {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "boolean" => value.is_boolean(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "null" => value.is_null(),
            other => return Err(format!("{at}: unknown type `{other}`")),
        };
        if !fits {
            return Err(format!("{at}: {value} is not of type {kind}"));
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            return Err(format!(
                "{at}: {value} is not one of {}",
                Value::Array(allowed.clone())
            ));
        }
    }
    if let Some(text) = value.as_str() {
        let length = text.chars().count() as u64;
        if schema
            .get("minLength")
            .and_then(Value::as_u64)
            .is_some_and(|min| length < min)
        {
            return Err(format!("{at}: shorter than minLength"));
        }
        if schema
            .get("maxLength")
            .and_then(Value::as_u64)
            .is_some_and(|max| length > max)
        {
            return Err(format!("{at}: longer than maxLength"));
        }
    }
    if let Some(items) = value.as_array() {
        if schema
            .get("minItems")
            .and_then(Value::as_u64)
            .is_some_and(|min| (items.len() as u64) < min)
        {
            return Err(format!("{at}: fewer than minItems"));
        }
        if let Some(item) = schema.get("items") {
            for (i, element) in items.iter().enumerate() {
                check(item, element, root, strict, &format!("{at}/{i}"))?;
            }
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        for name in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = name.as_str().unwrap_or_default();
            if !object.contains_key(name) {
                return Err(format!("{at}: the required property `{name}` is missing"));
            }
        }
        for (name, field) in object {
            let at = format!("{at}/{name}");
            match (
                properties.and_then(|p| p.get(name)),
                schema.get("additionalProperties"),
            ) {
                (Some(declared), _) => check(declared, field, root, strict, &at)?,
                (None, Some(Value::Object(extra))) => {
                    check(&Value::Object(extra.clone()), field, root, strict, &at)?
                }
                (None, Some(Value::Bool(false))) => {
                    return Err(format!("{at}: not a property the schema allows"))
                }
                (None, _) if strict && properties.is_some() => {
                    return Err(format!("{at}: not a property the schema declares"))
                }
                (None, _) => {}
            }
        }
    }
    Ok(())
}
