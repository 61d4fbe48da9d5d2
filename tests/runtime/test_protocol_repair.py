"""Runner frames: a script's strings that are not valid Unicode are repaired, not fatal."""

from __future__ import annotations

import json
import struct

from flowlink.runtime.protocol import FrameDecoder, encode


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def test_raw_surrogates_from_the_runner_encoder_are_repaired() -> None:
    # The runner encodes with surrogatepass: a lone surrogate arrives as raw bytes.
    message = {"op": "log", "line": "a\ud800b", "data": {"k\udc00": ["\udfff", 1.5]}}
    decoded = FrameDecoder().feed(encode(message))
    assert decoded == [{"op": "log", "line": "a\ufffdb", "data": {"k\ufffd": ["\ufffd", 1.5]}}]
    json.dumps(decoded).encode("utf-8")  # fit for the store


def test_escaped_surrogates_and_non_finite_numbers_are_repaired() -> None:
    body = b'{"op":"done","outputs":{"s":"\\ud800","n":NaN,"i":-Infinity,"e":1e999,"z":"\\u0000"}}'
    decoded = FrameDecoder().feed(frame(body))
    outputs = {"s": "\ufffd", "n": None, "i": None, "e": None, "z": "\ufffd"}
    assert decoded == [{"op": "done", "outputs": outputs}]


def test_clean_frames_are_left_alone() -> None:
    message = {"op": "log", "line": "caf\u00e9 \U0001f600", "n": 1e10}
    decoder = FrameDecoder()
    data = encode(message)
    assert decoder.feed(data[:5]) == []
    assert decoder.feed(data[5:]) == [message]
