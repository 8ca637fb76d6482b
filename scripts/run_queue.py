"""Run a queue of psfl runs one after another, resumably (issue #9's study).

Each line of the queue file: ``NAME SEED METHOD [KEY=VALUE ...]``; blank lines and ``#``
comments are skipped. The file is re-read before each run, so lines may be added or
reordered while a queue works. Run NAME/seedSEED goes to ``OUT/NAME/seedSEED``: skipped when its
metrics already hold every round, resumed from its checkpoint when interrupted, started
otherwise. Several queue processes may share a file: a run is claimed by creating its
directory's ``.claim`` file first (one process per run).

    python scripts/run_queue.py QUEUE --config configs/psfl-study.toml \
        --data-dir ../shared/data --out results/psfl-study/runs --evaluators results/evaluators
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path


def rounds_done(run: Path) -> int:
    m = run / "metrics.jsonl"
    return sum(1 for line in m.read_text().splitlines() if line.strip()) if m.is_file() else 0


def jobs(queue: Path) -> list[tuple[str, str, str, str, list[str]]]:
    """(key, name, seed, method, overrides) per queue line, in file order."""
    out = []
    for line in queue.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, seed, method, *sets = shlex.split(line)
            out.append((f"{name}/{seed}", name, seed, method, sets))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("queue")
    ap.add_argument("--config", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=0, help="expected rounds (default: from the config)")
    ap.add_argument("--evaluators", help="folder of trained evaluators (.pt + .json, as in psfl's cache) to put "
                                         "into the evaluator cache first, where the cache lacks them, so that "
                                         "every machine trains against and scores with the same classifiers")
    args = ap.parse_args()
    if args.evaluators:
        from psfl.utils.errors import PsflError
        from psfl.evaluate.evaluator import seed_cache

        try:
            for name in seed_cache(args.evaluators):
                print(f"evaluator cache: {name} from {args.evaluators}", flush=True)
        except PsflError as e:  # another machine's weights under the same name
            raise SystemExit(str(e)) from None
    psfl = [sys.executable, "-m", "psfl"]
    if not args.rounds:
        import tomllib

        args.rounds = tomllib.loads(Path(args.config).read_text())["rounds"]
    tried: set[str] = set()
    while True:  # the file is re-read before every run: edit it while the queue works
        job = next((j for j in jobs(Path(args.queue)) if j[0] not in tried), None)
        if job is None:
            break
        key, name, seed, method, sets = job
        tried.add(key)
        run = Path(args.out) / name / f"seed{seed}"
        if rounds_done(run) >= args.rounds:
            continue
        run.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(run / ".claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
        except FileExistsError:
            continue  # another queue process has it
        try:
            if (run / "checkpoint.pt").is_file():
                cmd = psfl + ["run", "--resume", str(run), "--no-progress"]
            else:
                cmd = psfl + ["run", "--config", args.config, "--data-dir", args.data_dir, "--out", str(run),
                              "--no-progress", "--set", f"method={method}", "--set", f"seed={seed}"]
                if rounds_done(run):  # a partial run whose checkpoint is gone (another machine): start again
                    cmd.append("--overwrite")
                for s in sets:
                    cmd += ["--set", s]
            print(" ".join(cmd), flush=True)
            (run / "command.txt").write_text(" ".join(shlex.quote(c) for c in cmd) + "\n")
            rc = subprocess.call(cmd, stdout=open(run / "log.txt", "a"), stderr=subprocess.STDOUT)
            print(f"{name} seed {seed}: rc={rc}", flush=True)
        finally:
            (run / ".claim").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
