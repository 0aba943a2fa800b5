//! The broker's catalog: four offerings (`mysql`, `postgresql`, `redis`, `rabbitmq`) with plans
//! `small` and `medium`, their fixed ids, sizes and parameter schemas, and `GET /v2/catalog`'s
//! body for the offerings that can run on this host.
//!
//! Invariant: offering and plan ids never change between fetches or releases (platforms store
//! them); a plan's sizes are what its service node is held to (Redis `maxmemory` and memory
//! cgroup, MariaDB/PostgreSQL storage quota enforced while writing and per-user connection
//! caps, RabbitMQ vhost limits and per-queue length policies).

use serde_json::{Value, json};

/// One plan of an offering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Its id (a GUID, fixed forever).
    pub id: &'static str,
    /// `small` or `medium`.
    pub name: &'static str,
    /// What a user reads in the marketplace.
    pub description: &'static str,
    /// Memory, MiB: Redis `maxmemory` and the node's cgroup; RabbitMQ, the messages the vhost's
    /// queues may hold in all (`memory_mb / queues` per queue, by an operator policy).
    pub memory_mb: u64,
    /// Storage, MiB (MariaDB and PostgreSQL): writes are revoked while the database is over
    /// it, and a plan change below current use is refused.
    pub storage_mb: u64,
    /// Connections: per binding user (MariaDB), per database (PostgreSQL), per vhost (RabbitMQ).
    pub connections: u32,
    /// Queues per vhost (RabbitMQ).
    pub queues: u32,
}

/// An offering and its plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offering {
    /// Its CLI-friendly name.
    pub name: &'static str,
    /// Its id (a GUID, fixed forever).
    pub id: &'static str,
    /// What a user reads in the marketplace.
    pub description: &'static str,
    /// Tags (`VCAP_SERVICES` carries them to apps).
    pub tags: &'static [&'static str],
    /// Provisioning may take long enough (an Erlang node's first start) that the broker only
    /// does it asynchronously: a request without `accepts_incomplete=true` gets 422
    /// `AsyncRequired`.
    pub async_only: bool,
    /// Its plans.
    pub plans: &'static [Plan],
}

impl Plan {
    /// The connections a tenant gets: `parameters[key]` when they asked for a number there,
    /// else the plan's [`Plan::connections`].
    #[must_use]
    pub fn connections_in(&self, parameters: &serde_json::Value, key: &str) -> u64 {
        parameters
            .get(key)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(u64::from(self.connections))
    }

    /// RabbitMQ: bytes of message bodies one queue may hold (the plan's memory shared by its
    /// queues).
    #[must_use]
    pub fn queue_bytes(&self) -> u64 {
        (self.memory_mb * 1024 * 1024) / u64::from(self.queues.max(1))
    }

    /// RabbitMQ: messages one queue may hold: one per KiB of [`Plan::queue_bytes`], because
    /// every message costs the broker memory beyond its body (empty messages are not free).
    #[must_use]
    pub fn queue_messages(&self) -> u64 {
        (self.queue_bytes() / 1024).max(1)
    }

    /// RabbitMQ: the consumer prefetch a binding recommends (`basic.qos`): a sixteenth of what
    /// one queue may hold, so a consumer's unacknowledged window — which no queue length
    /// bounds — stays a small share of its plan's memory (128 for both plans).
    #[must_use]
    pub fn prefetch(&self) -> u64 {
        (self.queue_messages() / 16).clamp(1, 1000)
    }
}

impl Offering {
    /// The plan with id `id`.
    #[must_use]
    pub fn plan(&self, id: &str) -> Option<&'static Plan> {
        self.plans.iter().find(|p| p.id == id)
    }
}

const MIB: u64 = 1;

/// Every offering the broker knows, in catalog order.
pub const OFFERINGS: &[Offering] = &[
    Offering {
        name: "mysql",
        id: "4e6f5c1a-6d0b-4f39-9a4e-1b7c0e5d2a01",
        description: "MySQL-compatible databases (MariaDB): a database per instance, a user per binding",
        tags: &["mysql", "mariadb", "relational"],
        async_only: false,
        plans: &[
            Plan {
                id: "4e6f5c1a-6d0b-4f39-9a4e-1b7c0e5d2a11",
                name: "small",
                description: "256 MiB of storage, 10 connections per binding",
                memory_mb: 0,
                storage_mb: 256 * MIB,
                connections: 10,
                queues: 0,
            },
            Plan {
                id: "4e6f5c1a-6d0b-4f39-9a4e-1b7c0e5d2a12",
                name: "medium",
                description: "1 GiB of storage, 40 connections per binding",
                memory_mb: 0,
                storage_mb: 1024 * MIB,
                connections: 40,
                queues: 0,
            },
        ],
    },
    Offering {
        name: "postgresql",
        id: "7b2d9e40-3c5f-4a8b-8f61-2c9d4e6a7b02",
        description: "PostgreSQL databases: a database per instance, a role per binding",
        tags: &["postgresql", "postgres", "relational"],
        async_only: false,
        plans: &[
            Plan {
                id: "7b2d9e40-3c5f-4a8b-8f61-2c9d4e6a7b21",
                name: "small",
                description: "256 MiB of storage, 20 connections",
                memory_mb: 0,
                storage_mb: 256 * MIB,
                connections: 20,
                queues: 0,
            },
            Plan {
                id: "7b2d9e40-3c5f-4a8b-8f61-2c9d4e6a7b22",
                name: "medium",
                description: "1 GiB of storage, 80 connections",
                memory_mb: 0,
                storage_mb: 1024 * MIB,
                connections: 80,
                queues: 0,
            },
        ],
    },
    Offering {
        name: "redis",
        id: "1c8a3f57-9e2b-4d6c-a0f3-3d1e5b7c9c03",
        description: "Redis: a dedicated redis-server per instance, an ACL user per binding",
        tags: &["redis", "key-value"],
        async_only: false,
        plans: &[
            Plan {
                id: "1c8a3f57-9e2b-4d6c-a0f3-3d1e5b7c9c31",
                name: "small",
                description: "64 MiB of memory",
                memory_mb: 64,
                storage_mb: 0,
                connections: 0,
                queues: 0,
            },
            Plan {
                id: "1c8a3f57-9e2b-4d6c-a0f3-3d1e5b7c9c32",
                name: "medium",
                description: "256 MiB of memory",
                memory_mb: 256,
                storage_mb: 0,
                connections: 0,
                queues: 0,
            },
        ],
    },
    Offering {
        name: "rabbitmq",
        id: "9d4b6a21-7f3e-4c5d-b2a8-4e2f6c8d0d04",
        description: "RabbitMQ: a vhost per instance on a shared node, a user per binding",
        tags: &["rabbitmq", "amqp", "messaging"],
        async_only: true,
        plans: &[
            Plan {
                id: "9d4b6a21-7f3e-4c5d-b2a8-4e2f6c8d0d41",
                name: "small",
                description: "64 queues of at most 2 MiB of messages each, 20 connections",
                memory_mb: 128,
                storage_mb: 0,
                connections: 20,
                queues: 64,
            },
            Plan {
                id: "9d4b6a21-7f3e-4c5d-b2a8-4e2f6c8d0d42",
                name: "medium",
                description: "256 queues of at most 2 MiB of messages each, 100 connections",
                memory_mb: 512,
                storage_mb: 0,
                connections: 100,
                queues: 256,
            },
        ],
    },
];

