//! Parameter schemas: checking a catalog's JSON Schemas when a broker is registered, and
//! checking a user's parameters against the plan's schema before the broker is called.
//!
//! The spec asks platforms to support JSON Schema draft-04 at least; this is the subset that
//! parameter schemas use in practice — `type` (one or a list), `properties`, `required`,
//! `additionalProperties` (boolean or schema), `enum`, `minimum`/`maximum` (with draft-04's
//! boolean `exclusiveMinimum`/`exclusiveMaximum`), `minLength`/`maxLength`, `minItems`/
//! `maxItems`, `items`, `allOf`/`anyOf`/`oneOf`/`not` and local `$ref`s (`#/definitions/...`).
//! Keywords it does not know are ignored, as the JSON Schema rules say, so a schema using one
//! accepts more than the broker might; the broker still has the last word.
//!
//! Invariant: validation is bounded — nesting deeper than [`MAX_DEPTH`] and `$ref` chains are
//! cut off with an error, never a stack overflow — and every error names the JSON path and
//! says what was expected.

use serde_json::Value;

/// Largest schema a catalog may carry (spec: 64 kB).
pub(crate) const MAX_SCHEMA_BYTES: usize = 64 * 1024;

/// Deepest nesting of schema and value followed.
pub(crate) const MAX_DEPTH: usize = 64;

/// Why a catalog schema is not acceptable, if it is not.
pub(crate) fn schema_problem(schema: &Value) -> Option<String> {
    let Some(object) = schema.as_object() else {
        return Some("is not a JSON object".to_owned());
    };
    let size = schema.to_string().len();
    if size > MAX_SCHEMA_BYTES {
        return Some(format!(
            "is {size} bytes; the spec allows at most {MAX_SCHEMA_BYTES}"
        ));
    }
    if !object.get("$schema").is_some_and(Value::is_string) {
        return Some("has no \"$schema\" (the spec requires it)".to_owned());
    }
    if let Some(reference) = external_ref(schema, 0) {
        return Some(format!(
            "refers to {reference:?}; the spec forbids external $refs (use #/definitions/...)"
        ));
    }
    None
}

fn external_ref(value: &Value, depth: usize) -> Option<String> {
    if depth > MAX_DEPTH {
        return Some("(nesting too deep)".to_owned());
    }
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref")
                && !r.starts_with('#')
            {
                return Some(r.clone());
            }
            map.values().find_map(|v| external_ref(v, depth + 1))
        }
        Value::Array(items) => items.iter().find_map(|v| external_ref(v, depth + 1)),
        _ => None,
    }
}

/// Checks `value` against `schema`; the first few problems, each naming its path.
pub(crate) fn validate(schema: &Value, value: &Value) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    check(schema, schema, value, "parameters", 0, &mut errors);
    errors.truncate(5);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn type_matches(name: &str, value: &Value) -> bool {
    match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "number" => value.is_number(),
        "integer" => {
            value.is_i64()
                || value.is_u64()
                || value
                    .as_f64()
                    .is_some_and(|f| f.fract() == 0.0 && f.is_finite())
        }
        _ => true,
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    if pointer.is_empty() {
        return Some(root);
    }
    root.pointer(pointer)
}

