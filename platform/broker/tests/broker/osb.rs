//! OSBAPI conformance: every route's success and error paths, on the Redis offering (the
//! quickest to start) and the RabbitMQ offering's async-only rule.

use serde_json::json;

use crate::{PASSWORD, USER, guid, redis_cli, require, start_fresh};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_needs_credentials_and_a_supported_version() {
    let (_dir, b) = start_fresh().await;

    let (status, catalog) = b.get("/v2/catalog").await;
    assert_eq!(status, 200);
    for s in catalog["services"].as_array().unwrap() {
        let plans: Vec<&str> = s["plans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(plans, ["small", "medium"], "{}", s["name"]);
        assert_eq!(s["bindable"], true);
        assert!(s["plans"][0]["schemas"]["service_binding"]["create"]["parameters"].is_object());
    }

    let path = "/v2/catalog";
    assert_eq!(
        b.call_with("GET", path, None, Some((USER, PASSWORD)), None)
            .await
            .0,
        412
    );
    assert_eq!(
        b.call_with("GET", path, None, Some((USER, PASSWORD)), Some("2.11"))
            .await
            .0,
        412
    );
    assert_eq!(
        b.call_with("GET", path, None, Some((USER, PASSWORD)), Some("3.0"))
            .await
            .0,
        412
    );
    assert_eq!(
        b.call_with("GET", path, None, Some((USER, "wrong")), Some("2.17"))
            .await
            .0,
        401
    );
    assert_eq!(
        b.call_with("GET", path, None, None, Some("2.17")).await.0,
        401
    );
    // Cloud Foundry's controller still sends 2.15.
    assert_eq!(
        b.call_with("GET", path, None, Some((USER, PASSWORD)), Some("2.15"))
            .await
            .0,
        200
    );

    let resp = b
        .client
        .get(format!("{}{path}", b.url))
        .basic_auth(USER, Some(PASSWORD))
        .header("X-Broker-API-Version", "2.17")
        .header("X-Broker-API-Request-Identity", "req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-broker-api-request-identity"], "req-42");

    let metrics = b.metrics().await;
    assert!(
        metrics.contains("status=\"412\"") && metrics.contains("status=\"401\""),
        "{metrics}"
    );
    b.stop().await;
}

