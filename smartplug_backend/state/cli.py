"""
C{python -m smartplug_backend backup|restore|passwd}: administration from
the shell (SPEC 7a, 9), what ServerPy's server.sh did.

Every error is one line on stderr starting C{smartplug:}, and exit status 1;
success prints what was written.
"""

import argparse
import getpass
import json
import os
import sys
from typing import Optional

from .. import config
from ..command import admin_command
from . import backup, lock


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # One line, like every other error of ours, not argparse's usage dump.
        raise _Failed(f"{message} (see {admin_command()} --help)")


class _Failed(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=admin_command(),
        description="Back up or restore the smartplug server's state database; make dashboard passwords.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    take = commands.add_parser(
        "backup",
        help="write a consistent copy of STATE_DB and the settings file (safe while the server runs)",
    )
    take.add_argument("--settings", metavar="PATH", help="settings file (default: ./settings.py)")
    take.add_argument("--to", metavar="DIR", default=backup.DEFAULT_DIRECTORY,
                      help=f"where to write the backup (default: {backup.DEFAULT_DIRECTORY}/)")
    put = commands.add_parser(
        "restore",
        help="put the database of a backup back at STATE_DB (only while the server is stopped)",
    )
    put.add_argument("file", metavar="FILE", help="a backup written by the backup command")
    put.add_argument("--settings", metavar="PATH", help="settings file (default: ./settings.py)")
    passwd = commands.add_parser(
        "passwd",
        help="hash a dashboard password and print the DASHBOARD_USERS line for settings.py "
        "(asks twice on a terminal; otherwise reads one line of standard input)",
    )
    passwd.add_argument("name", metavar="NAME", help="the user name to log in with")
    return parser


def _state_db(settings_path: Optional[str]) -> tuple:
    settings = config.load(settings_path)
    where = settings.path or "the built-in settings"
    if settings.REDIS_URL is not None:
        # STATE_DB is not used then: its file, if any, is not the state.
        raise _Failed(f"REDIS_URL is set in {where}: the state lives in Redis, not in a database file; "
                      "back Redis up with its own snapshots (RDB or AOF)")
    if settings.STATE_DB is None:
        raise _Failed(f"STATE_DB is None in {where}: the state is kept in memory only, there is no database")
    return settings.STATE_DB, settings.path


def _backup(args) -> str:
    db_path, settings_path = _state_db(args.settings)
    return f"backup written to {backup.take(db_path, settings_path, args.to)}"


def _restore(args) -> str:
    db_path, _ = _state_db(args.settings)
    try:
        aside = backup.restore(db_path, args.file)
    except lock.Locked as e:
        raise _Failed(f"not restored: {e}; stop it first (make stop, or sudo systemctl stop smartplug)") from None
    done = f"{args.file} restored to {os.path.abspath(db_path)}"
    if aside:
        done += f"; the database it replaced is now {os.path.abspath(aside)}"
    else:
        # Often a relative STATE_DB read from another directory than the
        # server's: say so, the server will not see it.
        done += (f"; there was no database there before: if the server keeps its state elsewhere, run this "
                 f"where the server runs (STATE_DB is {db_path!r})")
    return done


def _read_password(stdin) -> str:
    if stdin.isatty():
        try:
            first = getpass.getpass("Password: ")
            if first != getpass.getpass("Again: "):
                raise _Failed("the two passwords differ; nothing printed")
        except EOFError:
            raise _Failed("no password given; nothing printed") from None
        password = first
    else:
        password = stdin.readline().rstrip("\r\n")
    if not password:
        raise _Failed("an empty password; nothing printed")
    return password


def _passwd(args, stdin=None) -> str:
    if not args.name or any(c in args.name for c in "\"\\") or not args.name.isprintable():
        raise _Failed("NAME must be printable, without quotes or backslashes")
    # Imported here: hashing needs nothing of the rest of the server.
    from ..server.passwords import hash_password

    hashed = hash_password(_read_password(stdin or sys.stdin))
    return f"DASHBOARD_USERS = {json.dumps({args.name: hashed}, ensure_ascii=False)}"


def main(argv=None, out=sys.stdout, err=sys.stderr, stdin=None) -> int:
    """
    Run the command line C{argv} (default: C{sys.argv[1:]}).

    @return: the exit status.
    """
    try:
        args = _parser().parse_args(argv)
        if args.command == "passwd":
            result = _passwd(args, stdin)
        else:
            result = {"backup": _backup, "restore": _restore}[args.command](args)
    except (_Failed, config.ConfigError, backup.BackupError) as e:
        err.write(f"smartplug: {e}\n")
        return 1
    except OSError as e:
        err.write(f"smartplug: {e.filename or ''}: {e.strerror}\n".replace(": :", ":"))
        return 1
    except KeyboardInterrupt:
        err.write("\nsmartplug: interrupted\n")
        return 130
    out.write(result + "\n")
    return 0
