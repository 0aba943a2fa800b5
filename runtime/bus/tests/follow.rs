//! The shared doppler follower: the announced set keeps a doppler for its TTL and no longer,
//! holds at most `max`, refuses malformed and conflicting announcements without changing, and
//! treats a doppler at a new URL as one that left and joined. Over an in-process bus, `follow`
//! joins an announced doppler and lets it go once its announcements stop. Time is paused, so
//! the TTLs cost nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::time::Duration;

use hydrant_bus::follow::{self, Announced, Follow, Heard, Leave, Left, Refusal, Side, Vacancy};
use hydrant_bus::messages::{DOPPLER_ANNOUNCE, DopplerAnnounce};
use hydrant_bus::{Bus, Config};
use hydrant_emitter::Registry;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn announce(id: &str, port: u16, ttl_secs: u64) -> DopplerAnnounce {
    DopplerAnnounce {
        id: id.to_owned(),
        ingress: format!("http://127.0.0.1:{port}"),
        egress: format!("http://127.0.0.1:{}", port + 1),
        ttl_secs,
    }
}

/// Hears `a` and, when there is room, joins it holding `held`.
fn hear(set: &mut Announced<u32>, a: &DopplerAnnounce, held: u32) -> Heard {
    let (heard, moved) = set.heard(a, |_| true, Instant::now());
    assert!(moved.is_none(), "nothing moved");
    match heard {
        Heard::Vacant(v) => {
            set.join(v, held);
            Heard::Refreshed
        }
        other => other,
    }
}

