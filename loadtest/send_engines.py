"""Compare the migrator's sending engines with storescu on one archive and one receiver.

Usage::

    python -m loadtest generate --out ARCHIVE --instances 3000 --roots 1 \\
        --nonpixel-rate 0 --orphan-rate 0 --duplicate-rate 0 --merged-rate 0
    python -m loadtest.send_engines ARCHIVE --rounds 3 [--baseline-tree OLD_CHECKOUT]

It starts DCMTK's storescp (``+xv``, so JPEG 2000 is accepted, and
TCP_NODELAY=1) on a free port of 127.0.0.1, and sends every file of the
archive with each contender in turn, the contenders interleaved, for
``--rounds`` rounds:

- ``storescu``: DCMTK's storescu on the archive's folders, one association;
- ``baseline``: ``migrator start`` run from ``--baseline-tree`` (an older
  checkout, for example one made with ``git archive``), if given;
- ``pynetdicom`` and ``dcmsend``: ``migrator start`` from this checkout,
  with that engine, ``--commit-seconds`` and ``--parallel`` for every
  destination.

Each migrator run starts from a new state database, planned with the same
tree before the clock starts, with ``run.processes`` from ``--processes``.
It prints per run: images/s from start to exit, images/s between the first
and the last audit row (without process start-up), sender CPU seconds per
image (the processes and their children, dcmsend included) and receiver CPU
seconds per image. Then the median per contender and its ratio to storescu.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

AE_TITLE = "NEWPACS"
SECTIONS = ("[destinations.main]\n", "[destinations.nonpixel]\n", "[sinbin]\n")
CHECKOUT = Path(__file__).resolve().parent.parent


@dataclass
class Measurement:
    contender: str
    images: int
    seconds: float
    #: Seconds between the first audit row's start and the last one's end; None for storescu.
    audit_seconds: float | None
    sender_cpu: float
    receiver_cpu: float

    @property
    def rate(self) -> float:
        return self.images / self.seconds

    @property
    def audit_rate(self) -> float | None:
        return self.images / self.audit_seconds if self.audit_seconds else None


def dcmtk_program(name: str) -> str:
    """Return the path of DCMTK's ``name`` on PATH.

    pynetdicom installs apps named storescp, storescu and echoscu in the
    virtual environment, which come first on PATH when it is activated.
    """
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / name
        if not os.access(candidate, os.X_OK):
            continue
        version = subprocess.run([str(candidate), "--version"], capture_output=True, text=True)
        if "dcmtk" in (version.stdout + version.stderr).lower():
            return str(candidate)
    sys.exit(f"DCMTK's {name} not found on PATH; install DCMTK: apt-get install dcmtk")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def process_cpu(pid: int) -> float:
    """Return the CPU seconds of a running process and of its children that it waited for.

    storescp --fork waits for the child that serves each association.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


class Receiver:
    """storescp writing the files it receives, on a free port."""

    def __init__(self, folder: Path, pdu: int | None, fork: bool) -> None:
        self.folder = folder
        self.port = free_port()
        self.received = folder / "received"
        self.received.mkdir(parents=True)
        command = [dcmtk_program("storescp"), "--aetitle", AE_TITLE, "+xv", "--output-directory", str(self.received)]
        if pdu:
            command += ["--max-pdu", str(pdu)]
        if fork:
            command.append("--fork")
        self._log = (folder / "storescp.log").open("wb")
        self.process = subprocess.Popen([*command, str(self.port)], stdout=self._log, stderr=self._log,
                                        env={**os.environ, "TCP_NODELAY": "1"})
        for _ in range(100):
            probe = subprocess.run([dcmtk_program("echoscu"), "-aec", AE_TITLE, "127.0.0.1", str(self.port)],
                                   capture_output=True, env={**os.environ, "TCP_NODELAY": "1"})
            if probe.returncode == 0:
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"storescp did not respond to a C-ECHO on port {self.port}; see {folder}/storescp.log")

    def clear(self) -> None:
        shutil.rmtree(self.received)
        self.received.mkdir()

    def count(self) -> int:
        return sum(1 for _ in self.received.iterdir())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()
        self._log.close()


