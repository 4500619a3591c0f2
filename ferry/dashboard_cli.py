"""`ferry dashboard`: a one-time login link to the dashboard at /ui (ui/), and a browser opened on it with --open.

The command holds the API token; the browser never sees it. It asks ferry (POST /ui/api/login, with the token)
for a code that works once within a minute; opening the link trades the code for a session cookie.
"""

from __future__ import annotations

import argparse
import sys
import webbrowser
from collections.abc import Callable
from typing import Any

COMMANDS = ("dashboard",)


def add_parser(sub: Any, client: argparse.ArgumentParser) -> None:
    dashboard = sub.add_parser("dashboard", parents=[client],
                               help="print a one-time login link to the live dashboard (--open: open a browser)")
    dashboard.add_argument("--open", action="store_true", help="open the link in the default browser")


def run(args: argparse.Namespace, call: Callable[[Any, str, dict | None], dict | None]) -> int:
    answer = call(args.api, "/ui/api/login", {})
    if answer is None:
        return 1
    url = args.api.url(answer["path"])
    print(url)
    print(f"(works once, within {answer['expires_in_s']:.0f} s; the browser then stays logged in for a few hours)",
          file=sys.stderr)
    if args.open and not webbrowser.open(url):
        print("ferry: no browser could be opened here; open the link above", file=sys.stderr)
    return 0