/// The offering named `name`.
#[must_use]
pub fn offering(name: &str) -> Option<&'static Offering> {
    OFFERINGS.iter().find(|o| o.name == name)
}

/// The offering with id `id`.
#[must_use]
pub fn offering_by_id(id: &str) -> Option<&'static Offering> {
    OFFERINGS.iter().find(|o| o.id == id)
}

/// The JSON schema of an instance's create/update parameters.
#[must_use]
pub fn instance_schema(offering: &Offering) -> Value {
    let properties = match offering.name {
        "redis" => json!({
            "maxmemory_policy": {
                "type": "string",
                "enum": ["noeviction", "allkeys-lru", "volatile-lru", "allkeys-lfu", "volatile-lfu", "allkeys-random", "volatile-random", "volatile-ttl"],
                "description": "What Redis does when the plan's memory is full (default noeviction)"
            }
        }),
        "postgresql" => json!({
            "connection_limit": {
                "type": "integer", "minimum": 1, "maximum": 500,
                "description": "Connections to the database at once (default: the plan's)"
            }
        }),
        _ => json!({}),
    };
    object_schema(properties)
}

/// A draft-04 schema of an object holding only `properties` (an unknown one is refused).
fn object_schema(properties: Value) -> Value {
    json!({
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "additionalProperties": false,
        "properties": properties,
    })
}

/// The JSON schema of a binding's parameters.
#[must_use]
pub fn binding_schema(offering: &Offering, plan: &Plan) -> Value {
    let properties = match offering.name {
        "mysql" => json!({
            "read-only": {
                "type": "boolean",
                "description": "Grant SELECT only (default false)"
            },
            "max_user_connections": {
                "type": "integer", "minimum": 1, "maximum": plan.connections,
                "description": "Connections this binding's user may hold at once (default: the plan's)"
            }
        }),
        "postgresql" => json!({
            "read-only": {
                "type": "boolean",
                "description": "Grant SELECT on existing and future tables only (default false)"
            }
        }),
        _ => json!({}),
    };
    object_schema(properties)
}

/// `GET /v2/catalog`'s body, for the offerings in `available` (names).
#[must_use]
pub fn body(available: &[&'static Offering]) -> Value {
    let services: Vec<Value> = available
        .iter()
        .map(|o| {
            let plans: Vec<Value> = o
                .plans
                .iter()
                .map(|p| {
                    json!({
                        "id": p.id,
                        "name": p.name,
                        "description": p.description,
                        "free": true,
                        "plan_updateable": true,
                        // Local nodes answer in seconds; a platform should give up in minutes.
                        "maximum_polling_duration": 600,
                        "metadata": {
                            "memory_mb": p.memory_mb,
                            "storage_mb": p.storage_mb,
                            "connections": p.connections,
                            "queues": p.queues,
                        },
                        "schemas": {
                            "service_instance": {
                                "create": {"parameters": instance_schema(o)},
                                "update": {"parameters": instance_schema(o)},
                            },
                            "service_binding": {
                                "create": {"parameters": binding_schema(o, p)},
                            },
                        },
                    })
                })
                .collect();
            json!({
                "id": o.id,
                "name": o.name,
                "description": o.description,
                "bindable": true,
                "plan_updateable": true,
                "instances_retrievable": true,
                "bindings_retrievable": true,
                "tags": o.tags,
                "metadata": {
                    "displayName": o.name,
                    "asyncOnly": o.async_only,
                },
                "plans": plans,
            })
        })
        .collect();
    json!({ "services": services })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_and_every_offering_has_small_and_medium() {
        let mut ids = HashSet::new();
        for o in OFFERINGS {
            assert!(ids.insert(o.id));
            let names: Vec<_> = o.plans.iter().map(|p| p.name).collect();
            assert_eq!(names, ["small", "medium"]);
            for p in o.plans {
                assert!(ids.insert(p.id), "{}", p.id);
            }
        }
    }
}
