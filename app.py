"""Start the stpp web app on the workspace's store: ``python app.py [--host H] [--port P] [--workspace DIR] ...``.

Opens (or creates) the store, seeds the demo project on first start, builds the UI and serves it.
It binds 127.0.0.1 unless told otherwise; any other address needs a sign-in (``--auth
user:password`` or ``STPP_AUTH``), or ``--insecure`` to serve the workspace to the network
without one. ``--ssl-keyfile``/``--ssl-certfile`` serve HTTPS; ``--max-upload`` bounds each
uploaded file. Bad arguments and a workspace that cannot be used end the program with a one-line
error and exit code 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
from pathlib import Path

from stpp.cli.backend_args import add_backend_arguments, backend_from_args
from stpp.core.config import ConfigError
from stpp.core.layout import default_workspace

# Offline by default; set before gradio is imported.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent
DEMO_DIR = REPO / "data" / "demo"
EXIT_BAD_INPUT = 2
AUTH_ENV = "STPP_AUTH"
DEFAULT_MAX_UPLOAD = "2gb"
AUTH_MESSAGE = "Sign in to stpp."
_SIZE = re.compile(r"(\d+)\s*(b|kb|mb|gb|tb)?", re.IGNORECASE)
INSECURE_WARNING = """\
stpp: WARNING: ************************************************************************
stpp: WARNING: serving on {host} WITHOUT SIGN-IN (--insecure). Anyone who can reach this
stpp: WARNING: address can read, change and delete every project in {workspace},
stpp: WARNING: upload files and start training. Use --auth user:password instead.
stpp: WARNING: ************************************************************************"""


class UsageError(Exception):
    """Command-line values that cannot be served as asked; the message says what to change."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: where to serve, the workspace, sign-in, HTTPS and the upload limit."""
    parser = argparse.ArgumentParser(description="stpp: annotation assist with ST++ self-training (web app)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: 127.0.0.1; any other address needs --auth or --insecure)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default: 7860)")
    parser.add_argument("--workspace", type=Path, default=default_workspace(),
                        help="workspace folder for the store and its files (default: $STPP_HOME or ./workspace)")
    parser.add_argument("--cache-ttl", type=int, default=3600, metavar="SECONDS",
                        help="how long Gradio keeps its copy of a served file (exports, thumbnails); default 3600")
    parser.add_argument("--no-demo", action="store_true", help="do not seed the camvid-demo project")
    parser.add_argument("--auth", action="append", metavar="USER:PASSWORD",
                        help=f"require this sign-in (repeat for several users; default: ${AUTH_ENV})")
    parser.add_argument("--insecure", action="store_true",
                        help="allow a non-loopback --host without sign-in (everyone on the network gets full access)")
    parser.add_argument("--ssl-keyfile", type=Path, help="TLS private key file: serve HTTPS (with --ssl-certfile)")
    parser.add_argument("--ssl-certfile", type=Path, help="TLS certificate file: serve HTTPS (with --ssl-keyfile)")
    add_backend_arguments(parser)
    parser.add_argument("--max-upload", default=DEFAULT_MAX_UPLOAD, metavar="SIZE",
                        help=f"largest file one upload may hold, e.g. 500mb or 2gb (default: {DEFAULT_MAX_UPLOAD})")
    return parser.parse_args(argv)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (``localhost``, 127.0.0.0/8, ``::1``).

    A host name other than ``localhost`` counts as reachable from the network.
    """
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def parse_auth(values: list[str] | None, env_value: str | None) -> list[tuple[str, str]]:
    """Sign-in pairs from ``--auth`` values, else from ``STPP_AUTH``; a password may contain colons.

    Raises:
        UsageError: a value that is not ``user:password`` with both parts non-empty.
    """
    if values:
        given, where = values, "--auth"
    elif env_value and env_value.strip():
        given, where = [env_value.strip()], AUTH_ENV
    else:
        return []
    pairs = []
    for value in given:
        user, colon, password = value.partition(":")
        if not colon or not user.strip() or not password:
            raise UsageError(f"{where} must be user:password with a non-empty user and password")
        pairs.append((user.strip(), password))
    return pairs


def parse_size(text: str) -> str:
    """``500mb``, ``2 GB`` or a byte count, as Gradio's ``max_file_size`` takes it (``500mb``, ``123b``).

    Raises:
        UsageError: not a whole number with an optional unit b, kb, mb, gb or tb, or zero.
    """
    match = _SIZE.fullmatch(text.strip())
    if not match or int(match.group(1)) == 0:
        raise UsageError(f"--max-upload {text!r}: expected a size such as 500mb or 2gb")
    return f"{int(match.group(1))}{(match.group(2) or 'b').lower()}"


def launch_options(args: argparse.Namespace, environ: dict[str, str]) -> tuple[dict, list[str]]:
    """The keyword arguments of ``Blocks.launch`` for the command line, and warnings to print.

    Raises:
        UsageError: a non-loopback host without sign-in or ``--insecure``, a bad ``--auth``,
            ``--max-upload`` or TLS file.
    """
    auth = parse_auth(args.auth, environ.get(AUTH_ENV))
    warnings = []
    if not is_loopback(args.host) and not auth:
        if not args.insecure:
            raise UsageError(f"--host {args.host} serves the workspace to the network: give --auth user:password "
                             f"(or set {AUTH_ENV}), or --insecure to serve it without sign-in")
        warnings.append(INSECURE_WARNING.format(host=args.host, workspace=args.workspace))
    if (args.ssl_keyfile is None) != (args.ssl_certfile is None):
        raise UsageError("HTTPS needs both --ssl-keyfile and --ssl-certfile")
    for flag, path in (("--ssl-keyfile", args.ssl_keyfile), ("--ssl-certfile", args.ssl_certfile)):
        if path is not None and not path.is_file():
            raise UsageError(f"{flag} {path}: no such file")
    if auth and args.ssl_certfile is None and not is_loopback(args.host):
        warnings.append("stpp: warning: passwords travel unencrypted without --ssl-keyfile/--ssl-certfile")
    options = {
        "server_name": args.host, "server_port": args.port, "share": False, "run_history": False,
        "auth": auth or None, "auth_message": AUTH_MESSAGE if auth else None,
        "max_file_size": parse_size(args.max_upload),
        "ssl_keyfile": str(args.ssl_keyfile) if args.ssl_keyfile else None,
        "ssl_certfile": str(args.ssl_certfile) if args.ssl_certfile else None,
        # Gradio's start-up request to itself goes to the bound address, which a real certificate never names.
        "ssl_verify": False,
    }
    return options, warnings


def fail(message: str) -> int:
    """Print a one-line error on stderr; returns the exit code for bad input."""
    print(f"stpp: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> int:
    """Open the store, seed the demo, build the UI and serve it until interrupted; returns the exit code."""
    args = parse_args(argv)
    if args.cache_ttl < 1:
        return fail(f"--cache-ttl must be at least 1 second, not {args.cache_ttl}")
    try:
        options, warnings = launch_options(args, dict(os.environ))
    except UsageError as exc:
        return fail(str(exc))
    for warning in warnings:
        print(warning, file=sys.stderr, flush=True)
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

    try:
        backend = backend_from_args(args, store.workspace)
    except ConfigError as exc:
        return fail(str(exc))
    # What runs wrote while the app was down is imported; runs whose worker died become failed +
    # resumable; live ones are kept, and followed from now on with no page open.
    jobs = JobRunner(store, backend=backend)
    for run in jobs.recover():
        print(f"stpp: run {run.id} was left {run.status} (its worker is gone); it can be resumed", file=sys.stderr)
    jobs.follow()
    settings = Settings(workspace=store.workspace, host=args.host, port=args.port, demo_dir=DEMO_DIR,
                        download_ttl_s=args.cache_ttl)
    app = build_app(Services(store=store, settings=settings, jobs=jobs))
    try:
        app.launch(**options, allowed_paths=[str(settings.thumbnail_dir)], prevent_thread_lock=True, quiet=True)
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
