#!/usr/bin/python3
"""The PeerPath demo story, played against a running local stack (tools/run-local --demo).

Today it checks that every service answers over gRPC as an independent client would: health is
SERVING, the operations API lists the applied migrations. The service issues extend it into the
end-to-end story (consent, enrollment, check-ins, a routed concern, the program report).

Needs the generated Python stubs on PYTHONPATH (build/python) and an operations token in
PEERPATH_TOKEN; tools/run-local sets both.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "pylib"))

import grpc  # noqa: E402
import peerpath_health  # noqa: E402
from peerpath.ops.v1 import operations_pb2, operations_pb2_grpc  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    services = ["matching", "checkin", "consent", "escalation", "evaluation"]
    for name in services:
        parser.add_argument(f"--{name}", required=True, help=f"{name} gRPC address host:port")
    args = parser.parse_args()
    failures = 0
    for name in services:
        address = getattr(args, name)
        with grpc.insecure_channel(address) as channel:
            try:
                status = peerpath_health.check(channel)
            except grpc.RpcError as e:
                print(f"  {name:<11} {address}: health check failed: {e.code().name}")
                failures += 1
                continue
            if status != peerpath_health.SERVING:
                print(f"  {name:<11} {address}: health status {status}, not SERVING")
                failures += 1
                continue
            ops = operations_pb2_grpc.OperationsServiceStub(channel)
            migrations = ops.ListMigrations(
                operations_pb2.ListMigrationsRequest(), timeout=5,
                metadata=(("authorization", "Bearer " + os.environ["PEERPATH_TOKEN"]),))
            latest = migrations.migrations[-1] if migrations.migrations else None
            schema = f"schema at {latest.version:04d}_{latest.name}" if latest else "no schema"
            print(f"  {name:<11} {address}: SERVING, {schema}")
    if failures:
        print(f"demo failed: {failures} service(s) not serving", file=sys.stderr)
        return 1
    print("demo: all five services are serving")
    return 0


if __name__ == "__main__":
    sys.exit(main())
