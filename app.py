"""Start the stpp web app on the workspace's store: ``python app.py [--host H] [--port P] [--workspace DIR]``.

Opens (or creates) the store, seeds the demo project on first start, builds the UI and serves it.
A workspace that cannot be used ends the program with a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Offline by default; set before gradio is imported.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent
DEMO_DIR = REPO / "data" / "demo"
EXIT_BAD_INPUT = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: ``--host``, ``--port``, ``--workspace``, ``--no-demo``."""
    parser = argparse.ArgumentParser(description="stpp: annotation assist with ST++ self-training (web app)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default: 7860)")
    parser.add_argument("--workspace", type=Path, default=Path(os.environ.get("STPP_HOME") or "workspace"),
                        help="workspace folder for the store and its files (default: $STPP_HOME or ./workspace)")
    parser.add_argument("--no-demo", action="store_true", help="do not seed the camvid-demo project")
    return parser.parse_args(argv)


def fail(message: str) -> int:
    """Print a one-line error on stderr; returns the exit code for bad input."""
    print(f"stpp: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> int:
    """Open the store, seed the demo, build the UI and serve it until interrupted; returns the exit code."""
    args = parse_args(argv)
    from stpp.store import StoreError, open_store, seed_demo_project

    try:
        store = open_store(args.workspace)
    except StoreError as exc:
        return fail(str(exc))
    if not args.no_demo:
        try:
            seed_demo_project(store, DEMO_DIR)
        except StoreError as exc:
            print(f"stpp: warning: the demo project was not seeded: {exc}", file=sys.stderr)

    from stpp.jobs import JobRunner
    from ui import Services, Settings, build_app

    # Runs whose worker died while the app was down become failed + resumable; live ones are kept.
    jobs = JobRunner(store)
    for run in jobs.recover():
        print(f"stpp: run {run.id} was left {run.status} (its worker is gone); it can be resumed", file=sys.stderr)
    settings = Settings(workspace=store.workspace, host=args.host, port=args.port, demo_dir=DEMO_DIR)
    app = build_app(Services(store=store, settings=settings, jobs=jobs))
    try:
        app.launch(server_name=args.host, server_port=args.port, share=False, run_history=False,
                   prevent_thread_lock=True, quiet=True)
    except OSError as exc:
        return fail(f"cannot serve on {args.host}:{args.port}: {exc}")
    print(f"stpp is running at {app.local_url} (workspace: {store.workspace}); Ctrl+C stops it", flush=True)
    try:
        app.block_thread()
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
