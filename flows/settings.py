"""Every option meterwax reads, parsed and judged in one place.

Both front ends use it: `meterwax.cli` for the command line of `run`, `demo` and the rest, and
`StreamSettings.from_mapping` for `meterwax stream`, whose options may also come from the
environment. An option is read one way (`Options`): the flag, else `METERWAX_<NAME>` (for the
commands that read the environment), else the default. A bad value never stops the reading: it
becomes a problem line, and all of them are reported together, before anything is touched.

Secrets (the SASL password, credentials inside URLs) are kept out of every `repr` and every
problem line, so a settings object can be logged and a bad config reported safely.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from operators.limits import (
    DEFAULT_ADJUSTMENT_CYCLE,
    DEFAULT_MAX_FUTURE,
    DEFAULT_RETENTION,
    MAX_DURATION,
    MAX_TIME,
    MIN_TIME,
)
from operators.periods import Month
from operators.retry import RetryFilter
from schemas.records import CONTRACT_REFUSED, REASONS

# What `exceptions retry --reason` takes: every reason but CONTRACT_REFUSED, whose dead letters
# are contracts records, not events (fix the catalog and publish it again instead).
RETRYABLE = tuple(r for r in REASONS if r != CONTRACT_REFUSED)

if TYPE_CHECKING:
    from flows.kafka_io import KafkaSettings

T = TypeVar("T")

ENV_PREFIX = "METERWAX_"

DEFAULT_WINDOW = timedelta(minutes=1)
DEFAULT_LATENESS = timedelta(hours=1)
# An input partition that reads nothing this long stops holding back period closes: long enough
# that a producer's pause or a broker failover does not turn a lagging partition's usage into
# adjustments, short against the allowed lateness a period waits anyway.
DEFAULT_IDLE_TIMEOUT = timedelta(minutes=1)
DEFAULT_DEDUP_TTL = DEFAULT_RETENTION  # one horizon: operators/ingest.py, "Retention"
MAX_WORKERS = 64
_LIMIT = f"the 10-year limit ({MAX_DURATION.days} days)"
_MAX_SECONDS = int(MAX_DURATION.total_seconds())

# ASCII digits only: str.isdigit() and \d also take other scripts' digits and superscripts.
_DURATION = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?|([0-9]+)")
_UNITS = (86400, 3600, 60, 1, 1)
# Ten years is a 9-digit number of seconds: a part with more significant digits than this is
# over the limit whatever its unit, and is never handed to int() (4300-digit limit) or
# timedelta (OverflowError).
_MAX_DIGITS = 12
_INTEGER = re.compile(r"[+-]?[0-9]+")
_MONTH = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")


# -- values ----------------------------------------------------------------------------------

def shown(text: str) -> str:
    """The argument as quoted in a message: hostile input may be a megabyte long."""
    return repr(text if len(text) <= 40 else text[:40] + "...")


def parse_duration(text: str) -> timedelta:
    """'90s', '1m', '1h30m', '2d'. A bare number is seconds. At most the 10-year limit."""
    match = _DURATION.fullmatch(text) if text else None
    if match is None:
        msg = f"not a duration: {shown(text)} (use e.g. 30s, 1m, 1h30m, 2d)"
        raise argparse.ArgumentTypeError(msg)
    seconds = 0
    for part, unit in zip(match.groups(), _UNITS, strict=True):
        digits = (part or "").lstrip("0")
        if len(digits) > _MAX_DIGITS:
            seconds = _MAX_SECONDS + 1
            break
        seconds += int(digits or "0") * unit
    if seconds > _MAX_SECONDS:
        msg = f"{shown(text)} is longer than {_LIMIT}"
        raise argparse.ArgumentTypeError(msg)
    return timedelta(seconds=seconds)


def parse_positive_duration(text: str) -> timedelta:
    value = parse_duration(text)
    if value <= timedelta(0):
        msg = "must be longer than zero"
        raise argparse.ArgumentTypeError(msg)
    return value


# A zero-length window would put every event in a window of its own that never closes.
parse_window = parse_positive_duration


def int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not _INTEGER.fullmatch(text):
            msg = f"not a whole number: {shown(text)}"
            raise argparse.ArgumentTypeError(msg)
        # Longer than any bound we use: judged by its sign, never converted.
        value = int(text) if len(text) <= 30 else (low - 1 if text[0] == "-" else high + 1)
        if value < low:
            msg = f"must be at least {low}, got {shown(text) if len(text) > 30 else value}"
            raise argparse.ArgumentTypeError(msg)
        if value > high:
            msg = f"must be at most {high}, got {shown(text) if len(text) > 30 else value}"
            raise argparse.ArgumentTypeError(msg)
        return value

    return parse


parse_workers = int_between(1, MAX_WORKERS)
parse_port = int_between(1, 65535)


def parse_month(text: str) -> Month:
    match = _MONTH.fullmatch(text)
    if not match:
        msg = f"not a month: {shown(text)} (use YYYY-MM)"
        raise argparse.ArgumentTypeError(msg)
    if not MIN_TIME.year <= int(match.group(1)) < MAX_TIME.year:
        msg = (f"{text} is outside {MIN_TIME.year}-01 .. {MAX_TIME.year - 1}-12, the months "
               "meterwax can bill")
        raise argparse.ArgumentTypeError(msg)
    return Month.parse(text)


def parse_instant(text: str) -> datetime:
    """An RFC 3339 timestamp with its UTC offset, within the times meterwax accepts."""
    try:
        value = msgspec.convert(text, datetime)
    except msgspec.ValidationError:
        msg = f"not an RFC 3339 timestamp: {shown(text)} (use e.g. 2026-12-01T00:00:00Z)"
        raise argparse.ArgumentTypeError(msg) from None
    if value.tzinfo is None:
        msg = f"{shown(text)} has no UTC offset (add Z or +HH:MM)"
        raise argparse.ArgumentTypeError(msg)
    if not MIN_TIME <= value < MAX_TIME:
        msg = f"{shown(text)} is outside {MIN_TIME:%Y-%m-%d} .. {MAX_TIME:%Y-%m-%d} (exclusive)"
        raise argparse.ArgumentTypeError(msg)
    return value


def one_of(choices: Sequence[str]) -> Callable[[str], str]:
    """One of `choices`, in any letter case (librdkafka's own enums ignore case too)."""
    def parse(text: str) -> str:
        if text.upper() not in choices:
            msg = f"not one of {', '.join(choices)}: {shown(text)}"
            raise argparse.ArgumentTypeError(msg)
        return text.upper()

    return parse


def parse_switch(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    msg = f"not true or false: {shown(text)}"
    raise argparse.ArgumentTypeError(msg)


# -- paths -----------------------------------------------------------------------------------

def file_problem(path: str) -> str | None:
    """Why `path` cannot be read as a file (None: it can)."""
    st, problem = _stat_readable(path)
    if st is not None and stat.S_ISDIR(st.st_mode):
        return f"{shown(path)} is a folder, not a file"
    # A pipe or a device is fine (`--events <(zcat events.gz)`); only its readability counts.
    return problem


def path_problem(path: str) -> str | None:
    """Why `path` is neither a readable file nor a readable folder (None: it is one)."""
    return _stat_readable(path)[1]


def _stat_readable(path: str) -> tuple[os.stat_result | None, str | None]:
    if not path:
        return None, "must not be empty"
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None, f"no such file: {shown(path)}"
    except (OSError, ValueError) as exc:
        return None, f"cannot be read: {shown(path)}: {getattr(exc, 'strerror', None) or exc}"
    if not os.access(path, os.R_OK):
        return st, f"{shown(path)} is not readable"
    return st, None


def existing_path(text: str) -> str:
    problem = path_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def inside(path: str, folder: str) -> bool:
    try:
        inner, outer = os.path.realpath(path), os.path.realpath(folder)
    except (OSError, ValueError):
        return False
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


# -- secrets ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Secret:
    """A value that must never be printed: its repr and str are `***`."""

    value: str

    def __repr__(self) -> str:
        return "***"

    __str__ = __repr__

    def reveal(self) -> str:
        return self.value


# The userinfo of a URL: up to the LAST "@", since a password may hold "@" and "/" unescaped.
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)(.*)@")


def redact_url(url: str) -> str:
    """`url` with any password in it replaced by ***: redis://user:***@host:6379/0."""
    match = _USERINFO.match(url)
    if match is None:
        return url
    user, colon, _password = match.group(2).partition(":")
    # No colon: some clients read a lone userinfo as the password (rediss://token@host).
    hidden = f"{user}:***" if colon else "***"
    return f"{match.group(1)}{hidden}@{url[match.end():]}"


def hide_secrets(properties: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """librdkafka properties as they may be shown: every *.password value replaced by ***."""
    return tuple((key, "***" if key.endswith("password") else value)
                 for key, value in properties)


# -- reading options -------------------------------------------------------------------------

def flag_label(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


class Options:
    """Reads options one way: the flag, else METERWAX_<NAME> (when `environ` is given), else
    the default. A bad value is a problem line in `problems` and the default is used instead,
    so that every problem can be reported at once."""

    def __init__(self, flags: Mapping[str, Any], environ: Mapping[str, str] | None = None, *,
                 label: Callable[[str], str] = flag_label,
                 blank_is_default: bool = False) -> None:
        self.flags = flags
        self.environ: Mapping[str, str] = environ if environ is not None else {}
        self.label = label
        # Stream mode: a config map often sets a variable to "" to mean "leave it unset".
        self.blank_is_default = blank_is_default
        self.problems: list[str] = []

    def note(self, label: str, message: str) -> None:
        # One line per problem, even when a path given to us holds a newline.
        line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
        self.problems.append(f"{label}: {line}")

    def add(self, name: str, message: str) -> None:
        self.note(self.label(name), message)

    def raw(self, name: str) -> Any:
        value = self.flags.get(name)
        return value if value is not None else self.environ.get(env_name(name))

    def given(self, name: str) -> bool:
        value = self.raw(name)
        return value is not None and not (self.blank_is_default and value == "")

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self.raw(name)
        return default if value is None else str(value)

    def value(self, name: str, convert: Callable[[str], T], default: T) -> T:
        if not self.given(name):
            return default
        value = self.raw(name)
        if isinstance(value, timedelta):  # already typed (a caller that is not the CLI)
            if value.total_seconds() % 1:
                self.add(name, "must be a whole number of seconds")
                return default
            value = f"{int(value.total_seconds())}s" if value >= timedelta(0) else str(value)
        try:
            return convert(str(value))
        except argparse.ArgumentTypeError as exc:
            self.add(name, str(exc))
            return default

    def required(self, name: str) -> str:
        value = self.raw(name)
        if not value:
            self.add(name, f"required (flag {flag_label(name)} or {env_name(name)})")
            return ""
        return str(value)

    def listed(self, name: str) -> tuple[str, ...]:
        """A repeated flag, or a comma-separated environment variable."""
        value = self.flags.get(name)
        if value:
            return tuple(str(v) for v in value)
        text = self.environ.get(env_name(name), "")
        return tuple(part.strip() for part in text.split(",") if part.strip())

    def switch(self, name: str) -> bool:
        """An on/off flag: given, it is on; else METERWAX_<NAME> (true/false), else off."""
        # argparse stores False for an absent store_true flag: only True says it was given.
        if self.flags.get(name):
            return True
        text = self.environ.get(env_name(name))
        if not text:
            return False
        try:
            return parse_switch(text)
        except argparse.ArgumentTypeError as exc:
            self.add(name, str(exc))
            return False

    def secret(self, name: str) -> Secret | None:
        return Secret(str(self.raw(name))) if self.given(name) else None

    def readable_file(self, name: str, path: str) -> bool:
        problem = file_problem(path)
        if problem:
            self.add(name, problem)
        return problem is None


# -- stream settings -------------------------------------------------------------------------

class SettingsError(ValueError):
    """A command's settings are unusable; `problems` lists every one, `command` says whose."""

    def __init__(self, problems: list[str], command: str = "stream") -> None:
        self.problems = problems
        super().__init__(f"{command} settings have problems:\n" + "\n".join(
            f"  - {p}" for p in problems))


@dataclass(frozen=True)
class Topics:
    candidates: str
    ar_invoices: str
    journals: str
    schedules: str
    invoice_exceptions: str
    dead_letter: str
    # The contracts in force: one compacted record per legal entity, meter, plan, customer and
    # setting (operators/contracts.py), read by the stream and written by `contracts publish`.
    contracts: str = "meterwax.contracts"

    @classmethod
    def with_prefix(cls, prefix: str) -> Topics:
        return cls(candidates=f"{prefix}invoice-candidates", ar_invoices=f"{prefix}ar-invoices",
                   journals=f"{prefix}journals", schedules=f"{prefix}revenue-schedules",
                   invoice_exceptions=f"{prefix}invoice-exceptions",
                   dead_letter=f"{prefix}dead-letter", contracts=f"{prefix}contracts")


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_SASL = ("SASL_PLAINTEXT", "SASL_SSL")
_TLS = ("SSL", "SASL_SSL")


@dataclass(frozen=True)
class KafkaSecurity:
    """How meterwax authenticates to Kafka and checks the broker; none: PLAINTEXT."""

    protocol: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_ca_location: str | None = None

    def properties(self) -> tuple[tuple[str, str], ...]:
        """As librdkafka properties (the password revealed: only for the client's config)."""
        password = self.sasl_password.reveal() if self.sasl_password else None
        pairs = (("security.protocol", self.protocol), ("sasl.mechanism", self.sasl_mechanism),
                 ("sasl.username", self.sasl_username), ("sasl.password", password),
                 ("ssl.ca.location", self.ssl_ca_location))
        return tuple((key, value) for key, value in pairs if value is not None)


def read_kafka_security(options: Options) -> KafkaSecurity:
    before = len(options.problems)
    protocol = options.value("kafka_security_protocol", one_of(SECURITY_PROTOCOLS), None)
    # An unreadable protocol says nothing about which other settings it needs.
    judge_combination = len(options.problems) == before
    security = KafkaSecurity(
        protocol=protocol,
        sasl_mechanism=options.value("kafka_sasl_mechanism", one_of(SASL_MECHANISMS), None),
        sasl_username=options.text("kafka_sasl_username") or None,
        sasl_password=options.secret("kafka_sasl_password"),
        ssl_ca_location=options.value("kafka_ssl_ca_location", existing_path, None),
    )
    if judge_combination:
        _check_security(options, security)
    return security


def _check_security(options: Options, security: KafkaSecurity) -> None:
    protocol = security.protocol or "PLAINTEXT"
    sasl = {"kafka_sasl_mechanism": security.sasl_mechanism,
            "kafka_sasl_username": security.sasl_username,
            "kafka_sasl_password": security.sasl_password}
    for name, value in sasl.items():
        # A given but unreadable value is already a problem: not "required" on top of it.
        if protocol in _SASL and value is None and not options.given(name):
            options.add(name, f"required with --kafka-security-protocol {protocol} "
                              f"(flag {flag_label(name)} or {env_name(name)})")
        elif protocol not in _SASL and options.given(name):
            options.add(name, "only used with --kafka-security-protocol SASL_PLAINTEXT or "
                              f"SASL_SSL, not {protocol}")
    if options.given("kafka_ssl_ca_location") and protocol not in _TLS:
        options.add("kafka_ssl_ca_location", "only used with --kafka-security-protocol SSL or "
                                             f"SASL_SSL, not {protocol}")


def _is_address(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isascii() and port.isdigit() and len(port) <= 5 \
        and 1 <= int(port) <= 65535


@dataclass(frozen=True)
class StreamSettings:
    catalog: str | None  # None: rate against what the contracts topic holds; else publish it first
    kafka_bootstrap: str
    input_topic: str
    redis_url: str
    clickhouse: str  # http(s)://... for a server, otherwise a chDB data path
    recovery_dir: str
    topics: Topics
    redis_namespace: str = "meterwax"  # one per deployment: dedup keys and running charges
    window: timedelta = DEFAULT_WINDOW
    allowed_lateness: timedelta = DEFAULT_LATENESS
    dedup_ttl: timedelta = DEFAULT_DEDUP_TTL
    # Events dated further ahead of the system clock than this are quarantined (FUTURE_EVENT).
    max_future: timedelta = DEFAULT_MAX_FUTURE
    adjustment_cycle: timedelta = DEFAULT_ADJUSTMENT_CYCLE
    # An input partition that reads nothing this long stops holding back period closes
    # (operators/protocol.py, flows/kafka_io.py).
    idle_timeout: timedelta = DEFAULT_IDLE_TIMEOUT
    workers: int = 1
    process_id: int | None = None
    addresses: tuple[str, ...] = ()
    epoch_interval: timedelta = timedelta(seconds=2)
    stop_at_end: bool = False  # bounded run: read every partition to its end, then stop
    chunk: int = 2000
    kafka_extra: tuple[tuple[str, str], ...] = field(default=())
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    metrics_port: int | None = None

    def __repr__(self) -> str:
        # Logged and printed freely, so credentials in URLs and properties are hidden.
        hidden: dict[str, Any] = {
            "redis_url": redact_url(self.redis_url), "clickhouse": redact_url(self.clickhouse),
            "kafka_extra": hide_secrets(self.kafka_extra)}
        parts = (f"{f.name}={hidden.get(f.name, getattr(self, f.name))!r}" for f in fields(self))
        return f"StreamSettings({', '.join(parts)})"

    def kafka(self) -> KafkaSettings:
        from flows.kafka_io import KafkaSettings

        return KafkaSettings(self.kafka_bootstrap,
                             self.kafka_security.properties() + self.kafka_extra)

    def contracts(self) -> ContractsSettings:
        """The same deployment's settings for publishing contracts (`--catalog F`)."""
        return ContractsSettings(kafka_bootstrap=self.kafka_bootstrap, topics=self.topics,
                                 redis_url=self.redis_url, redis_namespace=self.redis_namespace,
                                 kafka_security=self.kafka_security)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any],
                     environ: Mapping[str, str] | None = None) -> StreamSettings:
        """Flags first, then METERWAX_* environment variables (`environ`, default the process
        environment); every problem reported at once (`SettingsError`)."""
        opts = Options(values, os.environ if environ is None else environ,
                       label=lambda name: name, blank_is_default=True)
        metrics_port = opts.value("metrics_port", parse_port, None)
        required = {name: opts.required(name) for name in (
            "kafka_bootstrap", "input_topic", "redis_url", "clickhouse", "recovery_dir")}
        catalog = opts.text("catalog") or None
        dedup_ttl = opts.value("dedup_ttl", parse_positive_duration, DEFAULT_DEDUP_TTL)
        window = opts.value("window", parse_window, DEFAULT_WINDOW)
        allowed_lateness = opts.value("allowed_lateness", parse_duration, DEFAULT_LATENESS)
        max_future = opts.value("max_future", parse_duration, DEFAULT_MAX_FUTURE)
        adjustment_cycle = opts.value("adjustment_cycle", parse_positive_duration,
                                      DEFAULT_ADJUSTMENT_CYCLE)
        idle_timeout = opts.value("idle_timeout", parse_positive_duration,
                                  DEFAULT_IDLE_TIMEOUT)
        workers = opts.value("workers", parse_workers, 1)
        addresses, process_id = _cluster(opts)
        if catalog:
            problem = file_problem(catalog)
            if problem:
                opts.add("catalog", problem)
        security = read_kafka_security(opts)
        stop_at_end = opts.switch("stop_at_end")
        if opts.problems:
            raise SettingsError(opts.problems)
        return cls(
            catalog=catalog, kafka_bootstrap=required["kafka_bootstrap"],
            input_topic=required["input_topic"], redis_url=required["redis_url"],
            clickhouse=required["clickhouse"], recovery_dir=required["recovery_dir"],
            topics=Topics.with_prefix(opts.text("topic_prefix", "meterwax.") or ""),
            redis_namespace=opts.text("redis_namespace", "meterwax") or "",
            dedup_ttl=dedup_ttl, window=window, allowed_lateness=allowed_lateness,
            max_future=max_future, adjustment_cycle=adjustment_cycle,
            idle_timeout=idle_timeout, workers=workers, process_id=process_id,
            addresses=addresses, stop_at_end=stop_at_end, kafka_security=security,
            metrics_port=metrics_port,
        )


@dataclass(frozen=True)
class RetrySettings:
    """`meterwax exceptions retry`: where the dead letters are, where to send them, and which.
    Read like `stream`'s: flags, then the same METERWAX_* variables (a deployment's env file
    serves both), every problem reported at once."""

    kafka_bootstrap: str
    input_topic: str
    topics: Topics
    select: RetryFilter
    dry_run: bool = False
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)

    def kafka(self) -> KafkaSettings:
        from flows.kafka_io import KafkaSettings

        return KafkaSettings(self.kafka_bootstrap, self.kafka_security.properties())

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any],
                     environ: Mapping[str, str] | None = None) -> RetrySettings:
        opts = Options(values, os.environ if environ is None else environ,
                       blank_is_default=True)
        required = {name: opts.required(name) for name in ("kafka_bootstrap", "input_topic")}
        reason = opts.value("reason", one_of(RETRYABLE), None)
        since = opts.value("since", parse_instant, None)
        until = opts.value("until", parse_instant, None)
        if since is not None and until is not None and until <= since:
            opts.add("until", f"must be after --since ({since.isoformat()})")
        security = read_kafka_security(opts)
        if opts.problems:
            raise SettingsError(opts.problems, "exceptions retry")
        return cls(
            kafka_bootstrap=required["kafka_bootstrap"], input_topic=required["input_topic"],
            topics=Topics.with_prefix(opts.text("topic_prefix", "meterwax.") or ""),
            select=RetryFilter(reason=reason, subject=opts.text("subject") or None,
                               since=since, until=until),
            dry_run=opts.switch("dry_run"), kafka_security=security)


