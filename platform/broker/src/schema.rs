//! A small JSON Schema checker for plan parameters: the subset the catalog's schemas use
//! (`type`, `properties`, `required`, `enum`, `minimum`, `maximum`, `additionalProperties:
//! false`). The broker checks `parameters` with it before touching a service node, so a bad
//! parameter is a 400 that says which one and why, never a half-made instance.
//!
//! Invariant: every failure names the parameter's path (`parameters.read-only`) and says what
//! was expected and what came; the check is recursive only as deep as the schema, so input
//! cannot make it do more work than the schema's size allows.

use serde_json::Value;

/// Checks `value` (at `path`) against `schema`.
///
/// # Errors
/// The first mismatch, as a sentence naming the path.
pub fn check(schema: &Value, value: &Value, path: &str) -> Result<(), String> {
    if let Some(ty) = schema.get("type").and_then(Value::as_str)
        && !has_type(value, ty)
    {
        return Err(format!(
            "{path}: expected {} {ty}, got {}",
            article(ty),
            describe(value)
        ));
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        let list: Vec<String> = options.iter().map(Value::to_string).collect();
        return Err(format!("{path}: {value} is not one of {}", list.join(", ")));
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            return Err(format!("{path}: {value} is below the minimum {min}"));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            return Err(format!("{path}: {value} is above the maximum {max}"));
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for name in required.iter().filter_map(Value::as_str) {
                if !object.contains_key(name) {
                    return Err(format!("{path}.{name}: is required"));
                }
            }
        }
        let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
        for (name, item) in object {
            match properties.and_then(|p| p.get(name)) {
                Some(sub) => check(sub, item, &format!("{path}.{name}"))?,
                None if closed => {
                    let known: Vec<&str> = properties
                        .map(|p| p.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    return Err(if known.is_empty() {
                        format!("{path}.{name}: this plan takes no parameters")
                    } else {
                        format!(
                            "{path}.{name}: unknown parameter; this plan takes {}",
                            known.join(", ")
                        )
                    });
                }
                None => {}
            }
        }
    }
    Ok(())
}

fn has_type(value: &Value, ty: &str) -> bool {
    match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        _ => true,
    }
}

fn article(ty: &str) -> &'static str {
    if ty.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["size"],
            "properties": {
                "size": {"type": "integer", "minimum": 1, "maximum": 10},
                "mode": {"type": "string", "enum": ["a", "b"]},
                "ro": {"type": "boolean"}
            }
        })
    }

    #[test]
    fn accepts_what_the_schema_allows() {
        check(
            &schema(),
            &json!({"size": 3, "mode": "a", "ro": true}),
            "parameters",
        )
        .unwrap();
    }

    #[test]
    fn every_failure_names_the_parameter_and_the_reason() {
        let cases = [
            (json!([]), "parameters: expected an object, got an array"),
            (json!({}), "parameters.size: is required"),
            (
                json!({"size": "3"}),
                "parameters.size: expected an integer, got the string \"3\"",
            ),
            (
                json!({"size": 0}),
                "parameters.size: 0 is below the minimum 1",
            ),
            (
                json!({"size": 11}),
                "parameters.size: 11 is above the maximum 10",
            ),
            (
                json!({"size": 1, "mode": "c"}),
                "parameters.mode: \"c\" is not one of \"a\", \"b\"",
            ),
            (
                json!({"size": 1, "colour": 1}),
                "parameters.colour: unknown parameter; this plan takes mode, ro, size",
            ),
        ];
        for (value, want) in cases {
            assert_eq!(check(&schema(), &value, "parameters").unwrap_err(), want);
        }
    }
}
