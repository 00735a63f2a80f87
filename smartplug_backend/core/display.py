"""
The display state of SPEC 2.3 and its packets: C{[cc:<mode>:<p1>:<p2>]}.

Pure values and validation: the hub owns the current L{Display}; the HTTP
API parses requests with L{parse_display}; the device port sends packets.
"""

import dataclasses
import json
from typing import Any, Optional, Union

from . import strictjson

# One-off commands: sent to the devices, never stored as the state.
COMMANDS = {"reset": "[cc:r:?:?]", "update": "[cc:u:?:?]"}


class InvalidDisplay(ValueError):
    """
    A display request that must be refused; C{str(error)} names the field and
    the problem, and is safe to show to the sender.
    """


@dataclasses.dataclass(frozen=True)
class Display:
    """
    One display state: off (mode 0), weather (mode 1) or colour (mode 2).

    Only the fields of its mode are set; the others are C{None}.
    """

    mode: int = 0
    weather: Optional[int] = None
    intensity: Optional[int] = None
    color: Optional[tuple[int, int, int]] = None
    pulse: Optional[int] = None

    def packet(self) -> str:
        """
        The packet a device gets for this state, e.g. C{[cc:2:255,65,174:0]}.
        """
        if self.mode == 1:
            return f"[cc:1:{self.weather}:{self.intensity}]"
        if self.mode == 2:
            r, g, b = self.color
            return f"[cc:2:{r},{g},{b}:{self.pulse}]"
        return "[cc:0:?:?]"

    def as_json(self) -> dict:
        """
        The state as C{GET /display} shows it: the fields of its mode and its
        packet.
        """
        shown = {"mode": self.mode}
        if self.mode == 1:
            shown.update(weather=self.weather, intensity=self.intensity)
        elif self.mode == 2:
            shown.update(color=list(self.color), pulse=self.pulse)
        shown["packet"] = self.packet()
        return shown


OFF = Display()


@dataclasses.dataclass(frozen=True)
class LastOn:
    """
    What the display was last when it was not off (SPEC 12: a bare "on"
    restores it), and the last colour (mode 2), whose pulse a new colour
    keeps.  The hub keeps it beside the display state; the stores write it
    in the same commit as the state that sets it.

    @ivar state: the last state that was not off, or C{None} if none was.
    @ivar colour: the last colour state, or C{None} if none was.
    """

    state: Optional[Display] = None
    colour: Optional[Display] = None

    def after(self, display: Display) -> "LastOn":
        """
        What is remembered once C{display} is set: off changes nothing.
        """
        return LastOn(
            self.state if display.mode == 0 else display,
            display if display.mode == 2 else self.colour,
        )


# Nothing remembered: the display was never on.
NEVER_ON = LastOn()


def _integer(data: dict, field: str, low: int, high: int) -> int:
    if field not in data:
        raise InvalidDisplay(f"missing field: {field}")
    value = data[field]
    # bool is an int subclass, but true is not a colour channel.
    if type(value) is not int or not low <= value <= high:
        raise InvalidDisplay(f"{field} must be a whole number from {low} to {high}")
    return value


def validate_display(data: object) -> Union[Display, str]:
    """
    Validate a decoded C{POST /display} body.

    @return: the new L{Display}, or the name of a one-off command
        (C{"reset"} or C{"update"}, a key of L{COMMANDS}).
    @raise InvalidDisplay: for anything else.
    """
    if not isinstance(data, dict):
        raise InvalidDisplay("body must be a JSON object with mode or command")
    if "command" in data:
        if "mode" in data:
            # Which one was meant?  Neither is guessed.
            raise InvalidDisplay("give either mode or command, not both")
        command = data["command"]
        if not isinstance(command, str) or command not in COMMANDS:
            raise InvalidDisplay('command must be "reset" or "update"')
        return command
    mode = _integer(data, "mode", 0, 2)
    if mode == 1:
        return Display(1, weather=_integer(data, "weather", 1, 9), intensity=_integer(data, "intensity", 0, 9))
    if mode == 2:
        if "color" not in data:
            raise InvalidDisplay("missing field: color")
        color = data["color"]
        if (
            not isinstance(color, list)
            or len(color) != 3
            or any(type(c) is not int or not 0 <= c <= 255 for c in color)
        ):
            raise InvalidDisplay("color must be a list of three whole numbers [r, g, b], each from 0 to 255")
        return Display(2, color=tuple(color), pulse=_integer(data, "pulse", 0, 9))
    return OFF


def parse_display(body: Union[bytes, str]) -> Union[Display, str]:
    """
    Parse a JSON C{POST /display} body; see L{validate_display}.
    """
    try:
        data = strictjson.loads(body)
    except strictjson.InvalidJSON as e:
        raise InvalidDisplay(f"body is not valid JSON: {e}") from None
    return validate_display(data)


def remembered(state: Any, colour: Any) -> tuple[LastOn, list[str]]:
    """
    What a store kept as the last state that was not off and the last
    colour (each JSON text or a decoded JSON value, C{None} for none), as
    a L{LastOn}.  Either that is not a display state of its kind
    (the first not off, the second a colour) is left out, and said in the
    list returned: it is only remembered, and taken it would give off for
    a bare "on", or a colour with no pulse.
    """
    found, problems = [], []
    for value, what, modes in ((state, "last display state that was on", (1, 2)), (colour, "last colour", (2,))):
        display = None
        if isinstance(value, str):
            # JSON text, as stored (no display state is a JSON string).
            try:
                value = json.loads(value)
            except ValueError:
                pass
        if value is not None:
            try:
                display = validate_display(value)
            except InvalidDisplay as e:
                problems.append(f"the {what} is not valid ({e})")
            else:
                if not isinstance(display, Display) or display.mode not in modes:
                    problems.append(f"the {what} is not a {'colour' if modes == (2,) else 'state that is on'}")
                    display = None
        found.append(display)
    return LastOn(*found), problems