fn check(
    root: &Value,
    schema: &Value,
    value: &Value,
    path: &str,
    depth: usize,
    errors: &mut Vec<String>,
) {
    if depth > MAX_DEPTH {
        errors.push(format!("{path}: nested too deeply to check"));
        return;
    }
    let Some(s) = schema.as_object() else {
        return;
    };
    if let Some(Value::String(reference)) = s.get("$ref") {
        match resolve(root, reference) {
            Some(target) => check(root, target, value, path, depth + 1, errors),
            None => errors.push(format!("{path}: the schema's $ref {reference:?} is broken")),
        }
        return;
    }
    match s.get("type") {
        Some(Value::String(t)) if !type_matches(t, value) => {
            errors.push(format!("{path}: must be {t}, not {}", kind(value)));
            return;
        }
        Some(Value::Array(types))
            if !types
                .iter()
                .filter_map(Value::as_str)
                .any(|t| type_matches(t, value)) =>
        {
            let names: Vec<&str> = types.iter().filter_map(Value::as_str).collect();
            errors.push(format!(
                "{path}: must be one of {}, not {}",
                names.join(", "),
                kind(value)
            ));
            return;
        }
        _ => {}
    }
    if let Some(Value::Array(allowed)) = s.get("enum")
        && !allowed.contains(value)
    {
        let shown: Vec<String> = allowed.iter().map(Value::to_string).collect();
        errors.push(format!(
            "{path}: must be one of {}, not {value}",
            shown.join(", ")
        ));
    }
    if let Some(n) = value.as_f64() {
        number(s, n, path, errors);
    }
    if let Some(text) = value.as_str() {
        let len = text.chars().count() as u64;
        let says = |bound: &str, n: u64| format!("{path}: must be {bound} {n} characters long");
        count(s, len, ("minLength", "maxLength"), says, errors);
    }
    if let Some(items) = value.as_array() {
        let says = |bound: &str, n: u64| format!("{path}: must have {bound} {n} items");
        count(
            s,
            items.len() as u64,
            ("minItems", "maxItems"),
            says,
            errors,
        );
        // One schema for every item, or (a tuple) one per position.
        let schemas: Vec<&Value> = match s.get("items") {
            Some(item_schema @ Value::Object(_)) => vec![item_schema; items.len()],
            Some(Value::Array(tuple)) => tuple.iter().collect(),
            _ => Vec::new(),
        };
        for (i, (item_schema, item)) in schemas.into_iter().zip(items).enumerate() {
            let at = format!("{path}[{i}]");
            check(root, item_schema, item, &at, depth + 1, errors);
        }
    }
    if let Some(object) = value.as_object() {
        properties(root, s, object, path, depth, errors);
    }
    combinators(root, s, value, path, depth, errors);
}

/// A length (of a string) or a count (of an array) checked against the schema's lower and
/// upper keywords `min_key` and `max_key`; `says` words the error for "at least"/"at most" n.
fn count(
    s: &serde_json::Map<String, Value>,
    len: u64,
    (min_key, max_key): (&str, &str),
    says: impl Fn(&str, u64) -> String,
    errors: &mut Vec<String>,
) {
    if let Some(min) = s.get(min_key).and_then(Value::as_u64)
        && len < min
    {
        errors.push(says("at least", min));
    }
    if let Some(max) = s.get(max_key).and_then(Value::as_u64)
        && len > max
    {
        errors.push(says("at most", max));
    }
}

fn number(s: &serde_json::Map<String, Value>, n: f64, path: &str, errors: &mut Vec<String>) {
    let exclusive = |k: &str| s.get(k).and_then(Value::as_bool).unwrap_or(false);
    if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
        if exclusive("exclusiveMinimum") && n <= min {
            errors.push(format!("{path}: must be greater than {min}"));
        } else if n < min {
            errors.push(format!("{path}: must be at least {min}"));
        }
    }
    if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
        if exclusive("exclusiveMaximum") && n >= max {
            errors.push(format!("{path}: must be less than {max}"));
        } else if n > max {
            errors.push(format!("{path}: must be at most {max}"));
        }
    }
}

