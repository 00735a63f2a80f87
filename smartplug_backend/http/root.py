"""
The HTTP site's root resource: routes each request by path (and, for the
ingest routes, by method) to a twisted.web resource, and every other request
to the Bottle app under C{WSGIResource}.

Three kinds of route, tried in this order:

- C{fast}: an exact request path (no query) taken on POST only, answered on
  the reactor thread by a handler (L{smartplug_backend.http.ingest}); a
  handler that returns L{NOT_MINE} hands the request on to the Bottle app,
  which then answers it exactly as if it had been the only route;
- C{children}: twisted.web resources by their first path segment
  (C{b"ui"}, C{b"metrics"}, ...), as C{Resource.putChild} keeps them;
- everything else: the Bottle app, which sees the whole path, as if it were
  the root.
"""

from typing import Callable, Mapping, Optional

from twisted.web.resource import Resource

# A fast handler's answer meaning "let the Bottle app answer this request".
NOT_MINE = object()

Handler = Callable[[object], object]


class Root(Resource):
    """
    The site's root.

    @param wsgi: the Bottle app's C{WSGIResource}.
    @param children: resources by first path segment (bytes).
    @param fast: handlers by exact path (bytes), for POST requests:
        C{handler(request)} returns the body (bytes), C{NOT_DONE_YET}, or
        L{NOT_MINE}.
    """

    def __init__(self, wsgi: Resource, children: Optional[Mapping] = None, fast: Optional[Mapping] = None) -> None:
        super().__init__()
        self._wsgi = wsgi
        self._fast = {path: _Fast(handler, wsgi) for path, handler in (fast or {}).items()}
        for name, child in (children or {}).items():
            self.putChild(name, child)

    def getChildWithDefault(self, name, request):
        if request.method == b"POST":
            fast = self._fast.get(request.path)
            if fast is not None:
                _give_back(name, request)
                return fast
        child = self.children.get(name)
        if child is not None:
            return child
        _give_back(name, request)
        return self._wsgi

    def render(self, request):
        return self._wsgi.render(request)


def _give_back(name, request) -> None:
    # twisted.web moved the first segment from postpath to prepath; the WSGI
    # app routes on the whole path (PATH_INFO is built from postpath).
    request.postpath.insert(0, request.prepath.pop())


class _Fast(Resource):
    """
    A fast handler as a leaf resource, with the WSGI app behind it.
    """

    isLeaf = True

    def __init__(self, handler: Handler, wsgi: Resource) -> None:
        super().__init__()
        self._handler = handler
        self._wsgi = wsgi

    def render(self, request):
        answer = self._handler(request)
        if answer is NOT_MINE:
            # The handler read the body; the app reads it again.
            request.content.seek(0)
            return self._wsgi.render(request)
        return answer