@dataclass(frozen=True)
class ContractsSettings:
    """`meterwax contracts publish|show`: the contracts topic, and where the stream keeps its
    running charges (read to refuse, before publishing, a change that would alter rated usage;
    optional, since the flow refuses it anyway). Read like `stream`'s: flags, then the same
    METERWAX_* variables, every problem reported at once."""

    kafka_bootstrap: str
    topics: Topics
    redis_url: str | None = None
    redis_namespace: str = "meterwax"
    dry_run: bool = False
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)

    def __repr__(self) -> str:
        return (f"ContractsSettings(kafka_bootstrap={self.kafka_bootstrap!r}, "
                f"topics={self.topics!r}, redis_url="
                f"{redact_url(self.redis_url) if self.redis_url else None!r}, "
                f"redis_namespace={self.redis_namespace!r}, dry_run={self.dry_run!r})")

    def kafka(self) -> KafkaSettings:
        from flows.kafka_io import KafkaSettings

        return KafkaSettings(self.kafka_bootstrap, self.kafka_security.properties())

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any],
                     environ: Mapping[str, str] | None = None) -> ContractsSettings:
        opts = Options(values, os.environ if environ is None else environ,
                       blank_is_default=True)
        bootstrap = opts.required("kafka_bootstrap")
        security = read_kafka_security(opts)
        if opts.problems:
            raise SettingsError(opts.problems, "contracts")
        return cls(kafka_bootstrap=bootstrap,
                   topics=Topics.with_prefix(opts.text("topic_prefix", "meterwax.") or ""),
                   redis_url=opts.text("redis_url") or None,
                   redis_namespace=opts.text("redis_namespace", "meterwax") or "",
                   dry_run=opts.switch("dry_run"), kafka_security=security)


