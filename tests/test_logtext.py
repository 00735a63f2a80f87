"""
The log file's text written the cheap way (L{smartplug_backend.server.logtext}):
byte for byte what twistd's own text observer writes, for any event.
"""

import io
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.logger import Logger, LogLevel, LogPublisher, textFileLogObserver
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.server.logtext import ClassicText, Escaped, FastLogText

KEYS = ["plug_id", "value", "peer", "a", "missing"]
_keys = st.sampled_from(KEYS)
# Fields of every kind Twisted's formatter reads, the ones ClassicText
# leaves to it included (attributes, indexes, calls, positional, nested).
_fields = st.one_of(
    _keys.map(lambda k: "{%s}" % k),
    st.tuples(_keys, st.sampled_from("rsa")).map(lambda t: "{%s!%s}" % t),
    st.tuples(_keys, st.sampled_from([">8", "<3", "^5", "x", ".2f", "d", "=", "!"])).map(lambda t: "{%s:%s}" % t),
    st.sampled_from(["{}", "{0}", "{a.real}", "{a[0]}", "{call()}", "{a:{b}}", "{", "}", "{a!z}", "{plug id}"]),
)
_literals = st.text(st.characters(codec="utf-8"), max_size=12).map(lambda s: s.replace("{", "{{").replace("}", "}}"))
_formats = st.lists(st.one_of(_literals, _fields), max_size=6).map("".join)
_values = st.one_of(
    st.text(max_size=8), st.integers(), st.floats(allow_nan=False), st.none(), st.binary(max_size=4),
    st.lists(st.integers(), max_size=2), st.booleans(),
)
_times = st.one_of(
    st.none(),
    st.floats(min_value=0, max_value=4e9),
    st.integers(min_value=0, max_value=2**32).map(lambda s: s - 5e-7),
    st.integers(min_value=0, max_value=2**32).map(lambda s: s + 0.9999996),
    st.integers(min_value=0, max_value=2**32),
)


@st.composite
def events(draw):
    event = {key: draw(_values) for key in draw(st.sets(st.sampled_from(KEYS[:-1])))}
    event["call"] = lambda: "called"
    event["log_format"] = draw(st.one_of(_formats, st.none(), st.just(b"bytes {a}")))
    event["log_time"] = draw(_times)
    event["log_level"] = draw(st.sampled_from(list(LogLevel.iterconstants()) + [None]))
    if draw(st.booleans()):
        event["log_namespace"] = draw(st.sampled_from(["smartplug_backend.core.hub.Hub", "x\ny"]))
    if draw(st.booleans()):
        event["log_system"] = draw(st.one_of(st.text(max_size=5), st.integers()))
    if draw(st.booleans()):
        event["log_failure"] = Failure(ValueError("boom"))
    return event


def twistd_formatter():
    """
    The formatter of the observer twistd makes for its log file.
    """
    return textFileLogObserver(io.StringIO()).formatEvent


class CountingFallback:
    def __init__(self, formatter) -> None:
        self.formatter = formatter
        self.calls = 0

    def __call__(self, event):
        self.calls += 1
        return self.formatter(event)


