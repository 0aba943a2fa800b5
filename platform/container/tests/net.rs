//! The container network against the real kernel: bridges, network namespaces, veths and
//! nftables, checked by opening TCP connections from inside the namespaces and by the kernel's
//! own lists (`ip netns list`, `ip link`, `nft list ruleset`).
//!
//! Needs root (CI runs as root) and fails saying so otherwise. Each test owns one bridge
//! `hyt<n>` with subnet `10.254.<64+4n>.0/22`, and, where it needs somewhere to connect to, one
//! "service" namespace `hys<n>` at `10.254.<128+n>.0/24` (both apart from the executor's and
//! staging's default pools, `10.254.0.0/22` and `10.254.8.0/22`, which end-to-end tests running
//! at the same time may use): every address a test sends to is one
//! of its own namespaces or interfaces, or loopback. A guard removes all of it on drop, so a
//! failing test leaves nothing behind for the next.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers outside #[test] fns"
)]

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use hydrant_container::net::{Action, EgressRule, NetConfig, Network, Protocol};

#[path = "support/host.rs"]
mod host;

use host::{
    Guard, at, config, in_netns, ip_in, links, listen_in, netns_list, peer, reachable, ruleset, sh,
    table, unreachable,
};

fn require_root() {
    host::require_root("container network");
}

/// The peer namespace `hys<n>` standing in for a service on another machine: `10.254.<128+n>.2`
/// and `.3` behind a veth whose host side is `.1`, plus `169.254.<n>.1` on a stand-in interface
/// inside it (routed from the host), listening on ports 5432 and 5433 of each.
struct Service {
    a: Ipv4Addr,
    b: Ipv4Addr,
    link_local: Ipv4Addr,
    _listeners: Vec<TcpListener>,
}

fn service(n: u8, guard: &Guard) -> Service {
    let peer = peer(n, 2, guard);
    let (a, b) = (peer.addrs[0], peer.addrs[1]);
    let link_local = format!("169.254.{n}.1");
    for cmd in [
        // A veth pair rather than a `dummy`: some kernels (CI's VMs) ship without the module.
        &[
            "link", "add", "lnk0", "type", "veth", "peer", "name", "lnk1",
        ][..],
        &["link", "set", "lnk1", "up"],
        &["addr", "add", &format!("{link_local}/24"), "dev", "lnk0"],
        &["link", "set", "lnk0", "up"],
    ] {
        ip_in(&peer.name, cmd);
    }
    sh(
        "ip",
        &[
            "route",
            "add",
            &format!("169.254.{n}.0/24"),
            "via",
            &a.to_string(),
        ],
    );
    let listeners = [5432, 5433]
        .into_iter()
        .map(|port| listen_in(&peer.netns, SocketAddr::from(([0, 0, 0, 0], port))))
        .collect();
    Service {
        a,
        b,
        link_local: link_local.parse().unwrap(),
        _listeners: listeners,
    }
}

