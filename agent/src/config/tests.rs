//! Tests of the meter's config: the example equals the defaults, and each check says which key
//! is wrong.

use super::*;

const MINIMAL: &str = r#"
    org_id = "acme"
    org_token = "rft_x"
    collectors = ["127.0.0.1:4433"]
    ca_file = "ca.pem"
"#;

#[test]
fn example_config_parses_to_the_defaults() {
    let example = Config::parse(EXAMPLE_CONFIG).unwrap();
    let minimal = Config::parse(MINIMAL).unwrap();
    assert_eq!(format!("{:?}", example.batch), format!("{:?}", minimal.batch));
    assert_eq!(format!("{:?}", example.fleet), format!("{:?}", minimal.fleet));
    assert_eq!(format!("{:?}", example.spool), format!("{:?}", minimal.spool));
    assert_eq!(format!("{:?}", example.admin), format!("{:?}", minimal.admin));
    assert_eq!(
        format!("{:?}", example.reconnect),
        format!("{:?}", minimal.reconnect)
    );
    assert_eq!(
        format!("{:?}", example.shutdown),
        format!("{:?}", minimal.shutdown)
    );
    assert_eq!(example.state_dir, minimal.state_dir);
    assert_eq!(format!("{:?}", example.sources), format!("{:?}", minimal.sources));
}

#[test]
fn spool_and_admin_settings_are_checked() {
    let with = |table: &str| Config::parse(&format!("{MINIMAL}\n{table}\n"));
    let err = with("[spool]\nsegment_bytes = 1024").unwrap_err();
    assert!(err.to_string().contains("spool.segment_bytes"), "{err}");
    let err = with("[spool]\nmax_bytes = 1048576\nsegment_bytes = 1048576").unwrap_err();
    assert!(err.to_string().contains("spool.max_bytes"), "{err}");
    let err = with("[spool]\nfsync = \"sometimes\"").unwrap_err();
    assert!(err.to_string().contains("fsync"), "{err}");
    let err = with("[admin]\nlisten = \"0.0.0.0:9465\"").unwrap_err();
    assert!(
        err.to_string().contains("admin.listen") && err.to_string().contains("loopback"),
        "{err}"
    );
    assert!(with("[admin]\nenabled = false\nlisten = \"0.0.0.0:9465\"").is_ok());
    assert!(with("[spool]\nfsync = \"always\"\n[admin]\nlisten = \"[::1]:0\"").is_ok());
}

#[test]
fn addresses_are_checked() {
    assert_eq!(
        split_host_port("collector.example:4433"),
        Some(("collector.example", 4433))
    );
    assert_eq!(split_host_port("[::1]:4433"), Some(("::1", 4433)));
    assert_eq!(split_host_port("::1:4433"), None);
    assert_eq!(split_host_port("host"), None);
    let err = Config::parse(&MINIMAL.replace("127.0.0.1:4433", "127.0.0.1")).unwrap_err();
    assert!(err.to_string().contains("collectors[0]"), "{err}");
}

#[test]
fn token_is_required_once() {
    let none = MINIMAL.replace("org_token = \"rft_x\"", "");
    assert!(
        Config::parse(&none)
            .unwrap_err()
            .to_string()
            .contains("org_token_file")
    );
    let both = format!("{MINIMAL}\norg_token_file = \"t\"\n");
    assert!(Config::parse(&both).unwrap_err().to_string().contains("not both"));
}

#[test]
fn server_name_defaults_to_the_fleet_name_then_the_host() {
    let c = Config::parse(&MINIMAL.replace("127.0.0.1:4433", "c1.example:4433")).unwrap();
    assert_eq!(c.server_name_for("c1.example:4433"), "c1.example");
    let c = Config::parse(&format!("{MINIMAL}\n[fleet]\nname = \"collectors.example\"\n")).unwrap();
    assert_eq!(c.server_name_for("10.0.0.1:4433"), "collectors.example");
}

#[test]
fn a_fleet_name_or_a_static_collector_is_required() {
    let none = MINIMAL.replace("collectors = [\"127.0.0.1:4433\"]", "");
    let err = Config::parse(&none).unwrap_err();
    assert!(err.to_string().contains("fleet.name"), "{err}");
    let fleet_only = format!("{none}\n[fleet]\nname = \"collectors.example\"\n");
    assert!(Config::parse(&fleet_only).is_ok());
    let bad = format!("{none}\n[fleet]\nname = \"not a name\"\n");
    assert!(
        Config::parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("not a DNS name")
    );
}
