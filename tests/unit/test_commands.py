from __future__ import annotations

import orjson
import pytest

from agentcast.codes import ErrorCode
from agentcast.core.commands import command_id, encode_reply, error_frame, parse
from agentcast.core.envelope import payload_of_frame
from agentcast.core.frames import PingCommand, PublishCommand, SubscribeCommand, valid_topic
from agentcast.errors import ProtocolError


def test_parse_valid_commands() -> None:
    assert isinstance(parse("ping"), PingCommand)
    sub = parse('{"type":"subscribe","topic":"workflow:1","since":3,"id":"a"}')
    assert isinstance(sub, SubscribeCommand) and (sub.topic, sub.since, sub.id) == (
        "workflow:1",
        3,
        "a",
    )
    pub = parse('{"type":"publish","topic":"t","event":"x","data":{"k":1}}')
    assert isinstance(pub, PublishCommand) and pub.data == {"k": 1}


@pytest.mark.parametrize(
    ("text", "code", "field"),
    [
        ("{nope", ErrorCode.BAD_JSON, None),
        ("[1,2]", ErrorCode.BAD_FRAME, None),
        ('{"topic":"t"}', ErrorCode.BAD_FRAME, "type"),
        ('{"type":"dance"}', ErrorCode.UNKNOWN_COMMAND, "type"),
        ('{"type":"subscribe"}', ErrorCode.INVALID_FIELD, "topic"),
        ('{"type":"subscribe","topic":"t","since":"3"}', ErrorCode.INVALID_FIELD, "since"),
        ('{"type":"subscribe","topic":"t","since":true}', ErrorCode.INVALID_FIELD, "since"),
        ('{"type":"ping","id":1.5}', ErrorCode.INVALID_FIELD, "id"),
        ('{"type":"subscribe","topic":"has space"}', ErrorCode.INVALID_TOPIC, "topic"),
        ('{"type":"subscribe","topic":"t","since":-1}', ErrorCode.INVALID_FIELD, "since"),
        ('{"type":"subscribe","topic":"t","since":"x"}', ErrorCode.INVALID_FIELD, "since"),
        ('{"type":"publish","topic":"t","event":"x","data":[1]}', ErrorCode.INVALID_FIELD, "data"),
        ('{"type":"publish","topic":"t","event":"a\\u0000b"}', ErrorCode.INVALID_FIELD, "event"),
    ],
)
def test_parse_errors_name_code_and_field(text: str, code: ErrorCode, field: str | None) -> None:
    with pytest.raises(ProtocolError) as info:
        parse(text)
    assert info.value.code is code
    assert info.value.field == field
    data = info.value.to_data()
    assert data["code"] == code.value and data["message"]


def test_command_id_best_effort() -> None:
    assert command_id('{"id": 5, "type": 1}') == 5
    assert command_id('{"id": true}') is None
    assert command_id("{bad") is None
    assert command_id("[]") is None


def test_replies_are_framed_json() -> None:
    frame = encode_reply("pong", "ts", {}, id=3)
    assert orjson.loads(payload_of_frame(frame)) == {
        "type": "pong",
        "id": 3,
        "timestamp": "ts",
        "data": {},
    }
    err = error_frame(ProtocolError(ErrorCode.BAD_JSON, "bad", field="x"), "ts")
    assert orjson.loads(payload_of_frame(err))["data"] == {
        "code": "bad_json",
        "message": "bad",
        "field": "x",
    }


def test_valid_topic() -> None:
    assert valid_topic("execution:00000000-0000-0000-0000-000000000003")
    assert valid_topic("chat:a/b@c.d=e+f_g-h")
    assert not valid_topic("")
    assert not valid_topic("x" * 201)
    assert not valid_topic(3)
