"""A bench (default: the train step) on several commits, interleaved on one machine: find a regression.

  python bench/compare_commits.py df3ecea 37fecbd HEAD --rounds 3 --out /tmp/bisect.txt
  python bench/compare_commits.py main .      # before a change: main against the work tree

Each commit is checked out once into a git worktree (under --worktrees) and its own
bench/train_step.py runs there, so a commit is measured with the code and the XLA defaults it
had; `.` is the work tree as it is (uncommitted changes included). Rounds interleave the commits (A B C A B C ...) so a change in the machine's load hits
every commit alike; the summary gives min and median examples/s per commit and each one's
ratio to the first. A measurement, not a test: CPU models and load vary between machines.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# bench/train_step.py's figure, or compare_reference.py's (`--bench` below).
RATE = re.compile(r"examples_per_s=([0-9.]+)|train batch \d+: ([0-9.]+) ex/s")


def worktree(commit: str, base: str) -> str:
  """A worktree of `commit` under `base` (made once, reused by later runs); `.` is ROOT."""
  if commit == ".":
    return ROOT
  sha = subprocess.check_output(["git", "-C", ROOT, "rev-parse", "--short", commit],
                                text=True).strip()
  path = os.path.join(base, sha)
  if not os.path.isdir(path):
    subprocess.check_call(["git", "-C", ROOT, "worktree", "add", "--detach", "-f", path, sha],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  return path


def measure(path: str, bench: list[str]) -> float:
  """One run of the bench command `bench` in `path`: its steady-state examples/s."""
  env = {**os.environ, "PYTHONPATH": path, "HVAE_DATA_DIR": os.environ.get(
      "HVAE_DATA_DIR", os.path.join(os.path.dirname(ROOT), "shared", "data"))}
  out = subprocess.run([sys.executable, *bench], cwd=path, env=env, capture_output=True,
                       text=True, check=False)
  m = RATE.search(out.stdout + out.stderr)
  if not m:
    raise SystemExit(f"{bench[0]} failed in {path}:\n{out.stderr[-2000:]}")
  return float(m.group(1) or m.group(2))


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("commits", nargs="+", help="commits to compare; the first is the baseline")
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--worktrees", default="/tmp/hvae_bisect")
  ap.add_argument("--out", default="", help="also append the log to this file")
  ap.add_argument("--bench", default="bench/train_step.py --config=configs/fmnist_hvae.py "
                  "--batch=128 --steps=5", help="the bench and its arguments, run in each commit")
  a = ap.parse_args()
  paths = {c: worktree(c, a.worktrees) for c in a.commits}
  rates: dict[str, list[float]] = {c: [] for c in a.commits}

  def log(line: str) -> None:
    print(line, flush=True)
    if a.out:
      with open(a.out, "a", encoding="utf-8") as f:
        f.write(line + "\n")

  log(f"# {' '.join(sys.argv)}  ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores)")
  for r in range(a.rounds):
    for c in a.commits:
      rates[c].append(measure(paths[c], a.bench.split()))
      log(f"round {r} {c:>10}: {rates[c][-1]:.1f} ex/s")
  base = statistics.median(rates[a.commits[0]])
  for c in a.commits:
    med = statistics.median(rates[c])
    log(f"{c:>10}: min {min(rates[c]):.1f}  median {med:.1f} ex/s  ratio {med / base:.3f}")


if __name__ == "__main__":
  main()
