"""python -m edgeship.device_agent --stdio | --serial PATH [--baud N]: serve edgeship requests."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from edgeship.device_agent import __version__


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(prog="edgeship-agent", description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--stdio", action="store_true", help="serve one host on stdin/stdout (SSH, local)")
    mode.add_argument("--serial", metavar="PATH", help="serve forever on a serial device or pty")
    mode.add_argument("--version", action="store_true", help="print the agent version and exit")
    parser.add_argument("--baud", type=int, default=115200)
    parser.add_argument("--store", type=Path, default=Path(os.environ.get("EDGESHIP_STORE", "~/.edgeship/store")).expanduser())
    parser.add_argument("--quota", type=int, default=512 << 20, help="store quota in bytes")
    parser.add_argument("--max-frame", type=int, default=1 << 20, help="largest frame payload accepted")
    parser.add_argument("--run-timeout", type=float, default=300.0,
                        help="seconds a run may take at most; a request may only lower it")
    parser.add_argument("--write-timeout", type=float, default=60.0,
                        help="seconds a host may accept no reply byte before the session ends")
    parser.add_argument("--memory-limit", type=int, default=2 << 30, help="per-run worker memory limit in bytes (0: none)")
    parser.add_argument("--runtime", choices=["ai_edge_litert", "tflite_runtime", "tensorflow", "tflite_micro"])
    parser.add_argument("--arena-size", type=int, default=None, help="tflite_micro: the tensor arena in bytes")
    parser.add_argument("--allow-delegate", action="append", default=[], metavar="NAME=PATH",
                        help="let run requests use the external delegate NAME, loaded from PATH (repeatable)")
    parser.add_argument("--delegate-config", type=Path, default=None, metavar="FILE",
                        help='allowed delegates, {"delegates": {"NAME": "PATH"}} [~/.edgeship/agent-delegates.json if it exists]')
    args = parser.parse_args(argv)
    for name in ("run_timeout", "write_timeout"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            parser.error(f"--{name.replace('_', '-')} must be a finite number of seconds over 0")
    if args.version:
        print(__version__)
        return 0
    from edgeship.device_agent.agent import Agent, AgentConfig, main_stdio
    from edgeship.device_agent.delegates import AllowListError, load_allow_list

    try:
        allowed = load_allow_list(args.allow_delegate, args.delegate_config, args.store)
    except AllowListError as exc:
        print(f"edgeship-agent: error: {exc}", file=sys.stderr)
        return 2
    config = AgentConfig(store_dir=args.store, quota=args.quota, max_frame=args.max_frame,
                         run_timeout=args.run_timeout, memory_limit=args.memory_limit, runtime=args.runtime,
                         arena_size=args.arena_size, delegates=allowed, write_timeout=args.write_timeout)
    if args.stdio:
        main_stdio(config)
        return 0
    from edgeship.device_agent.streams import open_tty

    try:
        stream = open_tty(args.serial, args.baud, args.write_timeout)
    except (OSError, ValueError) as exc:
        print(f"edgeship-agent: error: cannot serve on {args.serial}: {exc}", file=sys.stderr)
        return 2
    print(f"edgeship agent {__version__} serving on {args.serial} at {args.baud} baud", file=sys.stderr, flush=True)
    Agent(config).serve(stream, forever=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
