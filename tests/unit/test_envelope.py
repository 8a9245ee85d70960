from __future__ import annotations

import orjson
import pytest
from websockets.frames import Frame, Opcode

from agentcast.core.envelope import Publication, format_timestamp, frame_text, payload_of_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_frame_text_matches_websockets(size: int) -> None:
    payload = b"x" * size
    expected = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
    assert frame_text(payload) == expected
    assert payload_of_frame(frame_text(payload)) == payload


def test_publication_envelope_is_valid_json_and_cached() -> None:
    pub = Publication(
        'we"ird', 7, "node_status", b'{"a":[1,2]}', "2026-01-01T00:00:00.000000Z", 0.0
    )
    assert orjson.loads(pub.payload) == {
        "type": "node_status",
        "topic": 'we"ird',
        "seq": 7,
        "timestamp": "2026-01-01T00:00:00.000000Z",
        "data": {"a": [1, 2]},
    }
    assert pub.frame == pub.frame
    assert payload_of_frame(pub.frame) == pub.payload
    assert pub.to_dict()["seq"] == 7
    assert "seq=7" in repr(pub)


def test_format_timestamp_is_iso_utc_with_z() -> None:
    assert format_timestamp(0.5) == "1970-01-01T00:00:00.500000Z"


def test_encoded_data_is_right_sized() -> None:
    import tracemalloc

    from agentcast.core.envelope import encode_json

    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        kept = [encode_json({"n": i}) for i in range(2000)]
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    per_object = sum(d.size_diff for d in after.compare_to(before, "lineno")) / len(kept)
    assert per_object < 256, per_object
