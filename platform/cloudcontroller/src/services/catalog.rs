//! A broker's catalog (`GET /v2/catalog`): parsed and checked against OSBAPI v2.17 before
//! anything is stored.
//!
//! Checked: the required fields of offerings (`name`, `id`, `description`, `bindable`,
//! `plans` with at least one) and plans (`id`, `name`, `description`); CLI-friendly offering
//! names; ids unique across the catalog and plan names unique within an offering; `requires`
//! within the three the spec names; `maximum_polling_duration` a positive integer;
//! `maintenance_info.version` semantic; and every parameter schema (`schema::schema_problem`).
//!
//! Invariant: a catalog that fails any check is refused whole with every problem listed (up to
//! a bound), so the operator fixes the broker once instead of one error at a time.

use serde_json::Value;

use super::schema;

/// Problems listed at most when a catalog is refused.
const MAX_PROBLEMS: usize = 20;

/// An offering as stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Offering {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) bindable: bool,
    pub(crate) plan_updateable: bool,
    pub(crate) tags: Vec<String>,
    pub(crate) requires: Vec<String>,
    pub(crate) plans: Vec<Plan>,
}

/// A plan as stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) free: bool,
    /// The plan's own `bindable`, else the offering's.
    pub(crate) bindable: bool,
    /// The plan's own `plan_updateable`, else the offering's.
    pub(crate) plan_updateable: bool,
    pub(crate) maximum_polling_duration: Option<u64>,
    /// `schemas` as the catalog wrote it, `Value::Null` when absent.
    pub(crate) schemas: Value,
    pub(crate) maintenance_info: Value,
}

fn is_cli_friendly(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

fn is_semver(version: &str) -> bool {
    let core = version.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

struct Checker {
    problems: Vec<String>,
}

impl Checker {
    fn problem(&mut self, text: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(text);
        }
    }

    fn string(&mut self, object: &serde_json::Map<String, Value>, key: &str, at: &str) -> String {
        match object.get(key) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(_) => {
                self.problem(format!("{at}.{key} must be a non-empty string"));
                String::new()
            }
            None => {
                self.problem(format!("{at}.{key} is required"));
                String::new()
            }
        }
    }

    fn flag(
        &mut self,
        object: &serde_json::Map<String, Value>,
        key: &str,
        at: &str,
    ) -> Option<bool> {
        match object.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => {
                self.problem(format!("{at}.{key} must be true or false"));
                None
            }
        }
    }

    fn strings(
        &mut self,
        object: &serde_json::Map<String, Value>,
        key: &str,
        at: &str,
    ) -> Vec<String> {
        match object.get(key) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(_) => {
                self.problem(format!("{at}.{key} must be an array of strings"));
                Vec::new()
            }
        }
    }

    fn schemas(&mut self, schemas: &Value, at: &str) {
        let paths: [(&str, &[&str]); 3] = [
            ("service_instance.create", &["service_instance", "create"]),
            ("service_instance.update", &["service_instance", "update"]),
            ("service_binding.create", &["service_binding", "create"]),
        ];
        if !schemas.is_object() {
            self.problem(format!("{at}.schemas must be an object"));
            return;
        }
        for (name, path) in paths {
            let mut node = schemas;
            for part in path {
                node = node.get(part).unwrap_or(&Value::Null);
            }
            if let Some(parameters) = node.get("parameters")
                && let Some(problem) = schema::schema_problem(parameters)
            {
                self.problem(format!("{at}.schemas.{name}.parameters {problem}"));
            }
        }
    }

    fn plan(&mut self, value: &Value, at: &str, offering: (bool, bool)) -> Option<Plan> {
        let Some(p) = value.as_object() else {
            self.problem(format!("{at} must be an object"));
            return None;
        };
        let id = self.string(p, "id", at);
        let name = self.string(p, "name", at);
        let description = self.string(p, "description", at);
        let free = self.flag(p, "free", at).unwrap_or(true);
        let bindable = self.flag(p, "bindable", at).unwrap_or(offering.0);
        let plan_updateable = self.flag(p, "plan_updateable", at).unwrap_or(offering.1);
        let maximum_polling_duration = match p.get("maximum_polling_duration") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64().filter(|n| *n > 0) {
                Some(n) => Some(n),
                None => {
                    self.problem(format!(
                        "{at}.maximum_polling_duration must be a positive number of seconds"
                    ));
                    None
                }
            },
        };
        let schemas = p.get("schemas").cloned().unwrap_or(Value::Null);
        if !schemas.is_null() {
            self.schemas(&schemas, at);
        }
        let maintenance_info = p.get("maintenance_info").cloned().unwrap_or(Value::Null);
        if !maintenance_info.is_null() {
            match maintenance_info.get("version").and_then(Value::as_str) {
                Some(v) if is_semver(v) => {}
                _ => self.problem(format!(
                    "{at}.maintenance_info.version must be a semantic version (1.2.3)"
                )),
            }
        }
        Some(Plan {
            id,
            name,
            description,
            free,
            bindable,
            plan_updateable,
            maximum_polling_duration,
            schemas,
            maintenance_info,
        })
    }

    fn offering(&mut self, value: &Value, at: &str) -> Option<Offering> {
        let Some(o) = value.as_object() else {
            self.problem(format!("{at} must be an object"));
            return None;
        };
        let id = self.string(o, "id", at);
        let name = self.string(o, "name", at);
        if !name.is_empty() && !is_cli_friendly(&name) {
            self.problem(format!(
                "{at}.name {name:?} is not CLI-friendly: use letters, digits, '-', '.' and '_'"
            ));
        }
        let description = self.string(o, "description", at);
        let bindable = match self.flag(o, "bindable", at) {
            Some(b) => b,
            None => {
                if !o.contains_key("bindable") {
                    self.problem(format!("{at}.bindable is required"));
                }
                false
            }
        };
        if o.contains_key("plan_updatable") && !o.contains_key("plan_updateable") {
            self.problem(format!(
                "{at}.plan_updatable is misspelled: the spec's field is plan_updateable"
            ));
        }
        let plan_updateable = self.flag(o, "plan_updateable", at).unwrap_or(false);
        let tags = self.strings(o, "tags", at);
        let requires = self.strings(o, "requires", at);
        for r in &requires {
            if !matches!(
                r.as_str(),
                "syslog_drain" | "route_forwarding" | "volume_mount"
            ) {
                self.problem(format!(
                    "{at}.requires holds {r:?}; the spec allows syslog_drain, route_forwarding \
                     and volume_mount"
                ));
            }
        }
        let mut plans = Vec::new();
        match o.get("plans") {
            Some(Value::Array(items)) if !items.is_empty() => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(plan) = self.plan(
                        item,
                        &format!("{at}.plans[{i}]"),
                        (bindable, plan_updateable),
                    ) {
                        plans.push(plan);
                    }
                }
            }
            _ => self.problem(format!("{at}.plans must be an array of at least one plan")),
        }
        let mut names: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1] && !w[0].is_empty()) {
            self.problem(format!("{at} has two plans named {:?}", w[0]));
        }
        Some(Offering {
            id,
            name,
            description,
            bindable,
            plan_updateable,
            tags,
            requires,
            plans,
        })
    }
}

