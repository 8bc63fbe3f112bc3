"""Upload throughput: edgeship over a paced serial line, and over SSH next to scp.

Run from the repository root as::

    .venv/bin/python bench/transfer.py [serial|ssh|all] [--runs N] [--ssh-mb MB] [--json]

serial  For 115200 baud (a 64 KiB blob) and 921600 baud (a 512 KiB blob): a
        sdk.emulate.relay.SerialRelay paced at that rate (10 bits per byte), the agent
        serving on its board end (``python -m edgeship.device_agent --serial <board_port> --baud N
        --store <temp>``), and the host on its host end through
        ``sdk.boards.open_session(Board.parse("serial://<host_port>?baud=N"))``. Each run
        times ``session.upload(blob)`` of a fresh ``os.urandom`` blob (incompressible, so
        it travels raw) from the call to its return: has, put_begin, every chunk, put_end
        (the agent hash-checks, fsyncs and installs). Payload throughput = blob bytes /
        those seconds, compared with the line's byte rate baud/10. Target: >= 90 %.
        The relay's byte counters give the bytes that crossed the line host -> board
        during the upload (framing, JSON headers, resends included).

ssh     A real OpenSSH sshd on 127.0.0.1 (sdk.emulate.sshd.Sshd, throwaway keys), and two ways
        to put the same fresh ``os.urandom`` blob (default 50 MB) on it, alternating
        which goes first from round to round:
          edgeship  ``session.upload(blob)`` on a session opened once through
                    ``open_session(Board.parse("ssh://user@127.0.0.1:PORT?python=<this
                    python>&key=...&known_hosts=<temp>"), accept_new_host=True)`` (the
                    agent zipapp placed and started by sdk.boards; its store is
                    ~/.edgeship/store of the login user). Timed: the upload call only;
                    the blob is not on the board before (and is deleted after) each run.
          scp       ``scp -q -F /dev/null -i KEY -P PORT -o UserKnownHostsFile=<temp>
                    -o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes
                    blob user@127.0.0.1:<temp dir>/blob``, the whole process timed
                    (connection, authentication and the remote write included).
        Throughput = blob bytes / seconds; the result is the median over rounds of each,
        and edgeship's median as a fraction of scp's. Target: >= 80 %. It also reports
        scp's fixed cost (median of three scp runs of a 1-byte file) and the ratio with
        that cost taken out of scp's time, as the stricter comparison.

One untimed warm-up upload (4 MB over SSH, 1 KiB over serial) runs first on each link.
This is a measurement, not a test: the exit code is always 0.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import _machine  # bench/_machine.py: the script's own directory is on sys.path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PYTHON = sys.executable
SERIAL_TARGET = 0.90
SSH_TARGET = 0.80
SERIAL_CASES = ((115200, 64 * 1024), (921600, 512 * 1024))
KIB = 1024
MB = 1000 * 1000


# ------------------------------------------------------------------------------------ serial
@contextlib.contextmanager
def _serial_agent(baud: int, store: Path, log: Path) -> Iterator[Any]:
    from edgeship.sdk.emulate.relay import SerialRelay

    with SerialRelay(baud, seed=1) as relay:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        with open(log, "wb") as err:
            agent = subprocess.Popen([PYTHON, "-m", "edgeship.device_agent", "--serial", relay.board_port, "--baud", str(baud),
                                      "--store", str(store)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=err, env=env, cwd=ROOT)
        try:
            deadline = time.monotonic() + 30
            while b"serving on" not in log.read_bytes():  # the agent says so once its tty is open
                if agent.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the serial agent did not start: {log.read_text(errors='replace')[-300:]}")
                time.sleep(0.02)
            yield relay
        finally:
            agent.terminate()
            try:
                agent.wait(10)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(10)


def serial_case(baud: int, size: int, runs: int, tmp: Path) -> dict[str, Any]:
    from edgeship.sdk.boards import Board, open_session
    from edgeship.sdk.emulate.relay import BOARD_TO_HOST, HOST_TO_BOARD

    store = tmp / f"serial-store-{baud}"
    line_rate = baud / 10
    rows = []
    with _serial_agent(baud, store, tmp / f"serial-agent-{baud}.log") as relay:
        board = Board.parse(f"serial://{relay.host_port}?baud={baud}")
        session = open_session(board)
        try:
            profile = session.profile
            session.upload(os.urandom(1024))  # warm-up, untimed
            for _ in range(runs):
                blob = os.urandom(size)
                before = (relay.stats(HOST_TO_BOARD), relay.stats(BOARD_TO_HOST))
                t0 = time.perf_counter()
                up = session.upload(blob)
                seconds = time.perf_counter() - t0
                after = (relay.stats(HOST_TO_BOARD), relay.stats(BOARD_TO_HOST))
                if up.skipped or (store / "blobs" / up.sha256).read_bytes() != blob:
                    raise RuntimeError("the serial upload did not install the blob")
                wire = after[0].offset - before[0].offset
                rows.append({"seconds": seconds, "bytes_per_s": size / seconds, "ratio": size / seconds / line_rate,
                             "encoding": up.encoding, "sent_bytes": up.sent_bytes,
                             "line_bytes_host_to_board": wire, "line_bytes_board_to_host": after[1].offset - before[1].offset,
                             "payload_fraction_of_line_bytes": size / wire if wire else None,
                             "line_busy_fraction": wire / (seconds * line_rate),
                             "frames_resent": session.link.stats.frames_resent})
        finally:
            session.close()
    med = statistics.median(r["bytes_per_s"] for r in rows)
    return {"baud": baud, "size": size, "line_bytes_per_s": line_rate, "runs": rows,
            "profile": {"chunk": profile.chunk, "window": profile.window, "rto": round(profile.rto, 3)},
            "median_bytes_per_s": med, "ratio": med / line_rate,
            "verdict": "PASS" if med / line_rate >= SERIAL_TARGET else "MISS"}


def run_serial(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    return [serial_case(baud, size, args.runs, tmp) for baud, size in SERIAL_CASES]


# --------------------------------------------------------------------------------------- ssh
def _scp(server: Any, known_hosts: Path, src: Path, dest: str) -> float:
    argv = ["scp", "-q", "-F", "/dev/null", "-i", str(server.user_key_path), "-P", str(server.port),
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes", str(src), f"{server.user}@127.0.0.1:{dest}"]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"scp failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
    return seconds


def _cipher(session: Any) -> str | None:
    try:
        t = session.stream._chan.get_transport()
        return f"{t.local_cipher} / {t.local_mac}"
    except Exception:
        return None


def run_ssh(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from edgeship.sdk.boards import Board, open_session
    from edgeship.sdk.emulate.sshd import Sshd

    os.environ.pop("SSH_AUTH_SOCK", None)  # only the throwaway key logs in
    size = int(args.ssh_mb * MB)
    scp_dir = Path(tempfile.mkdtemp(prefix="scp-dest-", dir=tmp))
    local_blob = tmp / "blob.bin"
    rounds: list[dict[str, Any]] = []
    with Sshd(tmp / "sshd") as server:
        scp_known = tmp / "known_hosts_scp"
        scp_known.write_text(server.known_hosts_line() + "\n")
        board = Board.parse(f"ssh://{server.user}@127.0.0.1:{server.port}?python={PYTHON}"
                            f"&key={server.user_key_path}&known_hosts={tmp / 'known_hosts_edgeship'}")
        t0 = time.perf_counter()
        session = open_session(board, accept_new_host=True)
        open_s = time.perf_counter() - t0
        try:
            # warm-up, untimed: both paths once with 4 MB
            warm = os.urandom(4 * MB)
            session.delete(session.upload(warm).sha256)
            local_blob.write_bytes(warm)
            _scp(server, scp_known, local_blob, str(scp_dir / "warm.bin"))
            (scp_dir / "warm.bin").unlink()
            tiny = tmp / "tiny.bin"
            tiny.write_bytes(b"x")
            scp_fixed = statistics.median(_scp(server, scp_known, tiny, str(scp_dir / "tiny.bin")) for _ in range(3))
            for r in range(args.runs):
                blob = os.urandom(size)
                sha = hashlib.sha256(blob).hexdigest()
                local_blob.write_bytes(blob)
                row: dict[str, Any] = {"round": r + 1, "order": ["edgeship", "scp"] if r % 2 == 0 else ["scp", "edgeship"]}
                for side in row["order"]:
                    if side == "edgeship":
                        if session.request({"op": "has", "sha256": sha}).header.get("installed"):
                            raise RuntimeError("the blob is already on the board")
                        t0 = time.perf_counter()
                        up = session.upload(blob)
                        seconds = time.perf_counter() - t0
                        listed = {b["sha256"]: b["size"] for b in session.list_blobs()}
                        if up.skipped or up.sha256 != sha or listed.get(sha) != size:
                            raise RuntimeError("the edgeship upload did not install the blob")
                        row["edgeship"] = {"seconds": seconds, "bytes_per_s": size / seconds, "encoding": up.encoding,
                                           "sent_bytes": up.sent_bytes}
                        session.delete(sha)
                    else:
                        dest = scp_dir / f"blob-{r}.bin"
                        seconds = _scp(server, scp_known, local_blob, str(dest))
                        if dest.stat().st_size != size:
                            raise RuntimeError("scp did not write the whole blob")
                        dest.unlink()
                        row["scp"] = {"seconds": seconds, "bytes_per_s": size / seconds,
                                      "bytes_per_s_without_setup": size / max(1e-9, seconds - scp_fixed)}
                rounds.append(row)
            cipher = _cipher(session)
        finally:
            session.close()
    local_blob.unlink(missing_ok=True)
    shutil.rmtree(scp_dir, ignore_errors=True)
    es = statistics.median(r["edgeship"]["bytes_per_s"] for r in rounds)
    scp = statistics.median(r["scp"]["bytes_per_s"] for r in rounds)
    scp_net = statistics.median(r["scp"]["bytes_per_s_without_setup"] for r in rounds)
    return {"size": size, "rounds": rounds, "open_session_s": open_s, "scp_fixed_s": scp_fixed,
            "paramiko_cipher": cipher, "ssh_version": _ssh_version(),
            "edgeship_median_bytes_per_s": es, "scp_median_bytes_per_s": scp, "ratio": es / scp,
            "scp_median_bytes_per_s_without_setup": scp_net, "ratio_vs_scp_without_setup": es / scp_net,
            "verdict": "PASS" if es / scp >= SSH_TARGET else "MISS"}


def _ssh_version() -> str | None:
    try:
        return subprocess.run(["ssh", "-V"], capture_output=True, text=True, timeout=10).stderr.strip()
    except (OSError, subprocess.SubprocessError):
        return None


# ----------------------------------------------------------------------------------- report
def machine() -> dict[str, Any]:
    return _machine.machine("paramiko", "pyserial")


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine(), "runs": args.runs, "errors": [],
                               "targets": {"serial": SERIAL_TARGET, "ssh": SSH_TARGET}}
    with tempfile.TemporaryDirectory(prefix="edgeship-transfer-") as tmpdir:
        tmp = Path(tmpdir)
        if args.which in ("serial", "all"):
            try:
                results["serial"] = run_serial(args, tmp)
            except Exception as exc:
                results["errors"].append(f"serial: {type(exc).__name__}: {exc}")
        if args.which in ("ssh", "all"):
            try:
                results["ssh"] = run_ssh(args, tmp)
            except Exception as exc:
                results["errors"].append(f"ssh: {type(exc).__name__}: {exc}")
    results["machine"]["loadavg_1m_end"] = _machine.loadavg()
    return results


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    out = [f"edgeship upload throughput, {results['runs']} runs per case",
           f"{m['date']}; nproc {m['nproc']}; {m['cpu'] or 'cpu unknown'}; Python {m['python']}; "
           f"paramiko {m['paramiko']}; pyserial {m['pyserial']}; {m['platform']}",
           f"1-minute load average: {m['loadavg_1m_start']} at start, {m['loadavg_1m_end']} at end", ""]
    for case in results.get("serial", []):
        p = case["profile"]
        out.append(f"serial {case['baud']} baud (line {case['line_bytes_per_s']:.0f} B/s), {case['size'] // KIB} KiB "
                   f"urandom blob, chunk {p['chunk']}, window {p['window']}, rto {p['rto']} s")
        header = f"  {'run':>3} {'seconds':>8} {'payload B/s':>12} {'of line':>8} {'line bytes':>11} {'payload/line':>13} {'line busy':>10}"
        out += [header, "  " + "-" * (len(header) - 2)]
        for i, r in enumerate(case["runs"], 1):
            out.append(f"  {i:>3} {r['seconds']:>8.3f} {r['bytes_per_s']:>12.0f} {r['ratio'] * 100:>7.1f}% "
                       f"{r['line_bytes_host_to_board']:>11} {r['payload_fraction_of_line_bytes'] * 100:>12.1f}% "
                       f"{r['line_busy_fraction'] * 100:>9.1f}%")
        out.append(f"  median payload throughput {case['median_bytes_per_s']:.0f} B/s = {case['ratio'] * 100:.1f} % of "
                   f"baud/10; target >= {results['targets']['serial'] * 100:.0f} % -> {case['verdict']}")
        out.append("")
    s = results.get("ssh")
    if s:
        out.append(f"ssh, {s['size'] / MB:.0f} MB urandom blob to a local sshd ({s['ssh_version']}); paramiko cipher "
                   f"{s['paramiko_cipher']}; open_session {s['open_session_s']:.2f} s (not timed); scp fixed cost "
                   f"(1-byte file) {s['scp_fixed_s']:.3f} s")
        header = f"  {'round':>5} {'order':<13} {'edgeship s':>10} {'edgeship MB/s':>14} {'scp s':>7} {'scp MB/s':>9}"
        out += [header, "  " + "-" * (len(header) - 2)]
        for r in s["rounds"]:
            e, c = r["edgeship"], r["scp"]
            out.append(f"  {r['round']:>5} {'/'.join(r['order']):<13} {e['seconds']:>10.3f} {e['bytes_per_s'] / MB:>14.1f} "
                       f"{c['seconds']:>7.3f} {c['bytes_per_s'] / MB:>9.1f}")
        out.append(f"  median: edgeship {s['edgeship_median_bytes_per_s'] / MB:.1f} MB/s, scp "
                   f"{s['scp_median_bytes_per_s'] / MB:.1f} MB/s -> edgeship/scp {s['ratio'] * 100:.1f} %; target >= "
                   f"{results['targets']['ssh'] * 100:.0f} % -> {s['verdict']}")
        out.append(f"  stricter: scp without its fixed cost {s['scp_median_bytes_per_s_without_setup'] / MB:.1f} MB/s -> "
                   f"edgeship/scp {s['ratio_vs_scp_without_setup'] * 100:.1f} %")
    for e in results["errors"]:
        out.append(f"error: {e}")
    return "\n".join(out).rstrip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("which", nargs="?", choices=["serial", "ssh", "all"], default="all")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per serial case / SSH rounds (default 3)")
    parser.add_argument("--ssh-mb", type=float, default=50.0, help="SSH blob size in MB of 10^6 bytes (default 50)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON document")
    args = parser.parse_args(argv)
    args.runs = max(1, args.runs)
    try:
        results = run(args)
    except Exception as exc:  # a measurement: say what broke, never fail the caller
        print(f"transfer bench failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 0
    print(json.dumps(results, indent=2) if args.json else report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
