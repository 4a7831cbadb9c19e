//! The configuration's tests: the example file equals the defaults, and bad values are refused
//! naming their key. [`MINIMAL`] is the smallest valid config, for other modules' tests too.

use super::*;

/// The smallest valid config: TLS files and one org (tables only, so keys can go before it).
pub(crate) const MINIMAL: &str = r#"
    [tls]
    cert = "server.pem"
    key = "server.key"
    [[orgs]]
    id = "acme"
    token_hashes = ["sha256:0000000000000000000000000000000000000000000000000000000000000000"]
"#;

#[test]
fn example_config_parses_to_the_defaults() {
    let example = Config::parse(EXAMPLE_CONFIG).unwrap();
    let minimal = Config::parse(MINIMAL).unwrap();
    // Every default written in the example file is the default in code.
    assert_eq!(format!("{:?}", example.limits), format!("{:?}", minimal.limits));
    assert_eq!(format!("{:?}", example.sink), format!("{:?}", minimal.sink));
    assert_eq!(format!("{:?}", example.fleet), format!("{:?}", minimal.fleet));
    assert_eq!(
        format!("{:?}", example.admission),
        format!("{:?}", minimal.admission)
    );
    assert_eq!(format!("{:?}", example.runtime), format!("{:?}", minimal.runtime));
    assert_eq!(format!("{:?}", example.auth), format!("{:?}", minimal.auth));
    assert_eq!(
        (&example.tls.client_ca, example.tls.require_client_cert),
        (&minimal.tls.client_ca, minimal.tls.require_client_cert)
    );
    assert_eq!(
        format!("{:?}", example.shutdown),
        format!("{:?}", minimal.shutdown)
    );
    assert_eq!(example.listen, minimal.listen);
    assert_eq!(example.admin_listen, minimal.admin_listen);
    assert_eq!(example.data_dir, minimal.data_dir);
}

#[test]
fn client_certificates_need_a_client_ca() {
    let with_names = MINIMAL.replace(
        "token_hashes = [",
        "client_names = [\"*.acme.example\"]\n        token_hashes = [",
    );
    let err = Config::parse(&with_names).unwrap_err();
    assert!(err.to_string().contains("orgs[0].client_names"), "{err}");
    let with_ca = with_names.replace("[tls]", "[tls]\nclient_ca = \"ca.pem\"");
    Config::parse(&with_ca).unwrap();
    let bad = with_ca.replace("*.acme.example", "*");
    let err = Config::parse(&bad).unwrap_err();
    assert!(err.to_string().contains("orgs[0].client_names[0]"), "{err}");
    let required = MINIMAL.replace("[tls]", "[tls]\nrequire_client_cert = true");
    let err = Config::parse(&required).unwrap_err();
    assert!(err.to_string().contains("tls.require_client_cert"), "{err}");
}

#[test]
fn unknown_keys_are_refused_with_their_name() {
    let err = Config::parse(&format!("{MINIMAL}\n[limits]\nmax_frame_byte = 5\n")).unwrap_err();
    assert!(err.to_string().contains("max_frame_byte"), "{err}");
}

#[test]
fn out_of_range_values_name_the_key() {
    let err = Config::parse(&format!("{MINIMAL}\n[limits]\nmax_frame_bytes = 10\n")).unwrap_err();
    assert!(err.to_string().contains("limits.max_frame_bytes"), "{err}");
    let err = Config::parse(&format!(
        "{MINIMAL}\n[sink.file]\nsegment_bytes = 1048576\nmax_bytes = 1048577\n"
    ))
    .unwrap_err();
    assert!(err.to_string().contains("sink.file.max_bytes"), "{err}");
}

#[test]
fn admission_budgets_must_be_consistent() {
    let err = Config::parse(&format!("{MINIMAL}\n[admission]\nsoft_buffered_bytes = 1000\n")).unwrap_err();
    assert!(err.to_string().contains("admission.soft_buffered_bytes"), "{err}");
    let err = Config::parse(&format!(
        "{MINIMAL}\n[admission]\nmax_buffered_bytes = 100000000\n"
    ))
    .unwrap_err();
    assert!(err.to_string().contains("admission.max_buffered_bytes"), "{err}");
    let err = Config::parse(&format!(
        "{MINIMAL}\n[admission]\nretry_after_min_ms = 5000\nretry_after_max_ms = 1000\n"
    ))
    .unwrap_err();
    assert!(err.to_string().contains("admission.retry_after_max_ms"), "{err}");
    // A soft session budget above the hard one is valid (control::admission cuts it to the
    // hard one: its tests say so).
    Config::parse(&format!("{MINIMAL}\n[limits]\nmax_connections = 10\n")).unwrap();
}

