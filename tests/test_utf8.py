"""
smartplug_backend.server.utf8: what is not UTF-8 in a request (SPEC 6.3).
"""

from urllib.parse import quote_from_bytes

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.server.utf8 import problem

from .strategies import is_utf8


class ProblemTests(SynchronousTestCase):
    def test_named_parts(self):
        self.assertIsNone(problem(b"/plugs/k%C3%BCche?x=%C3%BC&y=\xc3\xbc", [(b"X-Name", b"k\xc3\xbcche")]))
        self.assertEqual(problem(b"/a%ff?x=%ff", [(b"X-A", b"\xff")]), "the path is not UTF-8")
        self.assertEqual(problem(b"/a\xff", []), "the path is not UTF-8")
        self.assertEqual(problem(b"/a?x=%fc", [(b"X-A", b"\xff")]), "the query is not UTF-8")
        self.assertEqual(problem(b"/a?x=\xfc", []), "the query is not UTF-8")
        self.assertEqual(problem(b"/a", [(b"X-A", b"ok"), (b"X-B", b"\xed\xa0\x80")]), "header X-B is not UTF-8")

    @given(
        st.binary(max_size=20).map(lambda b: b.replace(b"%", b"").replace(b"?", b"")),
        st.binary(max_size=20).map(lambda b: b.replace(b"%", b"")),
        st.binary(max_size=20),
    )
    def test_any_bytes(self, path, query, value):
        """
        Nothing is named exactly when the path, the query (sent as they are
        or escaped) and the header are UTF-8.
        """
        whole = is_utf8(path) and is_utf8(query) and is_utf8(value)
        escaped = quote_from_bytes(path).encode() + b"?" + quote_from_bytes(query).encode()
        for target in (path + b"?" + query, escaped):
            found = problem(target, [(b"X-A", value)])
            self.assertEqual(found is None, whole, (target, value, found))