def _cluster(opts: Options) -> tuple[tuple[str, ...], int | None]:
    """Where every process is, and which one this is: a cluster needs both. Given explicitly
    (-i/-a, or METERWAX_PROCESS_ID/ADDRESSES), they win; otherwise METERWAX_CLUSTER_REPLICAS
    derives both from the StatefulSet pod this runs in (`stateful_set_cluster`)."""
    addresses = opts.listed("addresses")
    replicas = opts.value("cluster_replicas", parse_replicas, None)
    explicit = bool(addresses) or opts.given("process_id")
    if replicas is not None and not explicit:
        return _derived_cluster(opts, replicas)
    process_id = None
    if opts.given("process_id") and addresses:
        process_id = opts.value("process_id", int_between(0, len(addresses) - 1), None)
    elif opts.given("process_id"):
        opts.add("addresses", "required with --process-id")
    elif addresses:
        opts.add("process_id", "required with --addresses")
    for address in addresses:
        if not _is_address(address):
            opts.add("addresses", f"not host:port: {address!r}")
    return addresses, process_id


# -- a cluster of StatefulSet pods -----------------------------------------------------------
#
# Why derived, not written per pod: a StatefulSet has one pod template, so anything that differs
# between pods must come from the pod itself. The ordinal is the pod's identity (its name, its
# DNS record under the headless Service, its volume), and Bytewax's process id must follow it:
# process i always runs on the pod whose volume holds process i's recovery partitions. The
# replica count cannot come from the downward API, so METERWAX_CLUSTER_REPLICAS repeats
# spec.replicas (tests/test_k8s.py checks they agree); a pod whose ordinal is not below it is
# refused rather than started as a process no peer expects.

