"""
The display state (SPEC 2.3): packets, request validation, and the hub that
owns the state and tells the devices.
"""

from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.core.display import (
    NEVER_ON,
    OFF,
    Display,
    InvalidDisplay,
    LastOn,
    parse_display,
    validate_display,
)
from smartplug_backend.core.hub import DisplayEvent, Hub


class PacketTests(SynchronousTestCase):
    """
    Every state has exactly the packet of SPEC 2.3.
    """

    def test_off(self):
        """
        The default state is off, and its packet is C{[cc:0:?:?]}.
        """
        self.assertEqual(OFF.packet(), "[cc:0:?:?]")
        self.assertEqual(Display(), OFF)

    def test_weather(self):
        """
        Weather packets carry the code and the intensity.
        """
        self.assertEqual(Display(1, weather=3, intensity=9).packet(), "[cc:1:3:9]")

    def test_color(self):
        """
        Colour packets carry r,g,b separated by commas, then the pulse.
        """
        self.assertEqual(Display(2, color=(255, 65, 174), pulse=0).packet(), "[cc:2:255,65,174:0]")

    def test_as_json(self):
        """
        The JSON form shows only the fields of the mode, and the packet.
        """
        self.assertEqual(OFF.as_json(), {"mode": 0, "packet": "[cc:0:?:?]"})
        self.assertEqual(
            Display(1, weather=5, intensity=2).as_json(),
            {"mode": 1, "weather": 5, "intensity": 2, "packet": "[cc:1:5:2]"},
        )
        self.assertEqual(
            Display(2, color=(1, 2, 3), pulse=9).as_json(),
            {"mode": 2, "color": [1, 2, 3], "pulse": 9, "packet": "[cc:2:1,2,3:9]"},
        )


class ValidationTests(SynchronousTestCase):
    """
    POST /display bodies: accepted shapes, and errors that name the field.
    """

    def test_accepted(self):
        """
        Each mode of SPEC 2.3 and both commands are accepted, at the edges of
        their ranges; extra keys are ignored.
        """
        self.assertEqual(validate_display({"mode": 0, "extra": 1}), OFF)
        self.assertEqual(
            validate_display({"mode": 1, "weather": 1, "intensity": 0}),
            Display(1, weather=1, intensity=0),
        )
        self.assertEqual(
            validate_display({"mode": 1, "weather": 9, "intensity": 9}),
            Display(1, weather=9, intensity=9),
        )
        self.assertEqual(
            validate_display({"mode": 2, "color": [0, 255, 7], "pulse": 9}),
            Display(2, color=(0, 255, 7), pulse=9),
        )
        self.assertEqual(validate_display({"command": "reset"}), "reset")
        self.assertEqual(parse_display(b'{"command": "update"}'), "update")

    def test_refused(self):
        """
        Out-of-range, missing or mistyped values are refused with a message
        naming the field.
        """
        cases = [
            ([], "mode"),
            ({}, "missing field: mode"),
            ({"mode": 3}, "mode"),
            ({"mode": True}, "mode"),
            ({"mode": "0"}, "mode"),
            ({"mode": 1, "intensity": 1}, "missing field: weather"),
            ({"mode": 1, "weather": 0, "intensity": 1}, "weather"),
            ({"mode": 1, "weather": 10, "intensity": 1}, "weather"),
            ({"mode": 1, "weather": 1}, "missing field: intensity"),
            ({"mode": 1, "weather": 1, "intensity": 10}, "intensity"),
            ({"mode": 1, "weather": 1, "intensity": 1.5}, "intensity"),
            ({"mode": 2, "pulse": 0}, "missing field: color"),
            ({"mode": 2, "color": [256, 0, 0], "pulse": 0}, "color"),
            ({"mode": 2, "color": [-1, 0, 0], "pulse": 0}, "color"),
            ({"mode": 2, "color": [1, 2], "pulse": 0}, "color"),
            ({"mode": 2, "color": "red", "pulse": 0}, "color"),
            ({"mode": 2, "color": [1, 2, True], "pulse": 0}, "color"),
            ({"mode": 2, "color": [1, 2, 3]}, "missing field: pulse"),
            ({"mode": 2, "color": [1, 2, 3], "pulse": 10}, "pulse"),
            ({"command": "explode"}, "command"),
            ({"command": ["reset"]}, "command"),
            ({"command": "reset", "mode": 9}, "give either mode or command, not both"),
            ({"mode": 0, "command": "reset"}, "give either mode or command, not both"),
        ]
        for body, named in cases:
            with self.assertRaises(InvalidDisplay, msg=repr(body)) as caught:
                validate_display(body)
            self.assertIn(named, str(caught.exception), body)

    def test_not_json(self):
        """
        A body that is not JSON is refused, not a crash.
        """
        for body in [b"", b"{", b"\xff", b"[" * 100000]:
            self.assertRaises(InvalidDisplay, parse_display, body)