#[tokio::test]
async fn a_container_reaches_nothing_on_the_host_nor_its_neighbours_but_the_router_reaches_it() {
    require_root();
    let _guard = Guard::new(1);
    let net = Network::setup(&config(1)).await.unwrap();
    // Another live process on the same bridge would remove this one's containers: refused.
    // (A lock on another open file of the lock, with a foreign PID in it, stands in for one.)
    let other = config(7);
    let lock_path = format!("/run/hydrant/net-{}.lock", other.bridge);
    std::fs::write(&lock_path, "1\n").unwrap();
    let held = File::open(&lock_path).unwrap();
    held.try_lock().unwrap();
    let err = Network::setup(&other).await.unwrap_err().to_string();
    assert!(
        err.contains("\"hyt7\" is in use by another running process (pid 1"),
        "{err}"
    );
    drop(held);
    let _guard7 = Guard::new(7);
    Network::setup(&other)
        .await
        .unwrap()
        .teardown()
        .await
        .unwrap();
    // So is a subnet an interface of the host already has addresses in.
    let overlapping = NetConfig {
        bridge: "hytx1".into(),
        ..config(1)
    };
    let err = Network::setup(&overlapping).await.unwrap_err().to_string();
    assert!(
        err.contains("interface hyt1 has") && err.contains("pick another"),
        "{err}"
    );
    let a = net.attach("app-a/0", &[]).await.unwrap();
    let b = net.attach("app-b/0", &[]).await.unwrap();
    assert_ne!(a.ip, b.ip);
    assert_eq!(a.gateway, net.gateway());
    assert!(
        a.veth.len() <= 15 && a.veth.starts_with("hyt1-"),
        "{}",
        a.veth
    );

    // The platform's listeners: on the gateway address and on the host's loopback.
    let on_gateway = TcpListener::bind((net.gateway(), 0)).unwrap();
    let on_loopback = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    // A link-local address on an interface of the host this test makes (never a real metadata
    // service); a veth pair, since some kernels ship without the `dummy` module.
    sh(
        "ip",
        &[
            "link", "add", "hyt1-lnk", "type", "veth", "peer", "name", "hyt1-lnp",
        ],
    );
    sh("ip", &["link", "set", "hyt1-lnp", "up"]);
    sh(
        "ip",
        &["addr", "add", "169.254.101.1/32", "dev", "hyt1-lnk"],
    );
    sh("ip", &["link", "set", "hyt1-lnk", "up"]);
    let on_link_local = TcpListener::bind(("169.254.101.1", 0)).unwrap();
    // The apps' own listeners, inside their namespaces.
    let app_a = listen_in(&a.netns_path, at(Ipv4Addr::UNSPECIFIED, 8080));
    let app_b = listen_in(&b.netns_path, at(Ipv4Addr::UNSPECIFIED, 8080));
    let port = |l: &TcpListener| l.local_addr().unwrap().port();

    // Positive controls: the host reaches each app (the router's path), and each app its own
    // loopback, so every refusal below is the policy, not broken plumbing.
    assert!(
        reachable(None, at(a.ip, port(&app_a))),
        "the router path to a"
    );
    assert!(
        reachable(None, at(b.ip, port(&app_b))),
        "the router path to b"
    );
    assert!(reachable(
        Some(&a.netns_path),
        at(Ipv4Addr::LOCALHOST, port(&app_a))
    ));
    assert!(
        reachable(None, at(net.gateway(), port(&on_gateway))),
        "the host reaches its own listener"
    );

    let from_a = Some(a.netns_path.as_path());
    assert!(
        unreachable(from_a, at(net.gateway(), port(&on_gateway))),
        "the gateway IP"
    );
    assert!(
        unreachable(from_a, at(Ipv4Addr::LOCALHOST, port(&on_loopback))),
        "127.0.0.1 inside is the container's own"
    );
    assert!(unreachable(
        from_a,
        at("169.254.101.1".parse().unwrap(), port(&on_link_local))
    ));
    assert!(
        unreachable(from_a, at(b.ip, port(&app_b))),
        "a neighbour container"
    );
    assert!(
        unreachable(Some(&b.netns_path), at(a.ip, port(&app_a))),
        "and back"
    );

    // The kernel counted each refusal under its reason, for the executor's metrics.
    let drops = net.drop_counts().await.unwrap();
    for reason in ["container to host", "container to container"] {
        assert!(
            drops.get(reason).copied().unwrap_or(0) > 0,
            "{reason}: {drops:?}"
        );
    }

    // IPv6 is off inside: no addresses on eth0, and the switch reads 1.
    let v6 = in_netns(&a.netns_path, || {
        std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6").unwrap_or_default()
    });
    assert_eq!(v6.trim(), "1");
    assert_eq!(sh("ip", &["-n", &a.netns, "-6", "addr", "show"]).trim(), "");

    net.detach(a).await.unwrap();
    net.detach(b).await.unwrap();
    net.teardown().await.unwrap();
}

#[tokio::test]
async fn an_operator_allow_rule_opens_exactly_its_destination_and_port_and_link_local_stays_shut() {
    require_root();
    let guard = Guard::new(2);
    let svc = service(2, &guard);
    let mut config = config(2);
    config.rules = vec![EgressRule::allow(
        Protocol::Tcp,
        &svc.a.to_string(),
        Some("5432"),
    )];
    let net = Network::setup(&config).await.unwrap();
    let c = net.attach("app/0", &[]).await.unwrap();
    let from = Some(c.netns_path.as_path());

    // The host reaches every listener of the service, so each refusal below is the rule set.
    for addr in [at(svc.a, 5433), at(svc.b, 5432), at(svc.link_local, 5432)] {
        assert!(reachable(None, addr), "{addr} from the host");
    }
    assert!(
        reachable(from, at(svc.a, 5432)),
        "the allowed destination and port"
    );
    assert!(
        unreachable(from, at(svc.a, 5433)),
        "another port of the allowed destination"
    );
    assert!(
        unreachable(from, at(svc.b, 5432)),
        "the allowed port on another private address"
    );
    assert!(
        unreachable(from, at(svc.link_local, 5432)),
        "link-local beyond the host"
    );

    net.detach(c).await.unwrap();
    net.teardown().await.unwrap();
}

