"""
End-to-end helpers for MQTT: Debian's mosquitto started by a test on a free
loopback port (config and log in the test's temp directory), and a paho
client in Home Assistant's role that records what it receives.
"""

import os
import pwd
import socket
import subprocess
import threading
import time

import paho.mqtt.client as paho

from .server import free_port

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"


class Mosquitto:
    """
    One mosquitto process on 127.0.0.1:C{port}, no persistence (a restart
    forgets every retained message).

    @param users: C{{user: password}}: only they may connect; else anyone.
    @param tls: C{(cert_path, key_path)}: the listener speaks TLS with them.
    """

    def __init__(self, directory: str, port: int = None, users: dict = None, tls: tuple = None) -> None:
        for program in (MOSQUITTO,) + ((MOSQUITTO_PASSWD,) if users else ()):
            if not os.access(program, os.X_OK):
                raise AssertionError(f"{program} is missing: install Debian's mosquitto (make system-deps)")
        self.directory = directory
        self.port = port or free_port()
        self.config = os.path.join(directory, "mosquitto.conf")
        self.log_path = os.path.join(directory, "mosquitto.log")
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence false",
            # The test's clients read everything the server publishes: its
            # republish of hundreds of plugs must not overflow mosquitto's
            # queue for them (1000 by default; it drops the rest).
            "max_queued_messages 100000",
            # Started as root, mosquitto would switch to the user "mosquitto",
            # who cannot read the test's directory.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
        ]
        self.tls = tls
        if tls:
            lines += [f"certfile {tls[0]}", f"keyfile {tls[1]}"]
        if users:
            passwords = os.path.join(directory, "passwd")
            for i, (user, password) in enumerate(users.items()):
                subprocess.run(
                    [MOSQUITTO_PASSWD, "-b"] + (["-c"] if i == 0 else []) + [passwords, user, password],
                    check=True, capture_output=True, timeout=30,
                )
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines.append("allow_anonymous true")
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.process = None

    def start(self, timeout: float = 10) -> "Mosquitto":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([MOSQUITTO, "-c", self.config], stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    with open(self.log_path) as f:
                        raise AssertionError(f"mosquitto did not start:\n{f.read()}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def url(self, user: str = None, password: str = None) -> str:
        login = f"{user}:{password}@" if user else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{login}127.0.0.1:{self.port}"


def start_mosquitto(testcase, **kwargs) -> Mosquitto:
    """
    A broker in a fresh temp directory of C{testcase}, stopped when it ends.
    """
    directory = os.path.abspath(testcase.mktemp())
    os.makedirs(directory)
    broker = Mosquitto(directory, **kwargs)
    testcase.addCleanup(broker.stop)
    return broker.start()


class Received:
    """One message as the test client got it."""

    def __init__(self, message) -> None:
        self.topic = message.topic
        self.payload = message.payload
        self.retain = bool(message.retain)

    def __repr__(self) -> str:
        return f"<{self.topic} {self.payload[:60]!r}{' retained' if self.retain else ''}>"


class HomeAssistant:
    """
    A paho client playing Home Assistant: subscribes to C{topics} and keeps
    every message; waits poll with a deadline.
    """

    def __init__(self, port: int, topics=("homeassistant/#", "smartplug/#"), user=None, password=None) -> None:
        self.messages: list = []
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2)
        if user:
            self.client.username_pw_set(user, password)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise AssertionError("test client: no SUBACK")

    def _on_message(self, client, userdata, message) -> None:
        with self._changed:
            self.messages.append(Received(message))
            self._changed.notify_all()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def wait_for(self, topic: str, payload=None, start: int = 0, timeout: float = 10) -> Received:
        """
        The first message on C{topic} (with C{payload}, if given) from index
        C{start} on.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for m in self.messages[start:]:
                    if m.topic == topic and (payload is None or m.payload == payload):
                        return m
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no message on {topic} ({payload!r}); got {self.messages[-20:]}")
                self._changed.wait(min(remaining, 0.5))

    def mark(self) -> int:
        """The index of the next message, for C{wait_for(start=...)}."""
        with self._changed:
            return len(self.messages)


def connect_home_assistant(testcase, port: int, **kwargs) -> HomeAssistant:
    """A L{HomeAssistant} client, closed when the test ends."""
    ha = HomeAssistant(port, **kwargs)
    testcase.addCleanup(ha.close)
    return ha