#[tokio::test(start_paused = true)]
async fn a_doppler_is_followed_for_its_ttl_from_its_last_announcement() {
    let mut set = Announced::<u32>::new(Side::Egress, 4);
    let a = announce("d1", 8082, 3);
    let (heard, _) = set.heard(&a, |url| url == "http://127.0.0.1:8083", Instant::now());
    let Heard::Vacant(vacancy) = heard else {
        panic!("a new doppler gets a vacancy: {heard:?}")
    };
    assert_eq!(
        vacancy.url, "http://127.0.0.1:8083",
        "the edge reads egress"
    );
    assert!(vacancy.early, "heard in the follower's first TTL");
    set.join(vacancy, 7);
    assert_eq!(set.get("d1"), Some(&7));

    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(matches!(hear(&mut set, &a, 0), Heard::Refreshed));
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(
        set.lapsed(Instant::now()).is_empty(),
        "the refresh moved its deadline on"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    let gone = set.lapsed(Instant::now());
    assert_eq!(gone.len(), 1);
    assert_eq!((gone[0].id.as_str(), gone[0].held), ("d1", 7));
    assert_eq!(gone[0].why, Leave::Lapsed);
    assert!(set.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_doppler_heard_after_the_first_ttl_is_not_early() {
    let mut set = Announced::<u32>::new(Side::Ingress, 4);
    tokio::time::advance(Duration::from_secs(16)).await;
    let (heard, _) = set.heard(&announce("late", 9000, 0), |_| true, Instant::now());
    let Heard::Vacant(vacancy) = heard else {
        panic!("{heard:?}")
    };
    assert_eq!(
        vacancy.url, "http://127.0.0.1:9000",
        "the agent sends to ingress"
    );
    assert!(!vacancy.early, "15 s (the default TTL) have passed");
}

#[tokio::test(start_paused = true)]
async fn the_set_is_bounded_and_bad_or_conflicting_announcements_change_nothing() {
    let mut set = Announced::<u32>::new(Side::Egress, 1);
    assert!(matches!(
        hear(&mut set, &announce("d1", 8082, 0), 1),
        Heard::Refreshed
    ));
    assert!(matches!(
        hear(&mut set, &announce("d2", 9082, 0), 2),
        Heard::Refused(Refusal::OverMax)
    ));
    let mut set = Announced::<u32>::new(Side::Egress, 8);
    hear(&mut set, &announce("d1", 8082, 0), 1);
    let bad = [
        announce("", 7000, 0),
        announce(&"x".repeat(follow::MAX_ID + 1), 7002, 0),
        DopplerAnnounce {
            egress: "127.0.0.1:7004".to_owned(),
            ..announce("d3", 7004, 0)
        },
        announce("d4", 8082, 0),
    ];
    for a in &bad {
        assert!(
            matches!(hear(&mut set, a, 9), Heard::Refused(Refusal::Invalid)),
            "{a:?} is refused as invalid"
        );
    }
    let (heard, _) = set.heard(&announce("d5", 7006, 0), |_| false, Instant::now());
    assert!(
        matches!(heard, Heard::Refused(Refusal::Invalid)),
        "a URL the role cannot use is invalid"
    );
    assert_eq!(set.len(), 1, "only d1");
    assert_eq!(set.get("d1"), Some(&1));
}

#[tokio::test(start_paused = true)]
async fn a_doppler_at_a_new_url_leaves_and_joins_afresh() {
    let mut set = Announced::<u32>::new(Side::Egress, 4);
    hear(&mut set, &announce("d1", 8082, 0), 1);
    let (heard, moved) = set.heard(&announce("d1", 9082, 0), |_| true, Instant::now());
    let moved = moved.expect("the old address leaves");
    assert_eq!(
        (moved.url.as_str(), moved.held, moved.why),
        ("http://127.0.0.1:8083", 1, Leave::Moved)
    );
    let Heard::Vacant(vacancy) = heard else {
        panic!("{heard:?}")
    };
    set.join(vacancy, 2);
    assert_eq!(set.get("d1"), Some(&2));
    assert_eq!(set.remove_where(|h| *h == 2), Some(("d1".to_owned(), 2)));
    assert!(set.is_empty());
}

/// What the test role saw.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Joined(String),
    Left(String, Leave),
    Refused(Refusal),
}

struct Recorder {
    seen: mpsc::Sender<Seen>,
    tasks: JoinSet<()>,
}

impl Follow for Recorder {
    type Held = ();
    type Done = ();

    fn join(&mut self, vacancy: &Vacancy) -> Result<(), Refusal> {
        self.seen
            .try_send(Seen::Joined(vacancy.id.clone()))
            .unwrap();
        Ok(())
    }

    fn leave(&mut self, left: Left<()>) {
        self.seen.try_send(Seen::Left(left.id, left.why)).unwrap();
    }

    fn refused(&mut self, why: Refusal, _id: &str, _url: &str) {
        self.seen.try_send(Seen::Refused(why)).unwrap();
    }

    fn tasks(&mut self) -> &mut JoinSet<()> {
        &mut self.tasks
    }
}

#[tokio::test(start_paused = true)]
async fn follow_joins_an_announced_doppler_and_lets_it_go_when_it_falls_silent() {
    let config = Config::inprocess(&format!("follow-{}", std::process::id()));
    let registry = Registry::new("test", "0");
    let bus = Bus::connect(&config, &registry).await.unwrap();
    let (tx, mut seen) = mpsc::channel(64);
    let stop = CancellationToken::new();
    let follower = {
        let (bus, stop) = (bus.clone(), stop.clone());
        tokio::spawn(async move {
            let mut role = Recorder {
                seen: tx,
                tasks: JoinSet::new(),
            };
            follow::follow(&bus, Side::Egress, 4, &mut role, &stop).await
        })
    };
    let next = async |seen: &mut mpsc::Receiver<Seen>| {
        tokio::time::timeout(Duration::from_secs(60), seen.recv())
            .await
            .expect("the follower reports within a minute")
            .expect("the follower is running")
    };
    // The subscription is made inside the task; announce until it is heard.
    let a = announce("d1", 8082, 2);
    let joined = loop {
        bus.publish_json(DOPPLER_ANNOUNCE, &a).unwrap();
        if let Ok(Some(s)) = tokio::time::timeout(Duration::from_millis(100), seen.recv()).await {
            break s;
        }
    };
    assert_eq!(joined, Seen::Joined("d1".to_owned()));
    bus.publish(DOPPLER_ANNOUNCE, bytes::Bytes::from_static(b"{not json"))
        .unwrap();
    assert_eq!(next(&mut seen).await, Seen::Refused(Refusal::Invalid));
    let silent = Instant::now();
    assert_eq!(
        next(&mut seen).await,
        Seen::Left("d1".to_owned(), Leave::Lapsed)
    );
    let after = silent.elapsed();
    assert!(
        after <= Duration::from_secs(2) + follow::CHECK_EVERY,
        "let go within one check of its TTL, not {after:?}"
    );
    stop.cancel();
    follower.await.unwrap().unwrap();
}

fn source<'a>(
    dopplers: &'a [String],
    dopplers_from_bus: bool,
    max_dopplers: usize,
    bus: Option<&'a Config>,
) -> follow::DopplerSource<'a> {
    follow::DopplerSource {
        dopplers,
        dopplers_from_bus,
        max_dopplers,
        bus,
    }
}

#[test]
fn a_doppler_source_follows_the_bus_only_with_one_and_names_the_field_that_cannot_work() {
    let bus = Config::inprocess("t");
    let listed = follow::default_dopplers();
    let following = source(&listed, true, 64, Some(&bus));
    following.validate().unwrap();
    assert!(following.follows_bus());
    assert!(
        following.static_dopplers().is_empty(),
        "the default list is not read while following"
    );
    let fixed = source(&listed, false, 64, None);
    fixed.validate().unwrap();
    assert!(!fixed.follows_bus());
    assert_eq!(fixed.static_dopplers(), listed.as_slice());
    assert!(source(&[], false, 64, Some(&bus)).follows_bus());
    let other = vec!["http://10.0.0.1:8082".to_owned()];
    let broken = Config {
        publish_buffer: 0,
        ..Config::inprocess("t")
    };
    let cases = [
        (source(&listed, true, 64, None), "dopplers_from_bus"),
        (source(&other, true, 64, Some(&bus)), "dopplers"),
        (source(&listed, false, 0, None), "max_dopplers"),
        (source(&[], false, 64, None), "dopplers"),
        (source(&listed, false, 64, Some(&broken)), "bus"),
    ];
    for (source, field) in cases {
        let err = source.validate().unwrap_err();
        assert!(
            err.to_string().starts_with(&format!("{field}: ")),
            "{err} should name {field}"
        );
        assert_eq!(err.into_field().0, field);
    }
}
