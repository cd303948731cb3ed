"""The usage event envelope: CloudEvents 1.0, JSON structured mode.

Decoding is one msgspec call into a typed struct, so a wrong type or a missing attribute comes back
as a precise `msgspec.ValidationError` ("Expected `str`, got `int` - at `$.id`"). Unknown extra
attributes are ignored. Numbers inside `data` decode to `int` or, through `float_hook`, to an exact
`Decimal` built from the JSON text: a usage value never passes through a binary float.

The identity attributes are bounded (operators/limits.MAX_ATTRIBUTE_CHARS): they become dedup keys
in Redis, Kafka message keys and ClickHouse columns, so a megabyte-long subject is refused here.
The optional CloudEvents attributes are declared so that the duplicate-key check
(operators/envelope.py) can count them without decoding the line a second time.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec

# Re-exported by operators/limits.py with the other limits.
MAX_ATTRIBUTE_CHARS = 1024
Attribute = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ATTRIBUTE_CHARS)]


class CloudEvent(msgspec.Struct, frozen=True):
    specversion: Literal["1.0"]
    id: Attribute
    source: Attribute
    type: Attribute
    subject: Attribute
    time: datetime
    data: dict[str, Any]
    datacontenttype: str | None = None
    dataschema: str | None = None


# The required attributes, and the optional ones CloudEvent declares.
REQUIRED_ATTRIBUTES = 7

EVENT_DECODER = msgspec.json.Decoder(CloudEvent, float_hook=Decimal)
