"""
Tests for smartplug_backend.integrations.homeassistant: object ids, topics,
discovery payloads checked against Home Assistant's documented MQTT schemas,
and the parsing of Home Assistant's commands.
"""

import json
import re

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.core.display import OFF, Display
from smartplug_backend.core.hub import Plug
from smartplug_backend.integrations import homeassistant as ha

TOPICS = ha.Topics("smartplug", "homeassistant")
# Home Assistant's rule for the object id level of a discovery topic.
OBJECT_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
AVAILABILITY = {
    "availability_topic": "smartplug/status",
    "payload_available": "online",
    "payload_not_available": "offline",
}


class ObjectIdTests(SynchronousTestCase):
    """
    L{ha.object_id} maps any plug id to HA's object id characters, one to one.
    """

    def test_safe_ids_unchanged(self):
        """
        Ids of letters, digits and C{-} (the firmware's C{0x...}) stay as they are.
        """
        for plug_id in ("0xb00bf0cc", "kitchen-lamp", "A1"):
            self.assertEqual(ha.object_id(plug_id), plug_id)

    def test_escapes(self):
        """
        C{_} is doubled; any other character becomes C{_} and the hex of
        each of its UTF-8 bytes.
        """
        self.assertEqual(ha.object_id("a_b"), "a__b")
        self.assertEqual(ha.object_id("a/b"), "a_2fb")
        self.assertEqual(ha.object_id("a b+#"), "a_20b_2b_23")
        self.assertEqual(ha.object_id("é"), "_c3_a9")

    def test_known_collisions_avoided(self):
        """
        Ids that a lossy mapping would merge stay apart: an escaped id and a
        safe id spelled like its escape.
        """
        ids = ["a/b", "a_2fb", "a_b", "a__b", "a.b", "a b", "a_", "a__"]
        self.assertEqual(len({ha.object_id(i) for i in ids}), len(ids))

    @given(st.text(min_size=1, max_size=128), st.text(min_size=1, max_size=128))
    def test_one_to_one(self, a, b):
        """
        Any two different ids give two different object ids, each made only
        of C{[a-zA-Z0-9_-]}.
        """
        for plug_id in (a, b):
            self.assertRegex(ha.object_id(plug_id), OBJECT_ID)
        if a != b:
            self.assertNotEqual(ha.object_id(a), ha.object_id(b))

    def test_same_everywhere(self):
        """
        The config topic, state topic and unique id of a plug all use the
        same object id.
        """
        plug_id = "hall/plug 1"
        oid = ha.object_id(plug_id)
        config = ha.plug_config(plug_id, TOPICS)
        self.assertEqual(TOPICS.plug_config(plug_id), f"homeassistant/binary_sensor/smartplug_{oid}/config")
        self.assertEqual(TOPICS.plug_state(plug_id), f"smartplug/plug/{oid}/state")
        self.assertEqual(config["unique_id"], f"smartplug_{oid}")
        self.assertEqual(config["state_topic"], TOPICS.plug_state(plug_id))


