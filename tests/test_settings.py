"""flows.settings: every option read one way (flag, else METERWAX_*, else default), every
problem reported together, Kafka security settings, and secrets that are never printed."""

from __future__ import annotations

import ast
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from flows.settings import (
    ApiSettings,
    ClusterProblem,
    Options,
    Secret,
    SettingsError,
    StreamSettings,
    parse_duration,
    pod_ordinal,
    redact_url,
    stateful_set_cluster,
)
from meterwax import cli

ROOT = Path(__file__).resolve().parents[1]
CATALOG = str(ROOT / "catalog" / "example.yaml")
PASSWORD = "s3cr3t-Pa55"
CA = "/etc/ssl/certs/ca-certificates.crt"

BASE: dict[str, Any] = {
    "catalog": CATALOG, "kafka_bootstrap": "k:9092", "input_topic": "t",
    "redis_url": f"redis://meterwax:{PASSWORD}@redis:6379/0", "clickhouse": "/tmp/ch",
    "recovery_dir": "/tmp/rec",
}


def settings(environ: dict[str, str] | None = None, **flags: Any) -> StreamSettings:
    return StreamSettings.from_mapping({**BASE, **flags}, environ=environ or {})


def problems(environ: dict[str, str] | None = None, **flags: Any) -> list[str]:
    with pytest.raises(SettingsError) as err:
        StreamSettings.from_mapping({**BASE, **flags}, environ=environ or {})
    return err.value.problems


