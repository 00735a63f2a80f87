"""
The shared WebSocket server protocol: how prepared messages are sent.
"""

import txaio
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.apps import AppFactory
from smartplug_backend.hub import Hub
from smartplug_backend.limits import MAX_UNSENT

from .helpers import ws_connect


class PreparedMessageTests(SynchronousTestCase):
    """
    L{LenientServerProtocol.sendPreparedMessage} writes the prepared frame
    itself, keeps Autobahn's ordering when a send is queued, and still counts
    what a full transport leaves unsent.
    """

    def test_prepared_frame_reaches_client(self):
        """
        A prepared text message arrives at a client as exactly that message.
        """
        factory = AppFactory(Hub())
        client, server, pump = ws_connect(factory)
        server.sendPreparedMessage(factory.prepareMessage(b'{"id": "a", "value": 1}'))
        pump.flush()
        self.assertEqual(client.texts(), ['{"id": "a", "value": 1}'])

    def test_queued_send_keeps_order(self):
        """
        While Autobahn holds a send in its queue, a prepared message goes
        through Autobahn's own path and arrives after the queued ones.
        """
        # Autobahn paces queued sends with txaio.call_later: give it a clock.
        clock = Clock()
        self.patch(txaio.config, "loop", clock)
        factory = AppFactory(Hub())
        client, server, pump = ws_connect(factory)
        server.sendMessage(b"first", sync=True)
        server.sendMessage(b"second", sync=True)
        self.assertTrue(server.send_queue)
        server.sendPreparedMessage(factory.prepareMessage(b"third"))
        for _ in range(5):
            pump.flush()
            clock.advance(1)
        pump.flush()
        self.assertEqual(client.texts(), ["first", "second", "third"])

    def test_full_transport_still_cut_off(self):
        """
        Broadcasts to an app that stopped reading count as unsent once its
        transport is full, and the app is cut off past the limit.
        """
        factory = AppFactory(Hub())
        client, server, pump = ws_connect(factory)
        server.transport.producer.pauseProducing()
        prepared = factory.prepareMessage(b"x" * 60 * 1024)
        for _ in range(MAX_UNSENT // (60 * 1024) + 1):
            server.sendPreparedMessage(prepared)
        self.assertTrue(server.transport.disconnecting)