class DiscoveryPayloadTests(SynchronousTestCase):
    """
    The discovery payloads, field by field, against Home Assistant's MQTT
    binary_sensor, light (JSON schema) and button documentation.
    """

    def test_binary_sensor(self):
        """
        A plug is a C{binary_sensor} of device class C{plug}, its state
        C{ON}/C{OFF}, available with our status, in a device of its own
        named after the plug.
        """
        config = ha.plug_config("0xb00bf0cc", TOPICS)
        self.assertEqual(config, {
            "name": None,
            "unique_id": "smartplug_0xb00bf0cc",
            "device_class": "plug",
            "state_topic": "smartplug/plug/0xb00bf0cc/state",
            "payload_on": "ON",
            "payload_off": "OFF",
            **AVAILABILITY,
            "device": {
                "identifiers": ["smartplug_0xb00bf0cc"],
                "name": "Smart plug 0xb00bf0cc",
                "manufacturer": "CrapLab",
                "model": "SmartPlug",
            },
            "origin": {"name": "smartplug backend", "sw_version": ha._ORIGIN["sw_version"]},
        })
        self.assertEqual((ha.plug_state(1), ha.plug_state(0)), (b"ON", b"OFF"))

    def test_light(self):
        """
        The display is a C{light} with C{"schema": "json"}: command and
        state topics, RGB colour mode with brightness, the nine weathers as
        effects, and the display's device.
        """
        config = ha.light_config(TOPICS)
        self.assertEqual(config["schema"], "json")
        self.assertEqual(config["command_topic"], "smartplug/display/set")
        self.assertEqual(config["state_topic"], "smartplug/display/state")
        self.assertEqual(config["unique_id"], "smartplug_display")
        self.assertEqual(config["supported_color_modes"], ["rgb"])
        self.assertIs(config["brightness"], True)
        self.assertEqual(config["brightness_scale"], 255)
        self.assertIs(config["effect"], True)
        self.assertEqual(
            config["effect_list"],
            ["sunrise", "sunset", "clear", "cloudy", "rain", "storm", "snow", "mist", "wind"],
        )
        for key, value in AVAILABILITY.items():
            self.assertEqual(config[key], value)
        self.assertEqual(config["device"]["identifiers"], ["smartplug-lamps"])
        self.assertEqual(set(config), {
            "name", "unique_id", "schema", "command_topic", "state_topic", "supported_color_modes",
            "brightness", "brightness_scale", "effect", "effect_list", "availability_topic",
            "payload_available", "payload_not_available", "device", "origin",
        })

    @given(st.text(max_size=20))
    def test_no_plug_is_the_lamps(self, plug_id):
        """
        No plug's device, not even plug C{display}'s, has the lamps' device
        identifier: Home Assistant would merge the two devices.
        """
        lamps = ha.light_config(TOPICS)["device"]["identifiers"]
        for plug in (plug_id, "display", "lamps", "-lamps"):
            self.assertNotEqual(ha.plug_config(plug, TOPICS)["device"]["identifiers"], lamps, plug)

    def test_buttons(self):
        """
        Reset and update are C{button}s pressing C{reset}/C{update} on the
        display's command topic, on the display's device.
        """
        for command, name, device_class in (("reset", "Reset", "restart"), ("update", "Firmware update", "update")):
            config = ha.button_config(command, TOPICS)
            self.assertEqual(TOPICS.button_config(command), f"homeassistant/button/smartplug_display_{command}/config")
            self.assertEqual(config["unique_id"], f"smartplug_display_{command}")
            self.assertEqual(config["name"], name)
            self.assertEqual(config["command_topic"], "smartplug/display/command")
            self.assertEqual(config["payload_press"], command)
            self.assertEqual(config["device_class"], device_class)
            self.assertEqual(config["entity_category"], "config")
            self.assertEqual(config["device"], ha.light_config(TOPICS)["device"])
            for key, value in AVAILABILITY.items():
                self.assertEqual(config[key], value)

    def test_prefixes(self):
        """
        Both prefixes come from the settings.
        """
        topics = ha.Topics("home/sp", "ha")
        self.assertEqual(topics.plug_config("p"), "ha/binary_sensor/smartplug_p/config")
        self.assertEqual(topics.light_config, "ha/light/smartplug_display/config")
        self.assertEqual(topics.status, "home/sp/status")
        self.assertEqual(topics.ha_status, "ha/status")
        self.assertEqual(ha.light_config(topics)["command_topic"], "home/sp/display/set")

    def test_discovery_messages(self):
        """
        On (re)connect: our status, the configs, then the states, all retained,
        every payload but the status and plug states JSON.
        """
        plugs = [Plug("a", 1, 0.0), Plug("b/c", 0, 0.0)]
        messages = ha.discovery(plugs, Display(1, weather=5, intensity=9), TOPICS)
        self.assertEqual([m.topic for m in messages], [
            "smartplug/status",
            "homeassistant/light/smartplug_display/config",
            "homeassistant/button/smartplug_display_reset/config",
            "homeassistant/button/smartplug_display_update/config",
            "homeassistant/binary_sensor/smartplug_a/config",
            "homeassistant/binary_sensor/smartplug_b_2fc/config",
            "smartplug/display/state",
            "smartplug/plug/a/state",
            "smartplug/plug/b_2fc/state",
        ])
        self.assertTrue(all(m.retain for m in messages))
        self.assertEqual(messages[0].payload, b"online")
        self.assertEqual(json.loads(messages[5].payload)["device"]["name"], "Smart plug b/c")
        self.assertEqual(json.loads(messages[6].payload)["effect"], "rain")
        self.assertEqual([m.payload for m in messages[7:]], [b"ON", b"OFF"])

    def test_plug_messages(self):
        """
        A report publishes the plug's config only the first time, then its state.
        """
        plug = Plug("a", 0, 0.0)
        self.assertEqual([m.topic for m in ha.plug_messages(plug, True, TOPICS)],
                         [TOPICS.plug_config("a"), TOPICS.plug_state("a")])
        self.assertEqual(ha.plug_messages(plug, False, TOPICS), [ha.Message(TOPICS.plug_state("a"), b"OFF")])