MAX_PROCESSES = 256
DEFAULT_CLUSTER_PORT = 2101
DEFAULT_CLUSTER_SERVICE = "meterwax"
# A StatefulSet pod name, `<set>-<ordinal>`: ordinals are written without leading zeros, so
# "meterwax-03" is some other pod's name, not ordinal 3's.
_POD_NAME = re.compile(r"([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)-(0|[1-9][0-9]{0,5})")
_DNS_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")

parse_replicas = int_between(1, MAX_PROCESSES)


class ClusterProblem(argparse.ArgumentTypeError):
    """Why a StatefulSet pod cannot be placed in its cluster; `setting` is the one to fix."""

    def __init__(self, message: str, *, setting: str) -> None:
        super().__init__(message)
        self.setting = setting


def pod_ordinal(hostname: str) -> tuple[str, int]:
    """The StatefulSet's name and this pod's ordinal, read from its pod name (the HOSTNAME
    Kubernetes gives every StatefulSet pod)."""
    match = _POD_NAME.fullmatch(hostname) if len(hostname) <= 253 else None
    if match is None:
        what = f"{shown(hostname)} is not" if hostname else "not set, so not"
        msg = (f"{what} a StatefulSet pod name <name>-<ordinal>: cannot derive the process id "
               "(outside a StatefulSet, set METERWAX_PROCESS_ID and METERWAX_ADDRESSES instead)")
        raise ClusterProblem(msg, setting="HOSTNAME")
    return match.group(1), int(match.group(2))