def _imports(module: str) -> set[str]:
    tree = ast.parse((ROOT / module).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_settings_import_neither_front_end() -> None:
    # The cycle this module ended: stream.py read its durations through meterwax.cli.
    assert "meterwax.cli" not in _imports("flows/stream.py")
    assert not {"meterwax.cli", "flows.stream"} & _imports("flows/settings.py")
    assert "flows.settings" in _imports("meterwax/cli.py")
    assert cli.parse_duration is parse_duration  # bench/bench_stream.py imports it from cli


# -- one way to read an option -----------------------------------------------------------------

def test_flag_then_environment_then_default() -> None:
    assert settings().window == timedelta(minutes=1)
    assert settings({"METERWAX_WINDOW": "5m"}).window == timedelta(minutes=5)
    assert settings({"METERWAX_WINDOW": "5m"}, window="10m").window == timedelta(minutes=10)
    # A config map that sets a variable to "" means "unset".
    assert settings({"METERWAX_WINDOW": ""}).window == timedelta(minutes=1)
    env = {k.removeprefix("METERWAX_").lower(): v for k, v in {
        "METERWAX_CATALOG": CATALOG, "METERWAX_KAFKA_BOOTSTRAP": "e:1"}.items()}
    from_env = StreamSettings.from_mapping(
        {**BASE, "catalog": None, "kafka_bootstrap": None},
        environ={f"METERWAX_{k.upper()}": v for k, v in env.items()})
    assert from_env.catalog == CATALOG and from_env.kafka_bootstrap == "e:1"


def test_every_option_reads_the_environment() -> None:
    got = settings({"METERWAX_METRICS_PORT": "9464", "METERWAX_PROCESS_ID": "1",
                    "METERWAX_ADDRESSES": "a:1, b:2", "METERWAX_STOP_AT_END": "true",
                    "METERWAX_TOPIC_PREFIX": "x.", "METERWAX_REDIS_NAMESPACE": "ns",
                    "METERWAX_DEDUP_TTL": "2d", "METERWAX_WORKERS": "3"})
    assert (got.metrics_port, got.process_id, got.addresses, got.stop_at_end) == (
        9464, 1, ("a:1", "b:2"), True)
    assert (got.topics.candidates, got.redis_namespace, got.dedup_ttl, got.workers) == (
        "x.invoice-candidates", "ns", timedelta(days=2), 3)
    # A flag wins over its variable, for lists and switches too.
    flagged = settings({"METERWAX_ADDRESSES": "a:1,b:2", "METERWAX_PROCESS_ID": "1"},
                       addresses=["c:3"], process_id="0")
    assert (flagged.addresses, flagged.process_id) == (("c:3",), 0)
    assert settings({"METERWAX_STOP_AT_END": "0"}).stop_at_end is False
    assert settings({"METERWAX_STOP_AT_END": "0"}, stop_at_end=True).stop_at_end is True
    # An empty prefix is a real value: topics without one.
    assert settings({"METERWAX_TOPIC_PREFIX": ""}).topics.dead_letter == "dead-letter"


def test_bad_environment_values_are_problem_lines_not_errors() -> None:
    found = problems({"METERWAX_WORKERS": "abc", "METERWAX_METRICS_PORT": "http",
                      "METERWAX_PROCESS_ID": "x", "METERWAX_ADDRESSES": "a:1",
                      "METERWAX_STOP_AT_END": "maybe", "METERWAX_DEDUP_TTL": "forever"})
    assert found == ["metrics_port: not a whole number: 'http'",
                     "dedup_ttl: not a duration: 'forever' (use e.g. 30s, 1m, 1h30m, 2d)",
                     "workers: not a whole number: 'abc'",
                     "process_id: not a whole number: 'x'",
                     "stop_at_end: not true or false: 'maybe'"]


def test_typed_values_from_code_are_judged_like_text() -> None:
    assert settings(window=timedelta(minutes=2)).window == timedelta(minutes=2)
    assert problems(window=timedelta(seconds=1.5)) == [
        "window: must be a whole number of seconds"]
    assert problems(window=timedelta(0)) == ["window: must be longer than zero"]


def test_run_reads_flags_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # run and demo are judged from their command line alone, as documented.
    monkeypatch.setenv("METERWAX_WINDOW", "5m")
    opts = Options({"window": None})
    assert opts.value("window", parse_duration, timedelta(1)) == timedelta(1)
    opts = Options({"window": "x"})
    opts.value("window", parse_duration, None)
    assert opts.problems == ["--window: not a duration: 'x' (use e.g. 30s, 1m, 1h30m, 2d)"]


# -- Kafka security ----------------------------------------------------------------------------

SASL = {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": "meterwax", "kafka_ssl_ca_location": CA}


def test_security_settings_become_librdkafka_properties() -> None:
    got = settings({"METERWAX_KAFKA_SASL_PASSWORD": PASSWORD}, **SASL)
    config = got.kafka().config()
    assert config == {"bootstrap.servers": "k:9092", "security.protocol": "SASL_SSL",
                      "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "meterwax",
                      "sasl.password": PASSWORD, "ssl.ca.location": CA}
    assert settings().kafka().config() == {"bootstrap.servers": "k:9092"}  # as before
    assert settings(kafka_security_protocol="ssl").kafka().config()["security.protocol"] == "SSL"


@pytest.mark.skipif(not Path(CA).is_file(), reason="no system CA bundle")
def test_librdkafka_accepts_the_properties() -> None:
    from confluent_kafka import Producer

    got = settings({"METERWAX_KAFKA_SASL_PASSWORD": PASSWORD}, **SASL)
    # Construction validates every property name and value, and loads the CA file; it does
    # not wait for the (absent) broker.
    Producer(got.kafka().config())


def test_security_settings_are_judged_together() -> None:
    assert problems(kafka_security_protocol="SASL_PLAINTEXT") == [
        "kafka_sasl_mechanism: required with --kafka-security-protocol SASL_PLAINTEXT "
        "(flag --kafka-sasl-mechanism or METERWAX_KAFKA_SASL_MECHANISM)",
        "kafka_sasl_username: required with --kafka-security-protocol SASL_PLAINTEXT "
        "(flag --kafka-sasl-username or METERWAX_KAFKA_SASL_USERNAME)",
        "kafka_sasl_password: required with --kafka-security-protocol SASL_PLAINTEXT "
        "(flag --kafka-sasl-password or METERWAX_KAFKA_SASL_PASSWORD)"]
    assert problems(kafka_sasl_username="u", kafka_ssl_ca_location=CA) == [
        "kafka_sasl_username: only used with --kafka-security-protocol SASL_PLAINTEXT or "
        "SASL_SSL, not PLAINTEXT",
        "kafka_ssl_ca_location: only used with --kafka-security-protocol SSL or SASL_SSL, "
        "not PLAINTEXT"]
    assert problems(kafka_security_protocol="TLS", kafka_sasl_mechanism="GSSAPI",
                    kafka_ssl_ca_location="/no/such/ca.pem") == [
        "kafka_security_protocol: not one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL: 'TLS'",
        "kafka_sasl_mechanism: not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512: 'GSSAPI'",
        "kafka_ssl_ca_location: no such file: '/no/such/ca.pem'"]
    # Reported with the other settings' problems, all at once.
    found = problems({"METERWAX_WORKERS": "0"}, kafka_security_protocol="SSL",
                     kafka_ssl_ca_location="")
    assert found == ["workers: must be at least 1, got 0"]


# -- secrets -----------------------------------------------------------------------------------

def test_secrets_are_never_printed() -> None:
    got = settings({"METERWAX_KAFKA_SASL_PASSWORD": PASSWORD},
                   clickhouse=f"https://u:{PASSWORD}@ch:8443", **SASL)
    for text in (repr(got), str(got), repr(got.kafka()), repr(got.kafka_security)):
        assert PASSWORD not in text, text
        assert "***" in text
    assert "redis://meterwax:***@redis:6379/0" in repr(got)
    extra = StreamSettings(**{**BASE, "topics": got.topics,
                              "kafka_extra": (("ssl.key.password", PASSWORD),)})
    assert PASSWORD not in repr(extra) and PASSWORD not in repr(extra.kafka())


@pytest.mark.parametrize("flags", [
    {"kafka_sasl_password": PASSWORD},  # given where it is not used
    {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_password": PASSWORD},
    {"kafka_security_protocol": PASSWORD, "kafka_sasl_password": PASSWORD},
    {"kafka_sasl_password": PASSWORD, "workers": "0", "catalog": "/none"},
])
def test_problem_lines_never_hold_the_password(flags: dict[str, Any]) -> None:
    with pytest.raises(SettingsError) as err:
        StreamSettings.from_mapping({**BASE, **flags}, environ={})
    assert err.value.problems
    for text in (*err.value.problems, str(err.value)):
        if flags.get("kafka_security_protocol") == PASSWORD and "security_protocol" in text:
            continue  # the value was typed into the protocol: it is the protocol, quoted
        assert PASSWORD not in text, text


def test_cli_never_prints_the_password(capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("METERWAX_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("METERWAX_KAFKA_SASL_PASSWORD", PASSWORD)
    code = cli.main(["stream", "--redis-url", f"redis://:{PASSWORD}@r:1"])
    out = capsys.readouterr()
    assert code == 2
    assert "kafka_sasl_password: only used with" in out.err
    assert PASSWORD not in out.err + out.out


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://r:6379/0", "redis://r:6379/0"),
    ("redis://user:pw@r:6379/0", "redis://user:***@r:6379/0"),
    ("rediss://:pw@r:6380", "rediss://:***@r:6380"),
    ("redis://token@r", "redis://***@r"),
    ("redis://u:p@ss/w@rd@r:1/0", "redis://u:***@r:1/0"),  # unescaped @ and / in a password
    ("/var/lib/chdb", "/var/lib/chdb"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_secret_shows_nothing() -> None:
    secret = Secret(PASSWORD)
    assert repr(secret) == str(secret) == f"{secret}" == "***"
    assert secret.reveal() == PASSWORD


def test_retry_settings_read_like_the_stream_and_report_every_problem() -> None:
    from flows.settings import RetrySettings

    with pytest.raises(SettingsError) as err:
        RetrySettings.from_mapping({"reason": "NOPE", "since": "yesterday",
                                    "kafka_security_protocol": "SASL_SSL"}, environ={})
    problems = err.value.problems
    assert [p.split(":")[0] for p in problems] == [
        "--kafka-bootstrap", "--input-topic", "--reason", "--since", "--kafka-sasl-mechanism",
        "--kafka-sasl-username", "--kafka-sasl-password"], problems
    settings = RetrySettings.from_mapping(
        {"reason": "UNKNOWN_SUBJECT", "subject": "acme-prod"},
        environ={"METERWAX_KAFKA_BOOTSTRAP": "k:9092", "METERWAX_INPUT_TOPIC": "usage",
                 "METERWAX_TOPIC_PREFIX": "prod."})
    assert (settings.kafka_bootstrap, settings.input_topic) == ("k:9092", "usage")
    assert settings.topics.dead_letter == "prod.dead-letter"
    assert (settings.select.reason, settings.select.subject) == ("UNKNOWN_SUBJECT", "acme-prod")
    assert not settings.dry_run


@pytest.mark.parametrize(("given", "expected"), [
    (None, timedelta(minutes=5)), ("0", timedelta(0)), ("10s", timedelta(seconds=10)),
    ("1h", timedelta(hours=1))])
def test_api_reconcile_every(tmp_path: Path, given: str | None,
                             expected: timedelta) -> None:
    (tmp_path / "reconciliation.json").write_text("{}")
    values = {"out": str(tmp_path), "reconcile_every": given}
    assert ApiSettings.from_mapping(values, environ={}).reconcile_every == expected


@pytest.mark.parametrize("given", ["5s", "-1", "soon"])
def test_api_reconcile_every_refused(tmp_path: Path, given: str) -> None:
    (tmp_path / "reconciliation.json").write_text("{}")
    with pytest.raises(SettingsError) as err:
        ApiSettings.from_mapping({"out": str(tmp_path), "reconcile_every": given}, environ={})
    (problem,) = err.value.problems
    assert problem.startswith("--reconcile-every: ")


def test_a_settings_error_names_its_command(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as err:
        ApiSettings.from_mapping({"out": str(tmp_path / "missing")}, environ={})
    assert str(err.value).startswith("api settings have problems:\n  - --out: ")


# -- a cluster of StatefulSet pods -------------------------------------------------------------

SERVICE = "meterwax.billing.svc.cluster.local"


def pod(ordinal: int, replicas: int = 3, **extra: str) -> dict[str, str]:
    return {"METERWAX_CLUSTER_REPLICAS": str(replicas), "HOSTNAME": f"meterwax-{ordinal}",
            "METERWAX_CLUSTER_SERVICE": SERVICE, **extra}


def test_every_pod_derives_the_same_addresses_and_its_own_process_id() -> None:
    addresses = tuple(f"meterwax-{i}.{SERVICE}:2101" for i in range(3))
    for ordinal in range(3):
        assert stateful_set_cluster(3, f"meterwax-{ordinal}", None, SERVICE) == (
            addresses, ordinal)
        got = settings(pod(ordinal, METERWAX_POD_INDEX=str(ordinal)))
        assert (got.addresses, got.process_id) == (addresses, ordinal)
    # The pod-index label may be absent (older clusters set none; "" from the downward API).
    assert settings(pod(1, METERWAX_POD_INDEX="")).process_id == 1
    assert stateful_set_cluster(2, "stream-1", None, "peers", 7000) == (
        ("stream-0.peers:7000", "stream-1.peers:7000"), 1)
    # The set's name is whatever precedes the ordinal, dashes and all.
    assert pod_ordinal("meterwax-eu-12") == ("meterwax-eu", 12)


def test_one_replica_is_a_standalone_process() -> None:
    assert stateful_set_cluster(1, "meterwax-0") == ((), None)
    got = settings(pod(0, replicas=1))
    assert (got.addresses, got.process_id) == ((), None)


def test_explicit_process_id_and_addresses_win_over_the_derivation() -> None:
    got = settings(pod(2), process_id="0", addresses=["a:1", "b:2"])
    assert (got.addresses, got.process_id) == (("a:1", "b:2"), 0)
    # Given explicitly, they are judged as always: one without the other is a problem.
    assert problems(pod(2), process_id="0") == ["addresses: required with --process-id"]
    assert problems(pod(2, METERWAX_ADDRESSES="a:1")) == [
        "process_id: required with --addresses"]


@pytest.mark.parametrize(("environ", "expected"), [
    (pod(3), ["cluster_replicas: 3, but this is pod ordinal 3 (a cluster of 3 has ordinals "
              "0..2): it must equal the StatefulSet's spec.replicas"]),
    (pod(0, METERWAX_CLUSTER_REPLICAS="three"), ["cluster_replicas: not a whole number: 'three'"]),
    (pod(0, METERWAX_CLUSTER_REPLICAS="0"), ["cluster_replicas: must be at least 1, got 0"]),
    (pod(0, HOSTNAME="meterwax"), [
        "HOSTNAME: 'meterwax' is not a StatefulSet pod name <name>-<ordinal>: cannot derive the "
        "process id (outside a StatefulSet, set METERWAX_PROCESS_ID and METERWAX_ADDRESSES "
        "instead)"]),
    (pod(0, HOSTNAME="meterwax-01"), [
        "HOSTNAME: 'meterwax-01' is not a StatefulSet pod name <name>-<ordinal>: cannot derive "
        "the process id (outside a StatefulSet, set METERWAX_PROCESS_ID and METERWAX_ADDRESSES "
        "instead)"]),
    (pod(1, METERWAX_POD_INDEX="2"), [
        "pod_index: 2 disagrees with the pod name 'meterwax-1' (ordinal 1)"]),
    (pod(1, METERWAX_POD_INDEX="one"), ["pod_index: not a whole number: 'one'"]),
    (pod(1, METERWAX_CLUSTER_SERVICE="Meterwax_Peers"), [
        "cluster_service: not a DNS name: 'Meterwax_Peers'"]),
    (pod(1, METERWAX_CLUSTER_PORT="99999"), ["cluster_port: must be at most 65535, got 99999"]),
])
def test_a_pod_that_cannot_be_placed_says_which_setting_to_fix(
        environ: dict[str, str], expected: list[str]) -> None:
    assert problems(environ) == expected


def test_cluster_problems_are_reported_with_the_others() -> None:
    environ = {k: v for k, v in pod(0).items() if k != "HOSTNAME"}
    found = problems({**environ, "METERWAX_CLUSTER_PORT": "x", "METERWAX_WORKERS": "0"})
    assert found == [
        "workers: must be at least 1, got 0", "cluster_port: not a whole number: 'x'",
        "HOSTNAME: not set, so not a StatefulSet pod name <name>-<ordinal>: cannot derive the "
        "process id (outside a StatefulSet, set METERWAX_PROCESS_ID and METERWAX_ADDRESSES "
        "instead)"]


def test_the_derivation_refuses_as_a_plain_function() -> None:
    with pytest.raises(ClusterProblem) as err:
        stateful_set_cluster(2, "meterwax-5")
    assert err.value.setting == "cluster_replicas"
    with pytest.raises(ClusterProblem) as err:
        pod_ordinal("")
    assert err.value.setting == "HOSTNAME"
