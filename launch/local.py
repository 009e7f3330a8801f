"""Start one jaxinterp command as N cooperating processes on this machine (JAX multi-controller).

    python launch/local.py --processes 2 --devices-per-process 4 -- \
        .venv/bin/jaxinterp train --config configs/train.py --config.streams=8

Every process gets ``JAXINTERP_COORDINATOR`` (127.0.0.1 and a free port), ``JAXINTERP_NUM_PROCESSES``
and ``JAXINTERP_PROCESS_ID``, which ``jaxinterp.distributed.initialize`` reads; with
``--devices-per-process`` also ``XLA_FLAGS=--xla_force_host_platform_device_count=D`` (CPU
devices, as the tests use). Output lines are prefixed with ``[p<i>]``.

SIGTERM or SIGINT to the launcher is forwarded to every process (a training run then saves a
checkpoint at the same step on all of them and exits 0). If one process fails, the others get
SIGTERM, then SIGKILL after ``--grace`` seconds; the launcher exits with the first failure's code.
Standard library only, so it runs before jaxinterp is importable.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_env(index: int, count: int, port: int, devices: int | None) -> dict[str, str]:
    """The environment of process ``index`` of ``count``."""
    env = dict(os.environ, JAXINTERP_COORDINATOR=f"127.0.0.1:{port}", JAXINTERP_NUM_PROCESSES=str(count),
               JAXINTERP_PROCESS_ID=str(index), PYTHONUNBUFFERED="1")
    if devices:
        flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
        env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    return env


def _relay(index: int, stream, sink) -> None:
    for line in iter(stream.readline, b""):
        sink.write(f"[p{index}] {line.decode(errors='replace')}")
        sink.flush()


def launch(command: list[str], processes: int, devices: int | None = None, grace: float = 60.0) -> int:
    """Runs ``command`` as ``processes`` processes; returns 0 if all succeed, else the first failure's code."""
    port = free_port()
    children = [subprocess.Popen(command, env=process_env(i, processes, port, devices), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT) for i in range(processes)]
    relays = [threading.Thread(target=_relay, args=(i, child.stdout, sys.stdout), daemon=True)
              for i, child in enumerate(children)]
    for relay in relays:
        relay.start()

    def forward(signum, _frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    failure, deadline = 0, None
    try:
        while any(child.poll() is None for child in children):
            codes = [child.poll() for child in children]
            failed = next((code for code in codes if code not in (None, 0)), None)
            if failed is not None and not failure:
                failure, deadline = failed, time.monotonic() + grace
                print(f"[launch] a process exited with {failed}; stopping the others", file=sys.stderr, flush=True)
                forward(signal.SIGTERM, None)
            if deadline is not None and time.monotonic() > deadline:
                for child in children:
                    if child.poll() is None:
                        child.kill()
            time.sleep(0.1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for relay in relays:
        relay.join(timeout=5)
    return failure or next((child.returncode for child in children if child.returncode), 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--processes", type=int, required=True)
    parser.add_argument("-d", "--devices-per-process", type=int, help="CPU devices per process (XLA_FLAGS)")
    parser.add_argument("--grace", type=float, default=60.0, help="seconds between SIGTERM and SIGKILL of the "
                                                                  "others after one process fails")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    return launch(command, args.processes, args.devices_per_process, args.grace)


if __name__ == "__main__":
    sys.exit(main())
