"""
Home Assistant's side of the MQTT bridge (SPEC 12), as pure functions: topic
names, object ids, discovery payloads, state payloads and the parsing of
commands.  No MQTT client, no reactor, no hub: L{mqtt} does the talking.

Payloads follow Home Assistant's MQTT discovery schemas: C{binary_sensor}
(device class C{plug}), C{light} with C{"schema": "json"}, and C{button}.
"""

import dataclasses
import json
from typing import Any, Callable, Iterator, Optional, Union

from .. import __version__
from ..core import strictjson
from ..core.display import COMMANDS, OFF, Display
from ..core.hub import Plug

# SPEC 2.3's weather codes 1-9, as the light's effects.
WEATHERS = ("sunrise", "sunset", "clear", "cloudy", "rain", "storm", "snow", "mist", "wind")
EFFECT_CODES = {name: code for code, name in enumerate(WEATHERS, start=1)}

ONLINE = "online"
OFFLINE = "offline"

# What a bare ON gives when the display was never on (as far as the state
# store knows: STATE_DB = None forgets at a stop).
DEFAULT_ON = Display(2, color=(255, 255, 255), pulse=0)

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_ORIGIN = {"name": "smartplug backend", "sw_version": __version__}


class InvalidCommand(ValueError):
    """
    A command from Home Assistant that cannot be applied; C{str(error)} says
    why, for the log.
    """


def object_id(plug_id: str) -> str:
    """
    The plug id as a topic level and object id: only C{[a-zA-Z0-9_-]}.

    Letters, digits and C{-} are kept; C{_} becomes C{__}; every other
    character becomes C{_} and the two hex digits of each of its UTF-8
    bytes (C{"a/b"} -> C{"a_2fb"}).  C{_} is only ever the escape character,
    so two different ids never give the same object id, and an id made of
    letters, digits and C{-} (such as C{0xb00bf0cc}) is unchanged.
    """
    out = []
    for char in plug_id:
        if char in _SAFE:
            out.append(char)
        elif char == "_":
            out.append("__")
        else:
            out.extend(f"_{byte:02x}" for byte in char.encode("utf-8"))
    return "".join(out)


@dataclasses.dataclass(frozen=True)
class Topics:
    """
    Every topic of the bridge, from C{MQTT_PREFIX} and C{HA_DISCOVERY_PREFIX}.
    """

    prefix: str = "smartplug"
    discovery: str = "homeassistant"

    @property
    def status(self) -> str:
        """Our availability: C{online}, or C{offline} (also the last will)."""
        return f"{self.prefix}/status"

    @property
    def ha_status(self) -> str:
        """Home Assistant's birth and will messages."""
        return f"{self.discovery}/status"

    def plug_config(self, plug_id: str) -> str:
        return f"{self.discovery}/binary_sensor/smartplug_{object_id(plug_id)}/config"

    def plug_state(self, plug_id: str) -> str:
        return f"{self.prefix}/plug/{object_id(plug_id)}/state"

    @property
    def light_config(self) -> str:
        return f"{self.discovery}/light/smartplug_display/config"

    @property
    def display_set(self) -> str:
        """Home Assistant's light commands (JSON schema)."""
        return f"{self.prefix}/display/set"

    @property
    def display_state(self) -> str:
        return f"{self.prefix}/display/state"

    @property
    def display_command(self) -> str:
        """The buttons' presses: C{reset} or C{update}."""
        return f"{self.prefix}/display/command"

    def button_config(self, command: str) -> str:
        return f"{self.discovery}/button/smartplug_display_{command}/config"

    def event(self, event: str) -> str:
        """Where each pub/sub publication of C{event} goes (C{MQTT_EVENTS})."""
        return f"{self.prefix}/events/{event}"

    @property
    def publish_filter(self) -> str:
        """What we subscribe to for publications from MQTT (C{MQTT_EVENTS})."""
        return f"{self.prefix}/publish/#"

    def published_event(self, topic: str) -> Optional[str]:
        """
        The pub/sub event of a message on C{<prefix>/publish/E}, or C{None}
        for any other topic or an empty E.
        """
        head = f"{self.prefix}/publish/"
        if topic.startswith(head) and len(topic) > len(head):
            return topic[len(head):]
        return None


@dataclasses.dataclass(frozen=True)
class Message:
    """
    One MQTT publication: topic, payload, retained or not.
    """

    topic: str
    payload: bytes
    retain: bool = True


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _available(topics: Topics) -> dict:
    return {
        "availability_topic": topics.status,
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
    }


# The lamps' device.  Every plug's device is "smartplug_<oid>"; this one
# has "-" where those have "_", so no plug id (not even "display") can
# give the same identifier and merge a plug into the lamps in Home
# Assistant's device registry.
LAMPS_DEVICE = "smartplug-lamps"


