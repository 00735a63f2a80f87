"""
Hypothesis set-up for the property tests: one profile (stable in CI: no
deadline, derandomized, no example database) and the strategies for
malformed input.
"""

import json

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from twisted.logger import LogLevel, globalLogPublisher

settings.register_profile(
    "smartplug",
    deadline=None,
    derandomize=True,
    database=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("smartplug")

FIRMWARE_REQUEST = (
    b"POST /data HTTP/1.1\nHost: craplab.local\nConnection: close\n"
    b"Content-Type: application/json\nContent-Length: 32\n\n"
    b'{"id": "0xb00bf0cc", "value": 1}'
)

# Scalars as Python's json writes them, NaN and Infinity included, numbers
# huge and tiny, and strings of any code point but surrogates (lone ones
# come from the mutated bytes).
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=12,
)


def _dumps(value) -> bytes:
    return json.dumps(value).encode("utf-8")


def mutated(seed: bytes) -> st.SearchStrategy:
    """
    C{seed} with bytes replaced, inserted, deleted or cut off: truncated
    requests, broken UTF-8, stray quotes and braces.
    """

    def apply(edits):
        data = bytearray(seed)
        for kind, where, byte in edits:
            where = where % (len(data) + 1)
            if kind == "replace" and where < len(data):
                data[where] = byte
            elif kind == "insert":
                data.insert(where, byte)
            elif kind == "delete" and where < len(data):
                del data[where]
            elif kind == "cut":
                del data[where:]
        return bytes(data)

    edit = st.tuples(
        st.sampled_from(["replace", "insert", "delete", "cut"]),
        st.integers(min_value=0, max_value=10**6),
        st.sampled_from(list(b'\x00\xff\xed\xa0\x80"{}[]:,\\\n\r 01eE-.')) | st.integers(0, 255),
    )
    return st.lists(edit, min_size=1, max_size=4).map(apply)


# Plug reports: valid ones, near misses (wrong types, extra keys, long ids),
# anything JSON, and mutated bytes.
report_like = st.fixed_dictionaries(
    {"id": st.one_of(st.text(max_size=140), json_values), "value": st.one_of(st.sampled_from([0, 1, True, False]), json_values)},
    optional={"extra": json_values},
)
report_bodies = st.one_of(
    report_like.map(_dumps),
    json_values.map(_dumps),
    mutated(b'{"id": "0xb00bf0cc", "value": 1}'),
    mutated(b'{"id": "\\ud83d\\ude00", "value": 0}'),
    st.binary(max_size=200),
    st.sampled_from([b"[" * 5000, b'{"a":' * 3000, b"1" * 5000, b"1e999", b"-0", b"NaN", b"\xef\xbb\xbf{}"]),
)

# PiCloud client messages: the known actions with events of any type, and
# publications with any data.
subscriber_messages = st.one_of(
    st.fixed_dictionaries(
        {"action": st.sampled_from(["subscribe", "unsubscribe", "unsubscribe:all", "publish", "", "SUBSCRIBE"])},
        optional={"event": st.one_of(st.sampled_from(["e", "f", ""]), json_values)},
    ).map(_dumps),
    report_bodies,
)
publisher_messages = st.one_of(
    st.fixed_dictionaries(
        {"event": st.one_of(st.sampled_from(["e", "f", ""]), json_values)},
        optional={"data": json_values, "action": st.just("publish")},
    ).map(_dumps),
    mutated(b'{"event": "e", "data": "21.5"}'),
    report_bodies,
)


class Problems:
    """
    Log events that mean something went wrong: failures (tracebacks) and
    anything at error level or above.
    """

    def __init__(self, testcase) -> None:
        self.events: list = []
        globalLogPublisher.addObserver(self._observe)
        testcase.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event) -> None:
        level = event.get("log_level")
        if event.get("log_failure") is not None or event.get("isError") or level in (LogLevel.error, LogLevel.critical):
            self.events.append(event)

    def take(self) -> list:
        """
        The problems logged since the last call.
        """
        events, self.events = self.events, []
        return events


def is_utf8(data: bytes) -> bool:
    """
    Whether C{data} is UTF-8: the tests' own answer, to check the server's.
    """
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