class HubDisplayTests(SynchronousTestCase):
    """
    The hub owns the display state and tells its display listeners.
    """

    def setUp(self):
        self.hub = Hub(now=lambda: 0)
        self.events = []
        self.hub.watch_display(self.events.append)

    def test_starts_off(self):
        """
        A new hub's display is off.
        """
        self.assertEqual(self.hub.display(), OFF)

    def test_set(self):
        """
        Setting the state stores it and tells every listener its packet; the
        Deferred it returns fires with the state.
        """
        red = Display(2, color=(255, 0, 0), pulse=0)
        self.assertEqual(self.successResultOf(self.hub.set_display(red, "1.2.3.4")), red)
        self.assertEqual(self.hub.display(), red)
        self.assertEqual(self.events, [DisplayEvent("[cc:2:255,0,0:0]", red, None, "1.2.3.4")])

    def test_command_keeps_state(self):
        """
        A one-off command sends its packet and leaves the state alone.
        """
        weather = Display(1, weather=4, intensity=4)
        self.hub.set_display(weather, "p")
        self.assertEqual(self.successResultOf(self.hub.display_command("reset", "p")), "[cc:r:?:?]")
        self.assertEqual(self.successResultOf(self.hub.display_command("update", "p")), "[cc:u:?:?]")
        self.assertEqual(self.hub.display(), weather)
        self.assertEqual(
            [(e.packet, e.command, e.state) for e in self.events[1:]],
            [("[cc:r:?:?]", "reset", weather), ("[cc:u:?:?]", "update", weather)],
        )

    def test_failing_listener(self):
        """
        A listener that raises is logged; later listeners still get the event,
        and the state is set.
        """
        def broken(event):
            raise RuntimeError("boom")

        later = []
        hub = Hub()
        hub.watch_display(broken)
        hub.watch_display(later.append)
        hub.set_display(OFF, "p")
        self.assertEqual(len(later), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_unsubscribe(self):
        """
        The function returned by watch_display stops the calls.
        """
        stop = self.hub.watch_display(self.events.append)
        stop()
        self.hub.set_display(OFF, "p")
        self.assertEqual(len(self.events), 1)


class LastOnTests(SynchronousTestCase):
    """
    Beside the display state the hub keeps the last state that was not off
    and the last colour (SPEC 12: what a bare ON restores, and the pulse a
    new colour keeps).
    """

    red = Display(2, color=(255, 0, 0), pulse=4)
    rain = Display(1, weather=5, intensity=9)

    def test_after(self):
        """
        A colour is both the last state on and the last colour; a weather
        is the last state on and keeps the colour; off changes nothing.
        """
        self.assertEqual(NEVER_ON.after(OFF), NEVER_ON)
        self.assertEqual(NEVER_ON.after(self.red), LastOn(self.red, self.red))
        self.assertEqual(NEVER_ON.after(self.red).after(self.rain), LastOn(self.rain, self.red))
        self.assertEqual(NEVER_ON.after(self.red).after(self.rain).after(OFF), LastOn(self.rain, self.red))

    def test_hub_keeps_it(self):
        """
        A new hub remembers nothing; each state set (here or on another
        node) counts, off and one-off commands change nothing.
        """
        hub = Hub()
        self.assertEqual(hub.last_on(), NEVER_ON)
        hub.set_display(self.red, "p")
        hub.apply_display(self.rain, "node b")
        hub.set_display(OFF, "p")
        hub.display_command("reset", "p")
        self.assertEqual((hub.display(), hub.last_on()), (OFF, LastOn(self.rain, self.red)))

    def test_restored(self):
        """
        restore() takes what the store loaded; the restored display counts
        too, as a store from before this was kept knows only that.
        """
        hub = Hub()
        hub.restore([], OFF, (), LastOn(self.rain, self.red))
        self.assertEqual(hub.last_on(), LastOn(self.rain, self.red))
        older = Hub()
        older.restore([], self.red)
        self.assertEqual(older.last_on(), LastOn(self.red, self.red))
        older.remember(LastOn(None, None))
        self.assertEqual(older.last_on(), LastOn(self.red, self.red))
