"""Reading a partition's offsets while a new topic's leader is being elected. The real race
(a topic the flow has just created) cannot be provoked on demand against the broker, so the
waiting rule is tested with a consumer that answers the way librdkafka does."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from flows.kafka_io import watermarks


class _Answers:
    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls = 0

    def get_watermark_offsets(self, tp: Any, timeout: float, cached: bool) -> tuple[int, int]:
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, int):
            raise KafkaException(KafkaError(answer))
        return answer


def test_not_leader_yet_is_waited_out() -> None:
    consumer = _Answers(KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                        (0, 42))
    assert watermarks(consumer, None, within=5) == (0, 42)
    assert consumer.calls == 3


def test_any_other_error_is_raised_at_once() -> None:
    consumer = _Answers(KafkaError.TOPIC_AUTHORIZATION_FAILED, (0, 42))
    with pytest.raises(KafkaException):
        watermarks(consumer, None, within=5)
    assert consumer.calls == 1


def test_a_leader_that_never_comes_is_raised_after_the_deadline() -> None:
    consumer = _Answers(*[KafkaError.NOT_LEADER_FOR_PARTITION] * 50)
    with pytest.raises(KafkaException):
        watermarks(consumer, None, within=0.3)
    assert 1 < consumer.calls < 50
