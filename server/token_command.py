"""``streamvsr token``: a new access token, and the digest that ``server.users`` stores."""

from __future__ import annotations

import argparse
import sys

from .access import hash_token, new_token


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "token",
        help="make an access token for server.users (and its digest)",
        description="Print a new random token (give it to the client: OBS's Bearer Token, a "
        "WHEP player, the page) and its sha256: digest (put that in server.users; the server "
        "never stores the token itself). With --hash, read a token from standard input and "
        "print its digest only.",
    )
    p.add_argument(
        "--hash", action="store_true", help="digest a token read from standard input instead"
    )
    p.set_defaults(func=cmd_token)


def cmd_token(args: argparse.Namespace) -> int:
    if args.hash:
        token = sys.stdin.readline().strip()
        if not token:
            print("error: no token on standard input", file=sys.stderr)
            return 2
        print(hash_token(token))
        return 0
    token = new_token()
    print(f"token:  {token}")
    print(f"digest: {hash_token(token)}")
    return 0
