"""``python -m stpp.bench speed|quality|gallery|ui|review|ranking ...``: dispatch to the benchmark's own ``main(argv)``."""

import importlib
import sys

BENCHMARKS = ("speed", "quality", "gallery", "ui", "review", "ranking")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: python -m stpp.bench {{{','.join(BENCHMARKS)}}} [options]", file=sys.stderr)
        return 2
    return importlib.import_module(f"stpp.bench.{argv[0]}").main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