def stateful_set_cluster(replicas: int, hostname: str, pod_index: int | None = None,
                         service: str = DEFAULT_CLUSTER_SERVICE,
                         port: int = DEFAULT_CLUSTER_PORT) -> tuple[tuple[str, ...], int | None]:
    """Bytewax's addresses and process id for the pod `hostname` of a StatefulSet of
    `replicas` pods behind the headless Service `service` (its DNS name).

    `pod_index` is the ordinal from the downward API (label apps.kubernetes.io/pod-index, the
    controller's own record; None: the name's suffix is used). The name is needed anyway, for
    the peers' DNS names, so the two must agree: a pod whose name was overridden would have
    neither the DNS record nor the volume its ordinal implies. One replica is a standalone
    process (no addresses, no id), exactly as without these settings, so a single pod started
    with them resumes the store it made before."""
    name, ordinal = pod_ordinal(hostname)
    if pod_index is not None and pod_index != ordinal:
        msg = f"{pod_index} disagrees with the pod name {shown(hostname)} (ordinal {ordinal})"
        raise ClusterProblem(msg, setting="pod_index")
    if ordinal >= replicas:
        msg = (f"{replicas}, but this is pod ordinal {ordinal} (a cluster of {replicas} has "
               f"ordinals 0..{replicas - 1}): it must equal the StatefulSet's spec.replicas")
        raise ClusterProblem(msg, setting="cluster_replicas")
    if len(service) > 253 or not _DNS_NAME.fullmatch(service):
        msg = f"not a DNS name: {shown(service)}"
        raise ClusterProblem(msg, setting="cluster_service")
    if replicas == 1:
        return (), None
    return tuple(f"{name}-{i}.{service}:{port}" for i in range(replicas)), ordinal