#[tokio::test]
async fn operator_rules_apply_in_order_so_a_deny_before_an_allow_closes_part_of_it() {
    require_root();
    let guard = Guard::new(5);
    let svc = service(5, &guard);
    let mut config = config(5);
    let range = format!("{}-{}", svc.a, svc.b);
    config.rules = vec![
        EgressRule {
            action: Action::Deny,
            ..EgressRule::allow(Protocol::Tcp, &svc.b.to_string(), Some("5433"))
        },
        EgressRule::allow(Protocol::Tcp, &range, Some("5432-5433")),
    ];
    let net = Network::setup(&config).await.unwrap();
    let c = net.attach("app/0", &[]).await.unwrap();
    let from = Some(c.netns_path.as_path());
    assert!(reachable(from, at(svc.a, 5433)));
    assert!(reachable(from, at(svc.b, 5432)));
    assert!(unreachable(from, at(svc.b, 5433)), "the deny comes first");
    net.detach(c).await.unwrap();
    net.teardown().await.unwrap();
}

#[tokio::test]
async fn a_per_attachment_rule_applies_to_its_container_only_and_detach_removes_everything_it_made()
{
    require_root();
    let guard = Guard::new(3);
    let svc = service(3, &guard);
    let net = Network::setup(&config(3)).await.unwrap();
    let binding = EgressRule::allow(Protocol::Tcp, &svc.a.to_string(), Some("5432"));
    let bound = net
        .attach("bound/0", std::slice::from_ref(&binding))
        .await
        .unwrap();
    let other = net.attach("other/0", &[]).await.unwrap();
    assert!(
        reachable(Some(&bound.netns_path), at(svc.a, 5432)),
        "the bound container"
    );
    assert!(
        unreachable(Some(&other.netns_path), at(svc.a, 5432)),
        "another container"
    );
    assert!(
        unreachable(Some(&bound.netns_path), at(svc.a, 5433)),
        "only the bound port"
    );

    let (netns, veth, ip) = (bound.netns.clone(), bound.veth.clone(), bound.ip);
    let chain = format!("c_{}", veth.trim_start_matches("hyt3-"));
    assert!(netns_list().contains(&netns));
    assert!(links().contains(&format!("{veth}@")));
    let rules = ruleset();
    assert!(
        rules.contains(&chain) && rules.contains(&format!("{ip} : jump {chain}")),
        "{rules}"
    );

    net.detach(bound).await.unwrap();
    assert!(!netns_list().contains(&netns), "{}", netns_list());
    assert!(!links().contains(&format!("{veth}@")), "{}", links());
    let rules = table(3);
    assert!(
        !rules.contains(&chain) && !rules.contains(&format!("{ip} ")),
        "{rules}"
    );
    // The other container is untouched.
    assert!(netns_list().contains(&other.netns));
    assert!(rules.contains(&format!("{} : jump", other.ip)));

    // Detach is idempotent: pieces already gone (here the namespace and veth) are not an error.
    sh("ip", &["link", "del", &other.veth]);
    sh("ip", &["netns", "del", &other.netns]);
    net.detach(other).await.unwrap();
    assert!(!table(3).contains(" : jump c_"), "{}", table(3));

    // The freed addresses go back to the pool: a /22 never runs out after attach/detach.
    let again = net.attach("bound/0", &[binding]).await.unwrap();
    assert!(reachable(Some(&again.netns_path), at(svc.a, 5432)));
    net.detach(again).await.unwrap();
    net.teardown().await.unwrap();
}