class ClassicTextTests(SynchronousTestCase):
    @settings(max_examples=1500, deadline=None)
    @given(events())
    def test_same_text_as_twisted(self, event):
        """
        Any event, formattable or not, gives the text twistd's observer
        writes (or C{None} where it writes nothing).
        """
        twisted = twistd_formatter()
        self.assertEqual(ClassicText(twisted)(event), twisted(event))

    def test_same_text_over_time(self):
        """
        One formatter, many events a fraction of a second apart across
        second boundaries: each line's timestamp is its own.
        """
        twisted = twistd_formatter()
        fast = ClassicText(twisted)
        for step in range(4000):
            event = {"log_format": "plug {plug_id}", "plug_id": step, "log_level": LogLevel.info,
                     "log_namespace": "n", "log_time": 1764320400 + step * 0.0137}
            self.assertEqual(fast(event), twisted(event))

    def test_rounded_up_to_the_next_second(self):
        """
        A time within half a microsecond of the next second is written as
        the next second, as C{fromtimestamp} rounds it, though the second
        before is the one cached.
        """
        twisted = twistd_formatter()
        fast = ClassicText(twisted)
        for second in (1764320400, 1000000000, 86399):
            for fraction in (0.25, 0.9999996, 0.9999994, 0.99999999):
                event = {"log_format": "x", "log_namespace": "n", "log_time": second + fraction}
                self.assertEqual(fast(event), twisted(event), (second, fraction))

    def test_ordinary_events_formatted_without_twisted(self):
        """
        A report's line and other plain events do not reach the fallback;
        a traceback, an attribute field and a missing key do.
        """
        fallback = CountingFallback(twistd_formatter())
        fast = ClassicText(fallback)
        line = {"log_format": "plug {plug_id} -> {value} from {peer}", "plug_id": "1", "value": 0,
                "peer": "10.0.0.9", "log_level": LogLevel.info, "log_namespace": "smartplug_backend.core.hub.Hub",
                "log_time": 1764320471.5}
        self.assertEqual(
            fast(line), "%s [smartplug_backend.core.hub.Hub#info] plug 1 -> 0 from 10.0.0.9\n"
            % fallback.formatter({"log_format": "x", "log_time": 1764320471.5}).split(" ")[0])
        self.assertEqual(fallback.calls, 0)
        for other in ({"log_failure": Failure(ValueError("x"))}, {"log_format": "{peer.real}"},
                      {"log_format": "{nothing}"}):
            fast(dict(line, **other))
        self.assertEqual(fallback.calls, 3)

    def test_value_that_cannot_format(self):
        """
        A value whose formatting raises anything at all, a BaseException
        included, is written as Twisted writes an unformattable event.
        """
        class Refuses:
            def __format__(self, spec):
                raise GeneratorExit("no")

        twisted = twistd_formatter()
        event = {"log_format": "x {v}", "v": Refuses(), "log_time": 1.5, "log_namespace": "n"}
        self.assertIn("Unable to format event", ClassicText(twisted)(event))

    def test_objects_formatted_as_often_as_by_twisted(self):
        """
        An event with a value, namespace or level of another type than a
        plain string, number, None or a LogLevel goes to Twisted's formatter
        before anything of it is formatted here: its C{__format__},
        C{__repr__} or C{name} runs as often as under Twisted alone, even
        when a later field or the time cannot be formatted, and the line is
        Twisted's.
        """
        class Counted:
            calls = 0

            def __format__(self, spec):
                Counted.calls += 1
                return "formatted"

            def __repr__(self):
                Counted.calls += 1
                return "Counted()"

        class CountedLevel:
            @property
            def name(self):
                Counted.calls += 1
                return "level"

        twisted = twistd_formatter()
        plain = {"n": 7, "bad": "text", "log_time": 1.5, "log_namespace": "n"}
        cases = [dict(plain, log_format=log_format, v=Counted())
                 for log_format in ("{n} then {v}", "{v!r} then {bad:d}", "{v:>3} then {missing}")]
        # The line's system part, and a time that is not a float after it.
        for log_time in (1.5, 2, None):
            cases.append(dict(plain, log_format="{n}", log_namespace=Counted(), log_time=log_time))
            cases.append(dict(plain, log_format="{n}", log_level=CountedLevel(), log_time=log_time))
        for event in cases:
            Counted.calls = 0
            expected = twisted(event)
            by_twisted = Counted.calls
            Counted.calls = 0
            self.assertEqual(ClassicText(twisted)(event), expected)
            self.assertEqual(Counted.calls, by_twisted, event)

    def test_formats_kept_are_bounded(self):
        """
        Formats built at run time do not grow the formatter without end.
        """
        fast = ClassicText(twistd_formatter())
        for n in range(5000):
            fast({"log_format": f"event {n}", "log_time": 1.5})
        self.assertLessEqual(len(fast._formats), 1000)