def _derived_cluster(opts: Options, replicas: int) -> tuple[tuple[str, ...], int | None]:
    service = opts.text("cluster_service") or DEFAULT_CLUSTER_SERVICE
    port = opts.value("cluster_port", parse_port, DEFAULT_CLUSTER_PORT)
    pod_index = opts.value("pod_index", int_between(0, MAX_PROCESSES - 1), None)
    hostname = opts.environ.get("HOSTNAME", "")
    try:
        return stateful_set_cluster(replicas, hostname, pod_index, service, port)
    except ClusterProblem as exc:
        # HOSTNAME is Kubernetes', not a METERWAX_* setting: named as it is.
        opts.note("HOSTNAME" if exc.setting == "HOSTNAME" else opts.label(exc.setting),
                  str(exc))
        return (), None


def parse_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0.1 <= value <= 1_000_000:
        msg = f"not a rate between 0.1 and 1000000 requests a second: {shown(text)}"
        raise argparse.ArgumentTypeError(msg)
    return value


@dataclass(frozen=True)
class ApiSettings:
    """`meterwax api`: where it listens and what it serves. `out`: the folder of a run (the
    embedded default, no servers); otherwise a stream deployment's Redis, ClickHouse and Kafka,
    read like `stream`'s (flags, then the same METERWAX_* variables). `--out` on the command
    line wins over a deployment's variables: a folder is what was asked for."""

    host: str = "127.0.0.1"
    port: int = 8080
    out: str | None = None
    redis_url: str | None = None
    clickhouse: str | None = None
    kafka_bootstrap: str | None = None
    input_topic: str | None = None
    topics: Topics = field(default_factory=lambda: Topics.with_prefix("meterwax."))
    redis_namespace: str = "meterwax"
    rate_limit: float = 100.0
    rate_burst: float = 200.0
    # Producer tokens send usage, many requests a second each: a limit of their own, so a
    # dashboard's limit does not throttle a service's usage and a producer cannot spend
    # what protects the read routes. A batch request counts once.
    ingest_rate_limit: float = 2000.0
    ingest_rate_burst: float = 4000.0
    # Events the producer may hold unacknowledged (sinks/event_producer.py): beyond it a
    # request is answered 503 at once instead of queueing without bound.
    ingest_queue: int = 100_000
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    workers: int = 1
    # How often the current and previous months are reconciled in the background for the
    # variance gauges (0: only when /v1/reconciliation is asked). Each worker process checks.
    reconcile_every: timedelta = timedelta(minutes=5)

    def __repr__(self) -> str:
        return (f"ApiSettings(host={self.host!r}, port={self.port!r}, out={self.out!r}, "
                f"redis_url={redact_url(self.redis_url) if self.redis_url else None!r}, "
                f"clickhouse={redact_url(self.clickhouse) if self.clickhouse else None!r}, "
                f"kafka_bootstrap={self.kafka_bootstrap!r}, topics={self.topics!r})")

    def kafka(self) -> KafkaSettings:
        from flows.kafka_io import KafkaSettings

        return KafkaSettings(self.kafka_bootstrap or "", self.kafka_security.properties())

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any],
                     environ: Mapping[str, str] | None = None) -> ApiSettings:
        env = os.environ if environ is None else environ
        out = values.get("out") or None
        opts = Options(values, {} if out else env, blank_is_default=True)
        host = opts.text("host", "127.0.0.1") or "127.0.0.1"
        port = opts.value("port", parse_port, 8080)
        rate = opts.value("rate_limit", parse_rate, 100.0)
        workers = opts.value("workers", int_between(1, 64), 1)
        burst = opts.value("rate_burst", parse_rate, max(200.0, 2 * rate))
        ingest_rate = opts.value("ingest_rate_limit", parse_rate, 2000.0)
        ingest_burst = opts.value("ingest_rate_burst", parse_rate, max(200.0, 2 * ingest_rate))
        ingest_queue = opts.value("ingest_queue", int_between(1, 10_000_000), 100_000)
        reconcile_every = opts.value("reconcile_every", parse_duration, timedelta(minutes=5))
        if timedelta(0) < reconcile_every < timedelta(seconds=10):
            opts.add("reconcile_every", "must be 0 (off) or at least 10s: each check reads "
                                        "two months of documents")
        for name, value in (("rate_burst", burst), ("ingest_rate_burst", ingest_burst)):
            if value < 1:
                opts.add(name, "must be at least 1")
        redis_url = clickhouse = bootstrap = None
        if out:
            problem = _folder_problem(str(out))
            if problem:
                opts.add("out", problem)
            if workers > 1:
                opts.add("workers", "a run's folder is one embedded chDB store, which one "
                                    "process opens at a time: serve it with 1 worker")
        else:
            redis_url = opts.text("redis_url") or None
            clickhouse = opts.text("clickhouse") or None
            bootstrap = opts.text("kafka_bootstrap") or None
            if not (redis_url or clickhouse or bootstrap):
                opts.note("meterwax api", "give --out DIR (the folder of a `meterwax run` or "
                                          "`meterwax demo`), or a stream deployment's "
                                          "--redis-url, --clickhouse and --kafka-bootstrap")
            else:
                for name, given in (("redis_url", redis_url), ("clickhouse", clickhouse),
                                    ("kafka_bootstrap", bootstrap)):
                    if not given:
                        opts.add(name, f"required with a stream deployment (flag "
                                       f"{flag_label(name)} or {env_name(name)})")
        security = read_kafka_security(opts)
        if opts.problems:
            raise SettingsError(opts.problems, "api")
        return cls(host=host, port=port, out=str(out) if out else None, redis_url=redis_url,
                   clickhouse=clickhouse, kafka_bootstrap=bootstrap,
                   input_topic=opts.text("input_topic") or None,
                   topics=Topics.with_prefix(opts.text("topic_prefix", "meterwax.") or ""),
                   redis_namespace=opts.text("redis_namespace", "meterwax") or "",
                   rate_limit=rate, rate_burst=burst, ingest_rate_limit=ingest_rate,
                   ingest_rate_burst=ingest_burst, ingest_queue=ingest_queue,
                   kafka_security=security,
                   workers=workers, reconcile_every=reconcile_every)