def _display_device() -> dict:
    return {
        "identifiers": [LAMPS_DEVICE],
        "name": "Smart lamps",
        "manufacturer": "butt-butt",
        "model": "lamp display",
    }


def plug_config(plug_id: str, topics: Topics) -> dict:
    """
    The discovery payload of a plug's C{binary_sensor}: a device of its own,
    named after the plug, whose one entity is the plugged-in state.
    """
    oid = object_id(plug_id)
    return {
        # None: the entity takes the device's name (Home Assistant's rule
        # for a device's main feature).
        "name": None,
        "unique_id": f"smartplug_{oid}",
        "device_class": "plug",
        "state_topic": topics.plug_state(plug_id),
        "payload_on": "ON",
        "payload_off": "OFF",
        **_available(topics),
        "device": {
            "identifiers": [f"smartplug_{oid}"],
            "name": f"Smart plug {plug_id}",
            "manufacturer": "CrapLab",
            "model": "SmartPlug",
        },
        "origin": _ORIGIN,
    }


def plug_state(value: int) -> bytes:
    """C{ON} when plugged in (1), C{OFF} when not (0)."""
    return b"ON" if value else b"OFF"


def light_config(topics: Topics) -> dict:
    """
    The discovery payload of the lamps' display as a JSON-schema C{light}:
    RGB colour, brightness (the weather's intensity), the weathers as effects.
    """
    return {
        "name": None,
        "unique_id": "smartplug_display",
        "schema": "json",
        "command_topic": topics.display_set,
        "state_topic": topics.display_state,
        "supported_color_modes": ["rgb"],
        "brightness": True,
        "brightness_scale": 255,
        "effect": True,
        "effect_list": list(WEATHERS),
        **_available(topics),
        "device": _display_device(),
        "origin": _ORIGIN,
    }


def button_config(command: str, topics: Topics) -> dict:
    """
    The discovery payload of the C{reset} or C{update} C{button}.
    """
    return {
        "name": {"reset": "Reset", "update": "Firmware update"}[command],
        "unique_id": f"smartplug_display_{command}",
        "command_topic": topics.display_command,
        "payload_press": command,
        "device_class": "restart" if command == "reset" else "update",
        "entity_category": "config",
        **_available(topics),
        "device": _display_device(),
        "origin": _ORIGIN,
    }


def intensity_to_brightness(intensity: int) -> int:
    """
    Intensity 0-9 as brightness 1-255: Home Assistant ignores a brightness
    of 0 in a state (and never sends one), so intensity 0 shows as 1.
    """
    return max(1, round(intensity * 255 / 9))


def brightness_to_intensity(brightness: int) -> int:
    """Brightness 0-255 as intensity 0-9 (nearest)."""
    return round(brightness * 9 / 255)


def light_state(display: Display) -> dict:
    """
    The JSON-schema state of the light for a display state.
    """
    if display.mode == 1:
        # No colour_mode: with "rgb" Home Assistant would want a colour, and
        # a weather has none; without it, the light keeps its last colour.
        return {
            "state": "ON",
            "brightness": intensity_to_brightness(display.intensity),
            "effect": WEATHERS[display.weather - 1],
        }
    if display.mode == 2:
        r, g, b = display.color
        return {
            "state": "ON",
            "color_mode": "rgb",
            "brightness": 255,
            "color": {"r": r, "g": g, "b": b},
            "effect": None,
        }
    return {"state": "OFF"}


def discovery(plugs: list[Plug], display: Optional[Display], topics: Topics) -> list[Message]:
    """
    Everything published (retained) on each connect and on Home Assistant's
    C{online}: our status, every config, then every state (the display's
    only when known: C{None} while a node has not loaded it).
    """
    by_id = {p.id: p for p in plugs}
    return list(discovery_now(list(by_id), by_id.get, lambda: display, topics))


def discovery_now(plug_ids: list[str], plug: Callable[[str], Optional[Plug]],
                  display: Callable[[], Optional[Display]], topics: Topics) -> Iterator[Message]:
    """
    L{discovery}'s messages one by one, each state read when its message is
    made (C{plug(id)}, C{display()}), so that messages made later, after
    the broker has taken the first ones, are never older than a state
    published live meanwhile.
    """
    yield Message(topics.status, ONLINE.encode())
    yield Message(topics.light_config, _json(light_config(topics)))
    for c in COMMANDS:
        yield Message(topics.button_config(c), _json(button_config(c, topics)))
    for plug_id in plug_ids:
        # A plug dropped meanwhile (several nodes: another copy of the
        # state won) is no longer published.
        if plug(plug_id) is not None:
            yield Message(topics.plug_config(plug_id), _json(plug_config(plug_id, topics)))
    shown = display()
    if shown is not None:
        yield Message(topics.display_state, _json(light_state(shown)))
    for plug_id in plug_ids:
        now = plug(plug_id)
        if now is not None:
            yield Message(topics.plug_state(plug_id), plug_state(now.value))


