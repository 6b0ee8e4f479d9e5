//! Property tests of the probe syntax (`lifeline supervise --probe`): any text is a probe whose
//! canonical form parses back to it, or a typed error; nothing that could split an HTTP request
//! line or a header is ever accepted.

use std::time::Duration;

use proptest::prelude::*;

use super::{Check, HttpCheck, Probe, ProbeRole};

fn role() -> impl Strategy<Value = ProbeRole> {
    prop_oneof![Just(ProbeRole::Startup), Just(ProbeRole::Readiness), Just(ProbeRole::Liveness)]
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9][a-z0-9.-]{0,20}",
        any::<[u8; 4]>().prop_map(|o| std::net::Ipv4Addr::from(o).to_string()),
        any::<[u16; 8]>().prop_map(|s| std::net::Ipv6Addr::from(s).to_string()),
    ]
}

fn check() -> impl Strategy<Value = Check> {
    prop_oneof![
        (any::<bool>(), host(), 1..=u16::MAX, "(/[a-zA-Z0-9._~?=&%-]{0,12}){1,3}", 100u16..=599, 0u16..200)
            .prop_map(|(tls, host, port, path, low, span)| Check::Http(HttpCheck {
                tls,
                host,
                port,
                path,
                statuses: (low, (low + span).min(599)),
            })),
        (host(), 1..=u16::MAX).prop_map(|(host, port)| Check::Tcp { host, port }),
        ("[a-zA-Z0-9/._-]{1,20}", proptest::collection::vec("[a-zA-Z0-9=._-]{1,8}", 0..4))
            .prop_map(|(program, args)| Check::Command { program, args }),
    ]
}

fn probe() -> impl Strategy<Value = Probe> {
    (role(), check(), 1u64..=86_400_000, 1u64..=86_400_000, 1u32..=super::MAX_PROBE_FAILURES).prop_map(
        |(role, check, interval, timeout, failures)| Probe {
            role,
            check,
            interval: Duration::from_millis(interval),
            timeout: Duration::from_millis(timeout),
            failures,
        },
    )
}

proptest! {
    #[test]
    fn any_probe_round_trips_through_its_text(probe in probe()) {
        let text = probe.to_string();
        let parsed: Probe = text.parse().map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(parsed, probe);
    }

    #[test]
    fn any_text_is_a_probe_that_round_trips_or_a_typed_error(text in "\\PC{0,60}|(startup|readiness|liveness)(,[a-z]{1,9}=[0-9a-z-]{0,6}){0,3}:(https?://|tcp:|exec:)\\PC{0,30}") {
        match text.parse::<Probe>() {
            Ok(probe) => {
                let again: Probe = probe.to_string().parse().map_err(|e| TestCaseError::fail(format!("{probe}: {e}")))?;
                prop_assert_eq!(again, probe);
            }
            Err(err) => prop_assert!(!err.reason.is_empty()),
        }
    }

    #[test]
    fn nothing_that_could_split_a_request_line_or_a_header_is_accepted(
        before in "[a-z/]{0,5}", bad in prop_oneof![Just('\r'), Just('\n'), Just(' '), Just('\t'), Just('\0')], after in "[a-z/]{0,5}",
    ) {
        for text in [
            format!("liveness:http://127.0.0.1:80/{before}{bad}{after}"),
            format!("liveness:http://ex{before}{bad}{after}ample:80/"),
            format!("liveness:https://{before}{bad}{after}/"),
        ] {
            if let Ok(probe) = text.parse::<Probe>() {
                let Check::Http(http) = &probe.check else { unreachable!("an http probe") };
                prop_assert!(!format!("{}{}", http.host, http.path).contains(bad), "{text:?} → {probe:?}");
            }
        }
    }
}

#[test]
fn the_documented_forms_parse() {
    let p: Probe = "startup:http://127.0.0.1:8080/healthz".parse().unwrap();
    assert_eq!(p.role, ProbeRole::Startup);
    assert_eq!((p.interval, p.timeout, p.failures), (Duration::from_secs(1), Duration::from_secs(1), 60));
    assert_eq!(
        p.check,
        Check::Http(HttpCheck {
            tls: false,
            host: "127.0.0.1".into(),
            port: 8080,
            path: "/healthz".into(),
            statuses: (200, 399)
        })
    );
    let p: Probe = "liveness,interval=5s,timeout=250ms,failures=2,status=200:https://[::1]/".parse().unwrap();
    assert_eq!((p.interval, p.timeout, p.failures), (Duration::from_secs(5), Duration::from_millis(250), 2));
    assert!(
        matches!(&p.check, Check::Http(h) if h.tls && h.host == "::1" && h.port == 443 && h.statuses == (200, 200))
    );
    let p: Probe = "readiness:tcp:localhost:5432".parse().unwrap();
    assert_eq!(p.check, Check::Tcp { host: "localhost".into(), port: 5432 });
    let p: Probe = "liveness,interval=1m:exec:/usr/bin/pg_isready -q -h 127.0.0.1".parse().unwrap();
    assert_eq!(
        p.check,
        Check::Command {
            program: "/usr/bin/pg_isready".into(),
            args: vec!["-q".into(), "-h".into(), "127.0.0.1".into()]
        }
    );
    assert_eq!(p.interval, Duration::from_secs(60));
}

#[test]
fn each_mistake_is_named() {
    for (text, says) in [
        ("http://127.0.0.1/", "unknown role"),
        ("startup", "expected ROLE"),
        ("warmup:http://x/", "unknown role"),
        ("startup,every=1s:http://x/", "unknown key"),
        ("startup,interval=0s:http://x/", "more than zero"),
        ("startup,interval=25h:http://x/", "at most 24h"),
        ("startup,interval=5:http://x/", "not a duration"),
        ("startup,interval=1s,interval=2s:http://x/", "twice"),
        ("startup,failures=0:http://x/", "failures"),
        ("startup,status=600:http://x/", "status"),
        ("startup,status=400-200:http://x/", "above"),
        ("startup,status=200:tcp:x:1", "status= is for http"),
        ("startup:ftp://x/", "unknown target"),
        ("startup:tcp:x", "a port is needed"),
        ("startup:tcp:x:0", "not a port"),
        ("startup:tcp:x:70000", "not a port"),
        ("startup:http://:80/", "no host"),
        ("startup:http://a b/", "the host contains"),
        ("startup:http://[::1/", "closing ]"),
        ("startup:http://[nope]:1/", "not an IPv6"),
        ("startup:http://x/a b", "the path contains"),
        ("startup:exec:", "needs a command"),
    ] {
        let err = text.parse::<Probe>().expect_err(text);
        assert!(err.reason.contains(says), "{text}: {err}");
    }
}
