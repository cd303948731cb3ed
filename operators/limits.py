"""The limits of what meterwax accepts, in one place.

Every value that enters from outside (an event line, a catalog, an argument) is judged against
these before it is used, so nothing downstream can overflow, wrap or raise on it. Each limit is
chosen from what the next stage can hold exactly, and the README's rules list them:

- the store keeps quantities and amounts as ClickHouse Decimal(38, 18): below 10^20, at most 18
  fractional digits;
- event times are stored as DateTime64(6, 'UTC') (1900-01-01 .. 2299-12-31) and periods are
  calendar months that must have a successor, so the accepted range is narrower than both;
- Python's own limits (recursion, int/str conversion of 4300 digits, Decimal exponents) must
  never be reached by input, because reaching them raises instead of answering.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from schemas.events import MAX_ATTRIBUTE_CHARS as EVENT_ATTRIBUTE_CHARS

# Usage values: below 10^18 with at most 9 fractional digits (operators/money.MAX_SCALE), so a
# value times a catalog price (also at most 9 digits) has at most 18 fractional digits.
MAX_VALUE = Decimal(10) ** 18
MAX_VALUE_INT = 10**18

# What a stored quantity or amount (Decimal(38, 18)) can hold: strictly below 10^20.
STORE_LIMIT = Decimal(10) ** 20

# Catalog money (prices, fees, minimums, rates): below 10^12. Bounded so that the largest amount
# a charge can rate is known up front (`operators.pricers.quantity_cap`).
MAX_PRICE = Decimal(10) ** 12
# Catalog quantities (tier bounds, package sizes): the same bound as usage values.
MAX_QUANTITY = MAX_VALUE

# Event and contract times: from the Unix epoch to 2200-01-01, exclusive. Every instant in it
# is storable, has a UTC epoch second >= 0 and a month with a successor.
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(2200, 1, 1, tzinfo=UTC)
MIN_TS = 0
MAX_TS = int(MAX_TIME.timestamp())

# An event line: at most 1 MiB (Kafka's default message size) and JSON nested at most 32 levels
# deep. Longer or deeper lines are INVALID_JSON without being parsed.
MAX_LINE_BYTES = 1 << 20
MAX_DEPTH = 32
# Envelope attributes (id, source, type, subject): at most this many characters. They become
# dedup keys in Redis, Kafka keys and ClickHouse columns.
MAX_ATTRIBUTE_CHARS = EVENT_ATTRIBUTE_CHARS
# How much of an over-long line an exception record keeps (its length is recorded too).
RAW_KEEP_BYTES = 64 * 1024

# Events dated further ahead of the processing clock than this are quarantined (FUTURE_EVENT).
DEFAULT_MAX_FUTURE = timedelta(hours=24)

# How long after its close a period still takes late usage: the dedup TTL (see README, "Running
# for months"). Past it a late copy can no longer be told from a replayed duplicate.
DEFAULT_RETENTION = timedelta(days=35)

# Late usage for an issued period is settled into one adjustment per period this often, in
# watermark time (operators/rating.py): one correction document a day, not one per late event.
DEFAULT_ADJUSTMENT_CYCLE = timedelta(days=1)

# Durations given as arguments (windows, lateness, horizons, TTLs): at most ten years.
MAX_DURATION = timedelta(days=3660)

# The HTTP API (meterwax/api/). Ids in paths and query strings are catalog ids or event
# attributes, so they are bounded like event attributes; a longer one is a 400, never a lookup.
MAX_ID_LENGTH = MAX_ATTRIBUTE_CHARS
# A list answers at most this many items a page (`limit`), and DEFAULT_PAGE when not asked.
MAX_PAGE = 500
DEFAULT_PAGE = 100
# A usage query covers at most this many buckets: a minute granularity over a year would be
# half a million rows for one request.
MAX_USAGE_BUCKETS = 10_000
# The per-token rate limit (requests a second, and the burst), per API process.
DEFAULT_RATE_LIMIT = 100.0
DEFAULT_RATE_BURST = 200.0
# Producer tokens (POST /v1/events) have a limit of their own (flows/settings.py ApiSettings).
DEFAULT_INGEST_RATE_LIMIT = 2000.0
DEFAULT_INGEST_RATE_BURST = 4000.0
# A request body (POST /v1/exceptions/retry takes a small JSON filter) is at most this big.
MAX_API_BODY_BYTES = 16 * 1024
# POST /v1/events: a request body is at most this big (one event is at most MAX_LINE_BYTES),
# and a batch holds at most this many events. Beyond either: 413, nothing written. Bounded so
# that one request's events fit the producer's queue at once and its answer waits for one
# round of acknowledgements, not many.
MAX_EVENTS_BODY_BYTES = 4 * 1024 * 1024
MAX_BATCH_EVENTS = 1000
