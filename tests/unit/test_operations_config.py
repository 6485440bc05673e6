"""[limits], [retention] and [server] log_format; token buckets; log redaction and JSON lines."""

from __future__ import annotations

import io
import json
import logging

import pytest

from gateway import logs
from gateway.config import ConfigError, LimitsConfig, RetentionConfig, parse_config
from gateway.ratelimit import Buckets


def test_defaults_and_values():
    default = parse_config({})
    assert default.limits == LimitsConfig() and default.limits.requests_per_second > 0
    assert default.retention == RetentionConfig(0, 0) and default.server.log_format == "text"
    config = parse_config(
        {
            "server": {"log_format": "json"},
            "limits": {"requests_per_second": 2.5, "burst": 5, "login_per_minute": 0},
            "retention": {"raw_messages_days": 90, "audit_days": 3650},
        }
    )
    assert config.server.log_format == "json"
    assert config.limits == LimitsConfig(2.5, 5, 0.0, 20)
    assert config.retention == RetentionConfig(90, 3650)


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"server": {"log_format": "xml"}}, "server.log_format"),
        ({"limits": {"requests_per_second": -1}}, "limits.requests_per_second"),
        ({"limits": {"burst": 0}}, "limits.burst"),
        ({"limits": {"login_per_minute": "many"}}, "limits.login_per_minute"),
        ({"limits": {"per_party": 3}}, "limits.per_party"),
        ({"retention": {"audit_days": -5}}, "retention.audit_days"),
        ({"retention": {"raw_days": 5}}, "retention.raw_days"),
    ],
)
def test_bad_values_name_the_key(data, named):
    with pytest.raises(ConfigError) as error:
        parse_config(data, "gateway.toml")
    assert named in str(error.value) and "gateway.toml" in str(error.value)


def test_a_bucket_gives_its_burst_then_says_how_long_to_wait():
    buckets = Buckets(rate=0.001, burst=3)  # one token per 1000 s: nothing refills during the test
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = buckets.take("a")
    assert 900 < wait <= 1000
    assert buckets.take("b") == 0.0  # every key has its own bucket
    off = Buckets(rate=0, burst=1)
    assert {off.take("a") for _ in range(100)} == {0.0}


def test_many_keys_do_not_grow_the_buckets_without_end():
    buckets = Buckets(rate=1000.0, burst=1, max_keys=50)
    for n in range(500):
        buckets.take(f"10.0.{n // 256}.{n % 256}")
    assert len(buckets._state) <= 51


@pytest.mark.parametrize(
    "line",
    [
        "Authorization: Bearer rcg_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
        "GET /ivr/login?party=12345678&pin=482913 200",
        "form party_id=12345678&password=correct%20horse&next=/",
        '{"secret": "hunter2hunter2"}',
        "<wsse:Password>rcg_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG</wsse:Password>",
    ],
)
def test_redaction_blanks_credentials(line):
    cleaned = logs.redact(line)
    for secret in ("rcg_abcdefghijklmnop", "482913", "correct%20horse", "hunter2hunter2"):
        assert secret not in cleaned
    assert "[redacted]" in cleaned


def test_a_json_line_carries_the_request_id_of_the_work_it_belongs_to():
    stream = io.StringIO()
    logs.setup("json", stream=stream)
    try:
        with logs.bind("job-42"):
            logging.getLogger("roadcargo.test").warning("processed file with key=rcg_secretsecretsecret")
        logging.getLogger("roadcargo.test").warning("outside")
    finally:
        logging.getLogger().handlers.clear()
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["request_id"] == "job-42" and first["level"] == "WARNING"
    assert "rcg_secret" not in first["message"] and first["logger"] == "roadcargo.test"
    assert second["request_id"] is None