class LightStateTests(SynchronousTestCase):
    """
    L{ha.light_state}: the display state in Home Assistant's JSON schema.
    """

    def test_off(self):
        """Mode 0 is C{{"state": "OFF"}}."""
        self.assertEqual(ha.light_state(OFF), {"state": "OFF"})

    def test_weather(self):
        """Mode 1 is ON with the weather as effect and the intensity as brightness."""
        self.assertEqual(ha.light_state(Display(1, weather=3, intensity=9)),
                         {"state": "ON", "brightness": 255, "effect": "clear"})
        # Home Assistant ignores a brightness of 0 in a state.
        self.assertEqual(ha.light_state(Display(1, weather=9, intensity=0))["brightness"], 1)
        self.assertEqual(ha.light_state(Display(1, weather=1, intensity=4))["effect"], "sunrise")

    def test_colour(self):
        """Mode 2 is ON with the colour, full brightness and no effect."""
        self.assertEqual(ha.light_state(Display(2, color=(255, 65, 174), pulse=3)), {
            "state": "ON", "color_mode": "rgb", "brightness": 255,
            "color": {"r": 255, "g": 65, "b": 174}, "effect": None,
        })

    def test_brightness_round_trip(self):
        """Every intensity 0-9 survives brightness and back."""
        for intensity in range(10):
            self.assertEqual(ha.brightness_to_intensity(ha.intensity_to_brightness(intensity)), intensity)
        self.assertEqual((ha.brightness_to_intensity(0), ha.brightness_to_intensity(1),
                          ha.brightness_to_intensity(255)), (0, 0, 9))
        self.assertEqual([ha.intensity_to_brightness(i) for i in (0, 1, 9)], [1, 28, 255])


WEATHER = Display(1, weather=5, intensity=3)
COLOUR = Display(2, color=(1, 2, 3), pulse=7)


def command(value) -> bytes:
    return json.dumps(value).encode()