fn properties(
    root: &Value,
    s: &serde_json::Map<String, Value>,
    object: &serde_json::Map<String, Value>,
    path: &str,
    depth: usize,
    errors: &mut Vec<String>,
) {
    if let Some(Value::Array(required)) = s.get("required") {
        for name in required.iter().filter_map(Value::as_str) {
            if !object.contains_key(name) {
                errors.push(format!("{path}: {name:?} is required"));
            }
        }
    }
    let props = s.get("properties").and_then(Value::as_object);
    for (key, item) in object {
        let child = format!("{path}.{key}");
        match props.and_then(|p| p.get(key)) {
            Some(prop_schema) => check(root, prop_schema, item, &child, depth + 1, errors),
            None => match s.get("additionalProperties") {
                Some(Value::Bool(false)) => {
                    let known: Vec<&str> = props
                        .map(|p| p.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    errors.push(format!(
                        "{path}: {key:?} is not a parameter this plan takes (it takes: {})",
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ));
                }
                Some(extra @ Value::Object(_)) => {
                    check(root, extra, item, &child, depth + 1, errors);
                }
                _ => {}
            },
        }
    }
}

fn combinators(
    root: &Value,
    s: &serde_json::Map<String, Value>,
    value: &Value,
    path: &str,
    depth: usize,
    errors: &mut Vec<String>,
) {
    let passes = |sub: &Value| {
        let mut scratch = Vec::new();
        check(root, sub, value, path, depth + 1, &mut scratch);
        scratch.is_empty()
    };
    if let Some(Value::Array(all)) = s.get("allOf") {
        for sub in all {
            check(root, sub, value, path, depth + 1, errors);
        }
    }
    if let Some(Value::Array(any)) = s.get("anyOf")
        && !any.iter().any(passes)
    {
        errors.push(format!("{path}: matches none of the allowed forms (anyOf)"));
    }
    if let Some(Value::Array(one)) = s.get("oneOf") {
        let matched = one.iter().filter(|sub| passes(sub)).count();
        if matched != 1 {
            errors.push(format!(
                "{path}: must match exactly one allowed form (oneOf), matches {matched}"
            ));
        }
    }
    if let Some(not) = s.get("not")
        && passes(not)
    {
        errors.push(format!("{path}: is a form the schema forbids (not)"));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test code")]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Value {
        json!({
            "$schema": "http://json-schema.org/draft-04/schema#",
            "type": "object",
            "additionalProperties": false,
            "required": ["size"],
            "properties": {
                "size": {"type": "integer", "minimum": 1, "maximum": 64},
                "engine": {"enum": ["innodb", "aria"]},
                "users": {"type": "array", "maxItems": 2, "items": {"$ref": "#/definitions/user"}}
            },
            "definitions": {"user": {"type": "string", "minLength": 3}}
        })
    }

    #[test]
    fn good_parameters_pass() {
        validate(
            &schema(),
            &json!({"size": 4, "engine": "aria", "users": ["bob"]}),
        )
        .unwrap();
    }

    #[test]
    fn bad_parameters_say_where_and_what() {
        let errors = validate(
            &schema(),
            &json!({"size": 100, "engine": "myisam", "colour": 1, "users": ["al"]}),
        )
        .unwrap_err();
        let all = errors.join("\n");
        assert!(all.contains("parameters.size: must be at most 64"), "{all}");
        assert!(all.contains("parameters.engine: must be one of"), "{all}");
        assert!(all.contains("\"colour\" is not a parameter"), "{all}");
        assert!(
            all.contains("parameters.users[0]: must be at least 3"),
            "{all}"
        );
        let missing = validate(&schema(), &json!({})).unwrap_err();
        assert_eq!(missing, vec!["parameters: \"size\" is required".to_owned()]);
        let wrong = validate(&schema(), &json!({"size": "big"})).unwrap_err();
        assert_eq!(
            wrong,
            vec!["parameters.size: must be integer, not a string".to_owned()]
        );
    }

    #[test]
    fn lengths_counts_and_tuples_are_checked() {
        let schema = json!({
            "$schema": "http://json-schema.org/draft-04/schema#",
            "type": "object",
            "properties": {
                "pair": {
                    "type": "array",
                    "minItems": 2,
                    "maxItems": 2,
                    "items": [{"type": "string"}, {"type": "integer"}]
                },
                "name": {"type": "string", "maxLength": 3}
            }
        });
        validate(&schema, &json!({"pair": ["a", 1], "name": "abc"})).unwrap();
        let all = validate(&schema, &json!({"pair": [1, "a", 2], "name": "abcd"}))
            .unwrap_err()
            .join("\n");
        for expected in [
            "parameters.pair: must have at most 2 items",
            "parameters.pair[0]: must be string",
            "parameters.pair[1]: must be integer",
            "parameters.name: must be at most 3 characters long",
        ] {
            assert!(all.contains(expected), "{expected} not in {all}");
        }
        let short = validate(&schema, &json!({"pair": ["a"]})).unwrap_err();
        assert_eq!(
            short,
            vec!["parameters.pair: must have at least 2 items".to_owned()]
        );
    }

    #[test]
    fn catalog_schemas_need_a_dialect_and_no_external_refs() {
        assert!(schema_problem(&schema()).is_none());
        assert!(
            schema_problem(&json!({"type": "object"}))
                .unwrap()
                .contains("$schema")
        );
        let external = json!({"$schema": "x", "properties": {"a": {"$ref": "http://evil/s.json"}}});
        assert!(schema_problem(&external).unwrap().contains("external"));
    }

    #[test]
    fn self_referencing_schemas_stop() {
        let looped = json!({"$schema": "x", "$ref": "#"});
        let errors = validate(&looped, &json!({})).unwrap_err();
        assert!(errors[0].contains("too deeply"), "{errors:?}");
    }
}