#[test]
fn bad_orgs_are_refused() {
    let no_orgs = "[tls]\ncert = \"a\"\nkey = \"b\"\n";
    assert!(Config::parse(no_orgs).unwrap_err().to_string().contains("orgs"));
    let bad_id = MINIMAL.replace("\"acme\"", "\"../etc\"");
    assert!(
        Config::parse(&bad_id)
            .unwrap_err()
            .to_string()
            .contains("orgs[0].id")
    );
    let bad_hash = MINIMAL.replace("sha256:0000", "md5:0000");
    let err = Config::parse(&bad_hash).unwrap_err();
    assert!(err.to_string().contains("orgs[0].token_hashes[0]"), "{err}");
}
#[test]
fn the_welcome_view_is_the_members_and_this_collector() {
    let c = Config::parse(&format!(
        "{MINIMAL}\n[fleet]\nadvertise = \"10.0.0.2:4433\"\nmembers = [\"10.0.0.1:4433\", \"10.0.0.2:4433\"]\n"
    ))
    .unwrap();
    let view = c.fleet.view("c2");
    let addrs: Vec<_> = view
        .iter()
        .map(|m| (m.address.as_str(), m.collector_id.as_str()))
        .collect();
    assert_eq!(addrs, [("10.0.0.1:4433", ""), ("10.0.0.2:4433", "c2")]);
    let err = Config::parse(&format!("{MINIMAL}\n[fleet]\nmembers = [\"nope\"]\n")).unwrap_err();
    assert!(err.to_string().contains("fleet.members[0]"), "{err}");
}

#[test]
fn fleet_load_polling_keys_are_checked_by_name() {
    let with = |table: &str| Config::parse(&format!("{MINIMAL}\n[fleet]\n{table}\n"));
    let ok = with("name = \"collectors.example.net\"\nload_admin_port = 9464\nload_poll_ms = 500").unwrap();
    assert_eq!(ok.fleet.name.as_deref(), Some("collectors.example.net"));
    assert_eq!((ok.fleet.load_admin_port, ok.fleet.load_poll_ms), (9464, 500));
    for (table, key) in [
        ("name = \"not a name\"", "fleet.name"),
        ("name = \"\"", "fleet.name"),
        ("load_poll_ms = 10", "fleet.load_poll_ms"),
        ("load_poll_ms = 600000", "fleet.load_poll_ms"),
        ("load_admin_port = 70000", "load_admin_port"),
    ] {
        let err = with(table).unwrap_err().to_string();
        assert!(err.contains(key), "{table}: {err}");
    }
    let err = Config::parse(&format!("{MINIMAL}\n[admission]\nbounded_load_epsilon = 1.5\n")).unwrap_err();
    assert!(
        err.to_string().contains("admission.bounded_load_epsilon"),
        "{err}"
    );
    // 0 is valid: it turns the cap off (control::admission's tests say so).
    Config::parse(&format!("{MINIMAL}\n[admission]\nbounded_load_epsilon = 0\n")).unwrap();
}

#[test]
fn a_fleet_view_too_large_for_a_welcome_is_refused() {
    let long: Vec<String> = (0..512)
        .map(|i| format!("\"{}{i}.example:4433\"", "c".repeat(240)))
        .collect();
    let text = format!("{MINIMAL}\n[fleet]\nmembers = [{}]\n", long.join(", "));
    let err = Config::parse(&text).unwrap_err();
    assert!(err.to_string().contains("too much for a Welcome"), "{err}");
    let too_many: Vec<String> = (0..513)
        .map(|i| format!("\"10.0.{}.{}:1\"", i / 250, i % 250))
        .collect();
    let text = format!("{MINIMAL}\n[fleet]\nmembers = [{}]\n", too_many.join(", "));
    assert!(
        Config::parse(&text)
            .unwrap_err()
            .to_string()
            .contains("more than 512")
    );
}

#[test]
fn nats_sink_keys_are_checked_by_name() {
    let with = |table: &str| {
        Config::parse(&format!(
            "{MINIMAL}\n[sink]\nkind = \"nats\"\n[sink.nats]\n{table}\n"
        ))
    };
    let ok = with("servers = [\"nats://10.0.0.1:4222\", \"tls://n2:4222\"]\ntoken = \"t\"").unwrap();
    assert_eq!(ok.sink.kind, SinkKind::Nats);
    assert!(
        !format!("{:?}", ok.sink.nats).contains("\"t\""),
        "a token never shows in Debug output"
    );
    let cases = [
        ("servers = []", "sink.nats.servers"),
        ("servers = [\"nats://bad host:4222\"]", "sink.nats.servers[0]"),
        ("token = \"t\"\nuser = \"u\"\npassword = \"p\"", "at most one of"),
        ("user = \"u\"", "sink.nats.password"),
        ("stream = \"a.b\"", "sink.nats.stream"),
        ("subject_prefix = \"flows.>\"", "sink.nats.subject_prefix"),
        ("subject_prefix = \"flows..x\"", "sink.nats.subject_prefix"),
        ("replicas = 7", "sink.nats.replicas"),
        ("max_in_flight = 0", "sink.nats.max_in_flight"),
        ("max_age_ms = 1000", "sink.nats.max_age_ms"),
        ("stream_name = \"x\"", "stream_name"),
    ];
    for (table, key) in cases {
        let err = with(table).unwrap_err().to_string();
        assert!(err.contains(key), "{table}: {err}");
    }
}

#[test]
fn relative_paths_follow_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, format!("data_dir = \"data\"\n{MINIMAL}")).unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.data_dir, dir.path().join("data"));
    assert_eq!(c.tls.cert, dir.path().join("server.pem"));
}
