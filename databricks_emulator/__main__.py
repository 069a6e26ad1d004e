"""``python -m databricks_emulator --port 8765``: serve the emulated workspace on 127.0.0.1 and print
the environment to export for the project. Ctrl-C (or SIGTERM) stops it."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import threading
from pathlib import Path

from databricks_emulator.clusters import DEFAULT_CLUSTER_ID
from databricks_emulator.server import DatabricksEmulator


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m databricks_emulator", description="A Databricks workspace emulator on 127.0.0.1."
    )
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--root", type=Path, default=Path(".data") / "databricks-emulator")
    parser.add_argument(
        "--token-env", default="BACKFILL_DATABRICKS_TOKEN",
        help="environment variable holding the token to accept (one is generated if it is unset)",
    )
    args = parser.parse_args(argv)
    token = os.environ.get(args.token_env) or "dapi-emulator-" + secrets.token_hex(16)
    emulator = DatabricksEmulator(args.root, token=token, port=args.port).start()
    print(f"Databricks emulator on {emulator.url}, storage in {emulator.root}. For the project:")
    print("  export BACKFILL_DEPLOYMENT=databricks")
    print(f"  export BACKFILL_DATABRICKS_HOST={emulator.url}")
    if not os.environ.get(args.token_env):
        print(f"  export {args.token_env}={token}")
    print(f"  export BACKFILL_DATABRICKS_CLUSTER_ID={DEFAULT_CLUSTER_ID}")
    print(
        f"Unity Catalog: a catalog is a folder of {emulator.warehouse} (main exists; mkdir creates one), "
        "a table catalog.schema.table is stored in <catalog>/<schema>/<table>. Ctrl-C stops.", flush=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()


if __name__ == "__main__":
    main()