class LightCommandTests(SynchronousTestCase):
    """
    L{ha.parse_light_command}: Home Assistant's JSON commands as display states.
    """

    def parse(self, value, current=OFF, last_on=None, last_colour=None):
        return ha.parse_light_command(command(value), current, last_on, last_colour)

    def test_off(self):
        """C{OFF} is mode 0, whatever else is in the command."""
        self.assertEqual(self.parse({"state": "OFF", "brightness": 10}, COLOUR), OFF)

    def test_colour(self):
        """A colour sets mode 2 with it, keeping the last colour's pulse, through a weather too."""
        self.assertEqual(self.parse({"state": "ON", "color": {"r": 255, "g": 65, "b": 174}}, COLOUR),
                         Display(2, color=(255, 65, 174), pulse=7))
        self.assertEqual(self.parse({"state": "ON", "color": {"r": 0, "g": 0, "b": 0}}, WEATHER).pulse, 0)
        self.assertEqual(self.parse({"state": "ON", "color": {"r": 9, "g": 9, "b": 9}}, OFF, COLOUR).pulse, 7)
        self.assertEqual(self.parse({"state": "ON", "color": {"r": 0, "g": 0, "b": 0}}, WEATHER, WEATHER, COLOUR),
                         Display(2, color=(0, 0, 0), pulse=7))
        self.assertEqual(self.parse({"state": "ON", "color": {"r": 0, "g": 0, "b": 0}}, OFF, WEATHER, COLOUR).pulse, 7)

    def test_effect(self):
        """An effect sets mode 1 with that weather; brightness, else the last intensity, else 9."""
        self.assertEqual(self.parse({"state": "ON", "effect": "snow"}), Display(1, weather=7, intensity=9))
        self.assertEqual(self.parse({"state": "ON", "effect": "wind"}, WEATHER), Display(1, weather=9, intensity=3))
        self.assertEqual(self.parse({"state": "ON", "effect": "sunrise", "brightness": 128}, COLOUR),
                         Display(1, weather=1, intensity=5))

    def test_brightness_only(self):
        """Brightness alone changes a weather's intensity and leaves a colour as it is."""
        self.assertEqual(self.parse({"state": "ON", "brightness": 0}, WEATHER), Display(1, weather=5, intensity=0))
        self.assertEqual(self.parse({"state": "ON", "brightness": 0}, COLOUR), COLOUR)
        self.assertEqual(self.parse({"state": "ON", "brightness": 255}, OFF, WEATHER),
                         Display(1, weather=5, intensity=9))

    def test_bare_on(self):
        """A bare ON keeps the current state, or restores the last one that was on, or white."""
        self.assertEqual(self.parse({"state": "ON"}, COLOUR, WEATHER), COLOUR)
        self.assertEqual(self.parse({"state": "ON"}, OFF, WEATHER), WEATHER)
        self.assertEqual(self.parse({"state": "ON"}), ha.DEFAULT_ON)
        self.assertEqual(ha.DEFAULT_ON, Display(2, color=(255, 255, 255), pulse=0))

    def test_plain_payloads(self):
        """
        The payloads C{ON} and C{OFF} alone, as the default schema sends
        them, are read as C{{"state": "ON"}} and C{{"state": "OFF"}}.
        """
        for payload in (b"ON", b"ON\n", b" ON "):
            self.assertEqual(ha.parse_light_command(payload, OFF, WEATHER), WEATHER, payload)
        self.assertEqual(ha.parse_light_command(b"OFF", COLOUR, COLOUR), OFF)
        for payload in (b"on", b"ONN", b"Off"):
            self.assertRaises(ha.InvalidCommand, ha.parse_light_command, payload, OFF, None)

    def test_ignored_keys(self):
        """HA's transition and flash are accepted and ignored."""
        self.assertEqual(self.parse({"state": "ON", "transition": 2, "flash": "short"}, COLOUR), COLOUR)

    def test_invalid(self):
        """Anything else is an InvalidCommand naming what was wrong."""
        cases = [
            (b"On", "not JSON"),
            (b"\xff", "not JSON"),
            (b"NaN", "not JSON"),
            (command([1]), "JSON object"),
            (command({"brightness": 3}), "state"),
            (command({"state": "on"}), "state"),
            (command({"state": "ON", "effect": "fog"}), "effect must be one of sunrise"),
            (command({"state": "ON", "effect": None}), "effect"),
            (command({"state": "ON", "brightness": 256}), "brightness"),
            (command({"state": "ON", "brightness": True}), "brightness"),
            (command({"state": "ON", "color": [1, 2, 3]}), "color must be an object"),
            (command({"state": "ON", "color": {"r": 1, "g": 2}}), "color.b"),
            (command({"state": "ON", "color": {"r": 1, "g": 2, "b": 2.5}}), "color.b"),
        ]
        for payload, expected in cases:
            error = self.assertRaises(ha.InvalidCommand, ha.parse_light_command, payload, OFF, None)
            self.assertIn(expected, str(error), payload)


class OtherParsingTests(SynchronousTestCase):
    """
    Button presses and pub/sub payloads.
    """

    def test_button(self):
        """C{reset} and C{update} are the two commands; anything else is refused."""
        self.assertEqual(ha.parse_button(b"reset"), "reset")
        self.assertEqual(ha.parse_button(b"update\n"), "update")
        for payload in (b"PRESS", b"", b"\xff"):
            self.assertRaises(ha.InvalidCommand, ha.parse_button, payload)

    def test_event_data(self):
        """A JSON payload is its value; anything else is its text."""
        self.assertEqual(ha.parse_event_data(b'{"t": 21.5}'), {"t": 21.5})
        self.assertEqual(ha.parse_event_data(b"21.5"), 21.5)
        self.assertEqual(ha.parse_event_data(b"hello"), "hello")
        self.assertEqual(ha.parse_event_data(b"NaN"), "NaN")

    def test_event_payload(self):
        """A string goes out as its text; anything else as compact JSON."""
        self.assertEqual(ha.event_payload("hello"), b"hello")
        self.assertEqual(ha.event_payload({"t": 21.5}), b'{"t":21.5}')
        self.assertEqual(ha.event_payload(None), b"null")

    def test_published_event(self):
        """C{<prefix>/publish/E} gives E (which may hold C{/}); other topics give None."""
        self.assertEqual(TOPICS.published_event("smartplug/publish/temp"), "temp")
        self.assertEqual(TOPICS.published_event("smartplug/publish/a/b"), "a/b")
        self.assertIsNone(TOPICS.published_event("smartplug/publish/"))
        self.assertIsNone(TOPICS.published_event("smartplug/events/temp"))
        self.assertEqual(TOPICS.event("temp"), "smartplug/events/temp")