@dataclass(frozen=True)
class TokensSettings:
    """`meterwax tokens`: the store, a run's folder (`--out`) or a deployment's Redis."""

    out: str | None = None
    redis_url: str | None = None
    redis_namespace: str = "meterwax"

    def __repr__(self) -> str:
        return (f"TokensSettings(out={self.out!r}, redis_url="
                f"{redact_url(self.redis_url) if self.redis_url else None!r}, "
                f"redis_namespace={self.redis_namespace!r})")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any],
                     environ: Mapping[str, str] | None = None) -> TokensSettings:
        env = os.environ if environ is None else environ
        out = values.get("out") or None
        opts = Options(values, {} if out else env, blank_is_default=True)
        if out:
            problem = _folder_problem(str(out))
            if problem:
                opts.add("out", problem)
        elif not opts.text("redis_url"):
            opts.note("meterwax tokens", "give --out DIR (a run's folder) or --redis-url "
                                         "(a stream deployment's, or METERWAX_REDIS_URL)")
        if opts.problems:
            raise SettingsError(opts.problems, "tokens")
        return cls(out=str(out) if out else None,
                   redis_url=None if out else opts.text("redis_url"),
                   redis_namespace=opts.text("redis_namespace", "meterwax") or "")


def _folder_problem(out: str) -> str | None:
    if not os.path.isdir(out):
        return f"{out} is not a folder"
    if not os.path.isfile(os.path.join(out, "reconciliation.json")):
        return f"{out} holds no finished run (no reconciliation.json): run `meterwax run` first"
    return None
