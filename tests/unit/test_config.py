import pytest

from gateway.config import Config, ConfigError, load_config


def write(tmp_path, text):
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_no_file_gives_the_documented_defaults():
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.rules.lodgement_window_days == 14
    assert cfg.rules.bundle_lead_minutes == 30
    assert cfg.server.max_body_bytes == 67108864
    assert cfg.edifact.identifier == "HKCUSTOMS"
    assert set(cfg.control_points) == {"LMC", "MKT", "STK", "SBC", "HYW", "HZM"}
    assert cfg.control_points["LMC"].slot_capacity == 120


def test_values_are_read_and_control_points_merge_with_defaults(tmp_path):
    cfg = load_config(
        write(
            tmp_path,
            """
[rules]
lodgement_window_days = 10
[control_points.LMC]
slot_capacity = 60
[control_points.TST]
name = "Test Point"
lanes = ["A"]
[[sftp.pull]]
name = "big"
party = "12345678"
host = "127.0.0.1"
user = "customs"
private_key = "k"
host_key = "ssh-ed25519 AAAA"
remote_inbox = "/in"
remote_outbox = "/out"
""",
        )
    )
    assert cfg.rules.lodgement_window_days == 10
    assert cfg.control_points["LMC"].slot_capacity == 60
    assert cfg.control_points["LMC"].name == "Lok Ma Chau"
    assert cfg.control_points["TST"].lanes == ("A",)
    assert cfg.sftp.pull[0].port == 22


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[rules]\nlodgment_window_days = 3\n", "rules.lodgment_window_days"),
        ("[rulez]\n", "rulez"),
        ("[server]\nmax_body_bytes = 'big'\n", "server.max_body_bytes"),
        ("[control_points.LMC]\nslots = 3\n", "control_points.LMC.slots"),
        ("[control_points.LMC]\nopens = '25:00'\n", "control_points.LMC.opens"),
        ("[control_points.NEW]\nslot_minutes = 5\n", "'name'"),
        ("[sftp]\npush = 1\n", "sftp.push"),
        ("[risk]\nrandom_rate = 2\n", "risk.random_rate"),
        ("[risk]\nsecret = 'abc'\n", "risk.secret"),
    ],
)
def test_a_bad_key_is_an_error_that_names_it(tmp_path, text, named):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert named in str(err.value)
    assert "gateway.toml" in str(err.value)


def test_missing_file_and_bad_toml_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[rules\n"))