/// Parses and checks a catalog; every problem found (up to a bound) when it is refused.
pub(crate) fn parse(catalog: &Value) -> Result<Vec<Offering>, Vec<String>> {
    let mut checker = Checker {
        problems: Vec::new(),
    };
    let Some(services) = catalog.get("services").and_then(Value::as_array) else {
        return Err(vec![
            "the catalog has no \"services\" array (GET /v2/catalog must answer \
             {\"services\": [...]})"
                .to_owned(),
        ]);
    };
    let mut offerings = Vec::new();
    for (i, service) in services.iter().enumerate() {
        if let Some(o) = checker.offering(service, &format!("services[{i}]")) {
            offerings.push(o);
        }
    }
    let mut ids: Vec<&str> = offerings
        .iter()
        .flat_map(|o| std::iter::once(o.id.as_str()).chain(o.plans.iter().map(|p| p.id.as_str())))
        .filter(|id| !id.is_empty())
        .collect();
    ids.sort_unstable();
    let duplicate_id = ids
        .windows(2)
        .find(|w| w[0] == w[1])
        .map(|w| w[0].to_owned());
    if let Some(id) = duplicate_id {
        checker.problem(format!("the id {id:?} is used twice; ids must be unique"));
    }
    let mut names: Vec<&str> = offerings.iter().map(|o| o.name.as_str()).collect();
    names.sort_unstable();
    let duplicate_name = names
        .windows(2)
        .find(|w| w[0] == w[1] && !w[0].is_empty())
        .map(|w| w[0].to_owned());
    if let Some(name) = duplicate_name {
        checker.problem(format!("two offerings are named {name:?}"));
    }
    if checker.problems.is_empty() {
        Ok(offerings)
    } else {
        Err(checker.problems)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test code")]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_good_catalog_parses_with_inherited_flags() {
        let catalog = json!({"services": [{
            "id": "svc-1", "name": "redis", "description": "Redis", "bindable": true,
            "plan_updateable": true, "tags": ["redis", "cache"],
            "plans": [
                {"id": "p-1", "name": "small", "description": "64 MB",
                 "maximum_polling_duration": 120,
                 "maintenance_info": {"version": "1.2.3-rc.1"}},
                {"id": "p-2", "name": "medium", "description": "256 MB", "free": false,
                 "bindable": false}
            ]
        }]});
        let offerings = parse(&catalog).unwrap();
        assert_eq!(offerings[0].tags, ["redis", "cache"]);
        let small = &offerings[0].plans[0];
        assert!(small.free && small.bindable && small.plan_updateable);
        assert_eq!(small.maximum_polling_duration, Some(120));
        assert!(!offerings[0].plans[1].free && !offerings[0].plans[1].bindable);
    }

    #[test]
    fn a_bad_catalog_lists_every_problem() {
        let catalog = json!({"services": [
            {"id": "x", "name": "bad name", "bindable": "yes", "plan_updatable": true,
             "requires": ["magic"], "plans": [
                {"id": "x", "name": "a", "description": "d", "maximum_polling_duration": -1,
                 "schemas": {"service_instance": {"create": {"parameters": {"type": "object"}}}},
                 "maintenance_info": {"version": "v1"}},
                {"name": "a", "description": "d"}
             ]},
            {"id": "y", "name": "ok", "description": "d", "bindable": true, "plans": []}
        ]});
        let problems = parse(&catalog).unwrap_err().join("\n");
        for expected in [
            "services[0].description is required",
            "not CLI-friendly",
            "services[0].bindable must be true or false",
            "plan_updatable is misspelled",
            "\"magic\"",
            "maximum_polling_duration must be a positive",
            "service_instance.create.parameters has no \"$schema\"",
            "maintenance_info.version must be a semantic version",
            "services[0].plans[1].id is required",
            "two plans named \"a\"",
            "services[1].plans must be an array of at least one plan",
            "the id \"x\" is used twice",
        ] {
            assert!(
                problems.contains(expected),
                "missing {expected:?} in\n{problems}"
            );
        }
        assert!(parse(&json!({})).unwrap_err()[0].contains("no \"services\""));
    }
}