def plug_messages(plug: Plug, first: bool, topics: Topics) -> list[Message]:
    """
    What a report publishes: the config first when the plug is new, then
    its state.
    """
    messages = [Message(topics.plug_config(plug.id), _json(plug_config(plug.id, topics)))] if first else []
    messages.append(Message(topics.plug_state(plug.id), plug_state(plug.value)))
    return messages


def display_message(display: Display, topics: Topics) -> Message:
    """The retained light state for C{display}."""
    return Message(topics.display_state, _json(light_state(display)))


def _decode(payload: bytes) -> Any:
    try:
        return strictjson.loads(payload)
    except strictjson.InvalidJSON as e:
        raise InvalidCommand(f"not JSON: {e}") from None


def _byte(value: Any, field: str) -> int:
    # HA sends whole numbers; bool is an int but not a brightness.
    if type(value) is not int or not 0 <= value <= 255:
        raise InvalidCommand(f"{field} must be a whole number from 0 to 255")
    return value


def parse_light_command(payload: bytes, current: Display, last_on: Optional[Display],
                        last_colour: Optional[Display] = None) -> Display:
    """
    The display state a JSON-schema light command asks for.

    - C{{"state": "OFF"}}: off (mode 0).
    - C{"effect"} (a weather name): weather (mode 1), intensity from
      C{"brightness"} if given, else the last weather's, else 9.
    - C{"color"} C{{"r","g","b"}}: colour (mode 2), the last colour's pulse
      kept, through a weather too (0 if there was none).
    - only C{"brightness"}: the weather's intensity; a colour is unchanged.
    - a bare C{ON} (C{{"state": "ON"}}, or the payload C{ON} alone): the
      current state if on, else C{last_on}, else L{DEFAULT_ON}; the payload
      C{OFF} alone is off.

    @param current: the display state now.
    @param last_on: the last state that was not off, if any.
    @param last_colour: the last colour state (mode 2), if any.
    @raise InvalidCommand: anything else.
    """
    plain = payload.strip()
    data = {"state": plain.decode()} if plain in (b"ON", b"OFF") else _decode(payload)
    if not isinstance(data, dict):
        raise InvalidCommand("expected a JSON object")
    state = data.get("state")
    if state == "OFF":
        return OFF
    if state != "ON":
        raise InvalidCommand('state must be "ON" or "OFF"')
    base = current if current.mode != 0 else (last_on or DEFAULT_ON)
    brightness = _byte(data["brightness"], "brightness") if "brightness" in data else None
    if "effect" in data:
        effect = data["effect"]
        if effect not in EFFECT_CODES:
            raise InvalidCommand("effect must be one of " + ", ".join(WEATHERS))
        if brightness is not None:
            intensity = brightness_to_intensity(brightness)
        else:
            intensity = base.intensity if base.mode == 1 else 9
        return Display(1, weather=EFFECT_CODES[effect], intensity=intensity)
    if "color" in data:
        color = data["color"]
        if not isinstance(color, dict):
            raise InvalidCommand('color must be an object {"r", "g", "b"}')
        rgb = tuple(_byte(color.get(c), f"color.{c}") for c in "rgb")
        last = base if base.mode == 2 else last_colour
        return Display(2, color=rgb, pulse=last.pulse if last is not None else 0)
    if brightness is not None and base.mode == 1:
        return Display(1, weather=base.weather, intensity=brightness_to_intensity(brightness))
    return base


def parse_button(payload: bytes) -> str:
    """
    The one-off command of a button press: C{reset} or C{update}.

    @raise InvalidCommand: anything else.
    """
    command = payload.decode("utf-8", "replace").strip()
    if command not in COMMANDS:
        raise InvalidCommand('expected "reset" or "update"')
    return command


def parse_event_data(payload: bytes) -> Union[Any, str]:
    """
    The data of a publication arriving on C{<prefix>/publish/E}: the JSON
    value if the payload is JSON, else its text (PiCloud's clients mostly
    send strings).  Text that is not strict JSON (L{strictjson}: no NaN, no
    lone surrogates) is taken as a string.
    """
    try:
        return strictjson.loads(payload)
    except strictjson.InvalidJSON:
        return payload.decode("utf-8", "replace")


def event_payload(data: Any) -> bytes:
    """
    What a pub/sub publication's data becomes on C{<prefix>/events/E}: a
    string as its text, anything else as JSON.
    """
    if isinstance(data, str):
        return data.encode("utf-8")
    return _json(data)