/// The admin listener's nodes (whose names carry instance ids) and its quota pass answer only
/// to the broker's credentials; `/metrics` and `/healthz` stay open for scrapers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_routes_need_the_brokers_credentials() {
    let (_dir, b) = start_fresh().await;
    let url = |path: &str| format!("http://{}{path}", b.admin);
    for (method, path) in [("GET", "/v1/nodes"), ("POST", "/v1/quotas")] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        for (user, password) in [
            (None, None),
            (Some(USER), Some("wrong")),
            (Some("x"), Some(PASSWORD)),
        ] {
            let mut request = b.client.request(method.clone(), url(path));
            if let Some(user) = user {
                request = request.basic_auth(user, password);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{method} {path} as {user:?}");
            assert!(response.headers().contains_key("www-authenticate"));
            let body = response.text().await.unwrap();
            assert!(!body.contains("redis-"), "{body}");
        }
        let ok = b
            .client
            .request(method.clone(), url(path))
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200, "{method} {path} with the credentials");
    }
    for path in ["/metrics", "/healthz"] {
        let open = b.client.get(url(path)).send().await.unwrap();
        assert_eq!(open.status(), 200, "{path} stays open");
    }
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_and_bindings_answer_with_the_spec_status_codes() {
    require("redis");
    let (_dir, b) = start_fresh().await;
    let (service_id, small) = b.ids("redis", "small").await;
    let (_, medium) = b.ids("redis", "medium").await;
    let id = guid();
    let at = format!("/v2/service_instances/{id}");
    let body = |plan: &str, params: serde_json::Value| {
        json!({"service_id": service_id, "plan_id": plan, "organization_guid": "o",
               "space_guid": "s", "parameters": params})
    };

    // Refusals change nothing.
    let (status, err) = b
        .call("PUT", &at, Some(body("no-such-plan", json!({}))))
        .await;
    assert_eq!(status, 400);
    assert!(
        err["description"].as_str().unwrap().contains("plan_id"),
        "{err}"
    );
    let (status, err) = b
        .call(
            "PUT",
            &at,
            Some(json!({"service_id": "nope", "plan_id": small})),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    let (status, err) = b
        .call(
            "PUT",
            &at,
            Some(body(&small, json!({"maxmemory_policy": "forget-it"}))),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        err["description"]
            .as_str()
            .unwrap()
            .starts_with("parameters.maxmemory_policy: \"forget-it\" is not one of"),
        "{err}"
    );
    let (status, _) = b
        .call(
            "PUT",
            "/v2/service_instances/a'b",
            Some(body(&small, json!({}))),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = b.call("PUT", &at, Some(json!({"plan_id": small}))).await;
    assert_eq!(status, 400, "a body without service_id is malformed");
    assert_eq!(b.get(&format!("{at}/last_operation")).await.0, 404);

    // Synchronous provision; the same again is 200, with other attributes 409.
    let params = json!({"maxmemory_policy": "allkeys-lru"});
    assert_eq!(
        b.call("PUT", &at, Some(body(&small, params.clone())))
            .await
            .0,
        201
    );
    assert_eq!(
        b.call("PUT", &at, Some(body(&small, params.clone())))
            .await
            .0,
        200
    );
    assert_eq!(
        b.call("PUT", &at, Some(body(&medium, params.clone())))
            .await
            .0,
        409
    );
    let (status, fetched) = b.get(&at).await;
    assert_eq!(status, 200);
    assert_eq!(fetched["plan_id"], small.as_str());
    assert_eq!(fetched["parameters"], params);
    let (status, op) = b.get(&format!("{at}/last_operation")).await;
    assert_eq!((status, op["state"].as_str()), (200, Some("succeeded")));

    // Bindings.
    let bid = guid();
    let bat = format!("{at}/service_bindings/{bid}");
    let bind_body = |params: serde_json::Value| {
        json!({"service_id": service_id, "plan_id": small, "bind_resource": {"app_guid": "a"},
               "parameters": params})
    };
    let (status, err) = b
        .call("PUT", &bat, Some(bind_body(json!({"read-only": true}))))
        .await;
    assert_eq!(status, 400);
    assert!(
        err["description"]
            .as_str()
            .unwrap()
            .contains("this plan takes no parameters"),
        "{err}"
    );
    let (status, _) = b
        .call(
            "PUT",
            &format!("/v2/service_instances/{}/service_bindings/{bid}", guid()),
            Some(bind_body(json!({}))),
        )
        .await;
    assert_eq!(status, 404, "binding to an instance that does not exist");
    let (status, first) = b.call("PUT", &bat, Some(bind_body(json!({})))).await;
    assert_eq!(status, 201, "{first}");
    let creds = &first["credentials"];
    for key in ["host", "port", "username", "password", "uri"] {
        assert!(!creds[key].is_null(), "credentials lack {key}: {creds}");
    }
    let (status, again) = b.call("PUT", &bat, Some(bind_body(json!({})))).await;
    assert_eq!((status, &again["credentials"]), (200, creds));
    let (status, fetched) = b.get(&bat).await;
    assert_eq!((status, &fetched["credentials"]), (200, creds));
    let (status, op) = b.get(&format!("{bat}/last_operation")).await;
    assert_eq!((status, op["state"].as_str()), (200, Some("succeeded")));

    // The instance holds more than the small plan allows: a downgrade is refused, with why.
    assert_eq!(b.update_plan(&id, "redis", "medium").await.0, 200);
    let out = redis_cli(creds, &["SETRANGE", "big", "73400320", "x"]).await;
    assert!(out.trim().parse::<u64>().is_ok(), "{out}");
    let (status, err) = b.update_plan(&id, "redis", "small").await;
    assert_eq!(status, 422, "{err}");
    assert!(
        err["description"]
            .as_str()
            .unwrap()
            .contains("the small plan allows 64 MiB"),
        "{err}"
    );
    redis_cli(creds, &["DEL", "big"]).await;
    assert_eq!(b.update_plan(&id, "redis", "small").await.0, 200);

    // Unbind and deprovision: query ids required, then 200, then 410.
    assert_eq!(b.call("DELETE", &bat, None).await.0, 400);
    let q = format!("?service_id={service_id}&plan_id={small}");
    assert_eq!(b.call("DELETE", &format!("{bat}{q}"), None).await.0, 200);
    assert_eq!(b.call("DELETE", &format!("{bat}{q}"), None).await.0, 410);
    assert_eq!(b.get(&bat).await.0, 404);
    assert_eq!(b.call("DELETE", &at, None).await.0, 400);
    assert_eq!(b.call("DELETE", &format!("{at}{q}"), None).await.0, 200);
    assert_eq!(b.call("DELETE", &format!("{at}{q}"), None).await.0, 410);
    assert_eq!(b.get(&at).await.0, 404);

    // Asynchronous provision: 202 with an operation, then polling to success.
    let id2 = guid();
    let at2 = format!("/v2/service_instances/{id2}?accepts_incomplete=true");
    let (status, accepted) = b.call("PUT", &at2, Some(body(&small, json!({})))).await;
    assert_eq!(status, 202, "{accepted}");
    assert!(accepted["operation"].is_string());
    b.await_instance(&id2).await;
    assert_eq!(b.deprovision(&id2, "redis").await, 200);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_needs_accepts_incomplete() {
    require("rabbitmq");
    let (_dir, b) = start_fresh().await;
    let (service_id, plan_id) = b.ids("rabbitmq", "small").await;
    let (status, err) = b
        .call(
            "PUT",
            &format!("/v2/service_instances/{}", guid()),
            Some(json!({"service_id": service_id, "plan_id": plan_id,
                        "organization_guid": "o", "space_guid": "s"})),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(err["error"], "AsyncRequired");
    assert!(
        b.nodes().await.is_empty(),
        "a refused provision started nothing"
    );
    b.stop().await;
}
