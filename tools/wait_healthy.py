#!/usr/bin/python3
"""Waits until the gRPC servers on the given loopback ports report SERVING (grpc.health.v1).

Exits 0 when all are serving, 1 with the laggards named when the timeout passes, or at once
when one of the processes given by --pid has exited (a server that could not start never will).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "pylib"))

import grpc  # noqa: E402
import peerpath_health  # noqa: E402


def alive(pid: int) -> bool:
    """True while the process runs; an exited child not yet reaped (a zombie) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            # The state follows the command name, which is in parentheses and may hold spaces.
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--pid", type=int, action="append", default=[],
                        help="a server process to watch; its exit ends the wait (repeatable)")
    parser.add_argument("ports", nargs="+", type=int)
    args = parser.parse_args()
    deadline = time.monotonic() + args.timeout
    pending = set(args.ports)
    while pending and time.monotonic() < deadline:
        gone = [pid for pid in args.pid if not alive(pid)]
        if gone:
            print(f"exited before serving: pids {gone}", file=sys.stderr)
            return 1
        for port in sorted(pending):
            with grpc.insecure_channel(f"{args.host}:{port}") as channel:
                try:
                    if peerpath_health.check(channel, timeout=1.0) == peerpath_health.SERVING:
                        pending.discard(port)
                except grpc.RpcError:
                    pass
        if pending:
            time.sleep(0.3)
    if pending:
        print(f"not healthy after {args.timeout:.0f}s: ports {sorted(pending)}", file=sys.stderr)
        return 1
    print(f"healthy: ports {sorted(args.ports)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
