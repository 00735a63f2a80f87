"""
The dashboard (SPEC 9): a web page for the home's owner under C{/ui/} on the
HTTP port, with logins, live state through one WebSocket, and the actions
of C{POST /display}, lifting bans and taking backups.

C{auth} (passwords, sessions, CSRF), C{feed} (what the page shows and its
changes), C{live} (the WebSocket), C{routes} (the pages and the JSON routes)
and C{wiring} (one call for the tap).
"""
