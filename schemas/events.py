"""The usage event envelope: CloudEvents 1.0, JSON structured mode.

Decoding is one msgspec call into a typed struct, so a wrong type or a missing attribute comes back
as a precise `msgspec.ValidationError` ("Expected `str`, got `int` - at `$.id`"). Unknown extra
attributes are ignored. Numbers inside `data` decode to `int` or, through `float_hook`, to an exact
`Decimal` built from the JSON text: a usage value never passes through a binary float.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class CloudEvent(msgspec.Struct, frozen=True):
    specversion: Literal["1.0"]
    id: NonEmpty
    source: NonEmpty
    type: NonEmpty
    subject: NonEmpty
    time: datetime
    data: dict[str, Any]


EVENT_DECODER = msgspec.json.Decoder(CloudEvent, float_hook=Decimal)