class FastLogTextTests(SynchronousTestCase):
    def setUp(self):
        self.out = io.StringIO()
        self.observer = textFileLogObserver(self.out)
        self.publisher = LogPublisher(self.observer)
        self.log = Logger(namespace="smartplug_backend.core.hub.Hub", observer=self.publisher)

    def test_fitted_while_running(self):
        """
        While the service runs, twistd's observer formats with
        L{ClassicText}, and writes what it wrote before; stopped, it has its
        own formatter back.
        """
        own = self.observer.formatEvent
        service = FastLogText(self.publisher)
        service.startService()
        self.assertIsInstance(self.observer.formatEvent, Escaped)
        self.assertIsInstance(self.observer.formatEvent.formatter, ClassicText)
        self.log.info("plug {plug_id} -> {value} from {peer}", plug_id="7", value=1, peer="127.0.0.1")
        self.assertRegex(
            self.out.getvalue(),
            r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[smartplug_backend\.core\.hub\.Hub#info\] "
            r"plug 7 -> 1 from 127\.0\.0\.1\n$",
        )
        service.stopService()
        self.assertIs(self.observer.formatEvent, own)

    def test_other_layouts_left_alone(self):
        """
        An observer whose text differs (another time format, another
        layout) keeps its own formatter, only escaped; stopped, it has it
        back as it was.
        """
        hours = textFileLogObserver(io.StringIO(), timeFormat="%H")
        plain = textFileLogObserver(io.StringIO())
        plain.formatEvent = lambda event: "always \x1bthis\n"
        own = (hours.formatEvent, plain.formatEvent)
        service = FastLogText(LogPublisher(hours, plain))
        service.startService()
        self.assertEqual((hours.formatEvent.formatter, plain.formatEvent.formatter), own)
        self.assertEqual(plain.formatEvent({}), "always \\x1bthis\n")
        service.stopService()
        self.assertEqual((hours.formatEvent, plain.formatEvent), own)

    def test_control_characters_escaped(self):
        """
        A control character from the network (an escape sequence, a
        carriage return, NUL, DEL, a C1 control) is written as C{\\xNN};
        tabs, line breaks (twistd indents later lines) and other text are as
        they were.  Both the fast path and Twisted's (a traceback) escape.
        """
        service = FastLogText(self.publisher)
        service.startService()
        self.addCleanup(service.stopService)
        self.log.info("plug {plug_id} -> {value} from {peer}", plug_id="a\x00b\x1b[2J\rc\x7f\x9b\tМихаил\nx\u2028y",
                      value=1, peer="127.0.0.1")
        try:
            raise ValueError("bad \x1b]0;title\x07")
        except ValueError:
            self.log.failure("report {plug_id} failed", plug_id="\x1b[31m")
        text = self.out.getvalue()
        self.assertIn("plug a\\x00b\\x1b[2J\\x0dc\\x7f\\x9b\tМихаил\n\tx\\u2028y -> 1 from 127.0.0.1\n", text)
        self.assertIn("report \\x1b[31m failed\n", text)
        self.assertIn("ValueError: bad \\x1b]0;title\\x07\n", text)
        self.assertIsNone(re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]", text))

    @given(st.text())
    def test_escaped_is_the_text_without_controls(self, text):
        """
        Escaping keeps every other character, writes each control but tab
        and line feed as its code, and leaves no control but those two.
        (Taking the escapes out of both sides is no test: a text may hold a
        backslash and an x itself, as in C{"\\\\x\\x01ab"}.)
        """
        escaped = Escaped(lambda event: text)({})
        controls = "[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]"
        self.assertIsNone(re.search(controls, escaped))
        expected = []
        for c in text:
            if c in "\t\n" or not (ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f or c in "\u2028\u2029"):
                expected.append(c)
            else:
                expected.append("\\%s%0*x" % ("x" if ord(c) < 0x100 else "u", 2 if ord(c) < 0x100 else 4, ord(c)))
        self.assertEqual(escaped, "".join(expected))

    def test_escaped_text_that_looks_escaped(self):
        """
        A backslash and an x in the text itself stay as they are beside an
        escaped control (the example the old form of the property above got
        wrong).
        """
        self.assertEqual(Escaped(lambda event: "\\x\x01ab")({}), "\\x\\x01ab")