def timed(command: list[str], cwd: Path | None = None) -> tuple[subprocess.CompletedProcess[str], float, float]:
    """Run ``command``; return it, its wall seconds and the CPU seconds of it and its children."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, "TCP_NODELAY": "1"})
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return result, seconds, cpu


def write_config(source: Path, target: Path, port: int, fields: dict[str, object]) -> None:
    """Copy ``source`` to ``target`` with every destination at ``port`` and ``fields`` added."""
    text = source.read_text()
    lines = "".join(f"{key} = {value!r}\n".replace("'", '"') for key, value in fields.items())
    for section in SECTIONS:
        head, found, rest = text.partition(section)
        if not found:
            continue
        rest = re.sub(r"^port = \d+", f"port = {port}", rest, count=1, flags=re.M)
        rest = re.sub(r'^ae_title = ".*"', f'ae_title = "{AE_TITLE}"', rest, count=1, flags=re.M)
        text = head + section + lines + rest
    target.write_text(text)


def audit_seconds(state: Path) -> float | None:
    with sqlite3.connect(state) as connection:
        first, last = connection.execute("SELECT MIN(started_at), MAX(finished_at) FROM audit").fetchone()
    if first is None:
        return None
    return (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()


def run_migrator(contender: str, archive: Path, work: Path, tree: Path, receiver: Receiver,
                 processes: int, fields: dict[str, object]) -> Measurement:
    run_dir = work / contender
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir()
    config = run_dir / "migrator.toml"
    write_config(archive / "migrator.toml", config, receiver.port, fields)
    text = re.sub(r"^processes = \d+", f"processes = {processes}", config.read_text(), flags=re.M)
    if "processes =" not in text:
        text = text.replace("[run]\n", f"[run]\nprocesses = {processes}\n")
    state_line = f'url = "sqlite:///{run_dir / "state.sqlite3"}"'
    text = re.sub(r'^url = "sqlite:///.*state\.sqlite3"', state_line, text, count=1, flags=re.M)
    config.write_text(text)
    planned = subprocess.run([sys.executable, "-m", "migrator", "plan", "--config", str(config)],
                             cwd=tree, capture_output=True, text=True)
    if planned.returncode != 0:
        raise RuntimeError(f"{contender}: migrator plan failed: {planned.stderr[-2000:]}")
    receiver.clear()
    receiver_before = process_cpu(receiver.process.pid)
    result, seconds, cpu = timed([sys.executable, "-m", "migrator", "start", "--config", str(config)], cwd=tree)
    if result.returncode != 0:
        raise RuntimeError(f"{contender}: migrator start exited with {result.returncode}: {result.stderr[-2000:]}")
    images = receiver.count()
    return Measurement(contender, images, seconds, audit_seconds(run_dir / "state.sqlite3"), cpu,
                       process_cpu(receiver.process.pid) - receiver_before)


def run_storescu(archive: Path, receiver: Receiver) -> Measurement:
    receiver.clear()
    receiver_before = process_cpu(receiver.process.pid)
    result, seconds, cpu = timed([dcmtk_program("storescu"), "-aec", AE_TITLE, "-xv", "+sd", "+r", "127.0.0.1",
                                  str(receiver.port), str(archive / "roots")])
    if result.returncode != 0:
        raise RuntimeError(f"storescu exited with {result.returncode}: {result.stderr[-2000:]}")
    return Measurement("storescu", receiver.count(), seconds, None, cpu,
                       process_cpu(receiver.process.pid) - receiver_before)


def report(measurements: list[Measurement]) -> None:
    for item in measurements:
        steady = f"{item.audit_rate:7.0f}" if item.audit_rate else "      -"
        print(f"{item.contender:12} {item.images:6d} images {item.rate:7.0f}/s  between audit rows "
              f"{steady}/s  sender {1000 * item.sender_cpu / item.images:5.2f} ms CPU/image  "
              f"receiver {1000 * item.receiver_cpu / item.images:5.2f} ms CPU/image", flush=True)


def summarize(measurements: list[Measurement]) -> None:
    names = list(dict.fromkeys(item.contender for item in measurements))
    medians = {name: statistics.median(item.rate for item in measurements if item.contender == name)
               for name in names}
    anchor = medians.get("storescu")
    print("\nmedian per contender:")
    for name in names:
        mine = [item for item in measurements if item.contender == name]
        cpu = statistics.median(1000 * item.sender_cpu / item.images for item in mine)
        steady = [rate for item in mine if (rate := item.audit_rate)]
        ratio = f"{medians[name] / anchor:5.2f} of storescu" if anchor else ""
        steady_text = f"{statistics.median(steady):6.0f}/s between audit rows" if steady else ""
        print(f"  {name:12} {medians[name]:6.0f} images/s  {ratio}  {steady_text}  "
              f"sender {cpu:5.2f} ms CPU/image")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archive", type=Path, help="A folder written by 'python -m loadtest generate'.")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds of every contender.")
    parser.add_argument("--processes", type=int, default=1, help="run.processes of the migrator runs.")
    parser.add_argument("--baseline-tree", type=Path,
                        help="An older checkout to measure as 'baseline' (its 'migrator start').")
    parser.add_argument("--only", default="storescu,baseline,pynetdicom,dcmsend",
                        help="Comma-separated contenders to run.")
    parser.add_argument("--pdu", type=int, help="storescp's --max-pdu in bytes (DCMTK's default: 16384).")
    parser.add_argument("--commit-seconds", type=float, default=0,
                        help="audit_commit_seconds of the destinations in this checkout's runs.")
    parser.add_argument("--parallel", type=int, default=1,
                        help="parallel_associations of the destinations in this checkout's runs.")
    parser.add_argument("--fork", action="store_true",
                        help="Run storescp with --fork: a child process per association.")
    options = parser.parse_args()

    for program in ("storescp", "storescu", "echoscu", "dcmsend"):
        dcmtk_program(program)
    only = options.only.split(",")
    if options.baseline_tree is None and "baseline" in only:
        only.remove("baseline")

    measurements: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="send-engines-") as folder:
        work = Path(folder)
        receiver = Receiver(work / "receiver", options.pdu, options.fork)
        try:
            for _ in range(options.rounds):
                for contender in only:
                    if contender == "storescu":
                        item = run_storescu(options.archive, receiver)
                    elif contender == "baseline":
                        item = run_migrator(contender, options.archive, work, options.baseline_tree,
                                            receiver, options.processes, {})
                    else:
                        fields = {"engine": contender, "audit_commit_seconds": options.commit_seconds,
                                  "parallel_associations": options.parallel}
                        item = run_migrator(contender, options.archive, work, CHECKOUT, receiver,
                                            options.processes, fields)
                    report([item])
                    measurements.append(item)
        finally:
            receiver.stop()

    summarize(measurements)


if __name__ == "__main__":
    main()