#[tokio::test]
async fn setup_after_a_crash_removes_every_leftover_and_teardown_leaves_nothing() {
    require_root();
    let _guard = Guard::new(4);
    let net = Network::setup(&config(4)).await.unwrap();
    let a = net
        .attach(
            "app/0",
            &[EgressRule::allow(Protocol::Udp, "10.254.200.1", Some("53"))],
        )
        .await
        .unwrap();
    let b = net.attach("app/1", &[]).await.unwrap();
    let (names, a_ip) = ([a.netns.clone(), b.netns.clone()], a.ip);
    // The platform is SIGKILLed: nothing is detached, nothing torn down, nothing dropped.
    std::mem::forget(net);
    drop((a, b));
    for name in &names {
        assert!(netns_list().contains(name.as_str()));
    }

    let net = Network::setup(&config(4)).await.unwrap();
    let (ns, link) = (netns_list(), links());
    for name in &names {
        assert!(!ns.contains(name.as_str()), "namespace {name} left: {ns}");
        assert!(
            !link.contains(&format!("{name}@")),
            "veth {name} left: {link}"
        );
    }
    let rules = table(4);
    assert!(
        !rules.contains("chain c_") && !rules.contains(" : jump"),
        "{rules}"
    );
    assert!(link.contains("hyt4:"), "the bridge is adopted: {link}");

    // It works as new: the first address is handed out again.
    let c = net.attach("app/0", &[]).await.unwrap();
    assert_eq!(c.ip, a_ip);
    let on_c = listen_in(&c.netns_path, at(Ipv4Addr::UNSPECIFIED, 8080));
    assert!(reachable(None, at(c.ip, on_c.local_addr().unwrap().port())));
    drop(on_c);

    // Teardown, with a container still attached, leaves nothing of this bridge in the kernel.
    let name = c.netns.clone();
    net.teardown().await.unwrap();
    assert!(!netns_list().contains("hyt4-"), "{}", netns_list());
    assert!(!links().contains("hyt4"), "{}", links());
    let rules = ruleset();
    assert!(!rules.contains("hydrant_hyt4"), "{rules}");
    assert!(!name.is_empty());
    // Nor on disk: the bridge's lock file goes with the bridge.
    assert!(
        !std::path::Path::new("/run/hydrant/net-hyt4.lock").exists(),
        "the lock file of a torn-down bridge is left behind"
    );
}

#[tokio::test]
async fn many_containers_attach_at_once_with_distinct_addresses_and_detach_clean() {
    require_root();
    let _guard = Guard::new(6);
    // An operator who empties the default denies still gets a valid ruleset.
    let config = NetConfig {
        deny: Vec::new(),
        ..config(6)
    };
    let net = std::sync::Arc::new(Network::setup(&config).await.unwrap());
    const N: usize = 24;
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let net = net.clone();
        tasks.spawn(async move { net.attach(&format!("app/{i}"), &[]).await });
    }
    let mut attached = Vec::new();
    while let Some(result) = tasks.join_next().await {
        attached.push(result.unwrap().unwrap());
    }
    let concurrent = started.elapsed();
    let ips: std::collections::BTreeSet<_> = attached.iter().map(|a| a.ip).collect();
    let names: std::collections::BTreeSet<_> = attached.iter().map(|a| a.veth.clone()).collect();
    assert_eq!((ips.len(), names.len()), (N, N));
    // Each one is plumbed: the host reaches a listener in the last one made.
    let last = attached.last().unwrap();
    let listener = listen_in(&last.netns_path, at(Ipv4Addr::UNSPECIFIED, 8080));
    assert!(reachable(
        None,
        at(last.ip, listener.local_addr().unwrap().port())
    ));

    let started = std::time::Instant::now();
    for a in attached {
        net.detach(a).await.unwrap();
    }
    let detached = started.elapsed();
    // One at a time, as an executor starting instances one by one would.
    let mut each = Vec::new();
    for i in 0..8 {
        let started = std::time::Instant::now();
        let a = net.attach(&format!("seq/{i}"), &[]).await.unwrap();
        each.push(started.elapsed());
        net.detach(a).await.unwrap();
    }
    each.sort();
    eprintln!(
        "attach: {N} at once in {concurrent:?}; one at a time median {:?} max {:?}; {N} detaches in {detached:?}",
        each[each.len() / 2],
        each[each.len() - 1]
    );
    assert!(!netns_list().contains("hyt6-"), "{}", netns_list());
    assert!(!table(6).contains(" : jump"), "{}", table(6));
    std::sync::Arc::into_inner(net)
        .unwrap()
        .teardown()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_bridge_left_by_a_dead_owner_under_another_name_is_reclaimed_not_a_conflict() {
    require_root();
    let (_guard8, _guard9) = (Guard::new(8), Guard::new(9));
    let first = Network::setup(&config(8)).await.unwrap();
    let a = first.attach("app/0", &[]).await.unwrap();
    // Its owner dies (its lock goes with it); the next run uses another bridge name for the
    // same subnet, as tests with per-process names do.
    drop((a, first));
    let second = NetConfig {
        bridge: "hyt9".into(),
        ..config(8)
    };
    let net = Network::setup(&second).await.unwrap();
    let link = links();
    assert!(!link.contains("hyt8"), "{link}");
    assert!(!netns_list().contains("hyt8-"), "{}", netns_list());
    assert!(!ruleset().contains("hydrant_hyt8"));
    let b = net.attach("app/0", &[]).await.unwrap();
    net.detach(b).await.unwrap();
    net.teardown().await.unwrap();
}
