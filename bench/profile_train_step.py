"""Where a train step spends its time: ours (XLA:CPU thunks) next to the reference (torch ops).

  python bench/profile_train_step.py --threads 2 --out bench/results/profile_train_step_<date>.md
  python bench/profile_train_step.py --skip_ref --set model.upsample=transpose

The paper's FashionMNIST HVAE train step (forward, ELBO with free bits and KL warm-up,
backward, Adam) at batch 128 on random binarized inputs, both sides pinned to the same cores
and run one after the other, as bench/compare_reference.py does (the same reference setup).

Ours: `jax.profiler` traces --iters compiled steps. XLA:CPU runs each HLO thunk (a fusion, a
convolution, a copy) asynchronously, logging a start event and an "end: <name>" event; a
thunk's time is end minus start. Thunks are classed from the optimized HLO: the convolution
inside (its kernel window, channels, spatial size and whether it is a forward conv, an input
gradient or a weight gradient, from its dimension labels), else the JAX source function the
fusion's root came from (weight norm, subpixel upsampling, optimizer), else its ops
(layout: transposes and copies only; reduction; elementwise).

Reference: `torch.profiler` over --iters steps of ref_torch_bench.py's train step; the self
CPU time of every aten op, classed by name (convolutions and their backward, transposed
convs, weight norm, Adam's foreach ops, reductions, elementwise).

Both tables give ms per step by class and the share of the summed op time; a thunk that runs
while another waits is counted in full, so the shares are what to read, with the measured
step time beside them.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.compare_reference import (REPO, add_reference_args, emit, load_ref_bench,  # pylint: disable=wrong-import-position
                                     log, reference_env, run_child)

# HLO instruction line: `%name = type opcode(operands), attrs, metadata={...}`.
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+)\s+([\w\-]+)\(")
_COMP = re.compile(r"^%?([\w.\-]+)\s.*\{\s*$")


def hlo_index(text: str) -> tuple[dict, dict, dict]:
  """(instruction name -> its line, computation name -> [(opcode, line)] in it,
  stack frame id -> '[file:function, ...]' innermost first) of an optimized HLO module."""
  instrs, comps, current, tables, section = {}, {}, None, collections.defaultdict(dict), None
  for line in text.splitlines():
    if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
      section = line
      continue
    if section and re.match(r"^\d+ ", line):
      num, rest = line.split(" ", 1)
      tables[section][int(num)] = rest
      continue
    section = None
    if not line.startswith(" ") and line.rstrip().endswith("{"):
      m = _COMP.match(line.replace("ENTRY ", ""))
      current = m.group(1) if m else None
      comps.setdefault(current, [])
      continue
    m = _INSTR.match(line)
    if m:
      instrs[m.group(1)] = line
      if current is not None:
        comps[current].append((m.group(3), line))
  field = lambda entry, key: int(re.search(key + r"=(\d+)", entry).group(1))

  def chain(frame: int) -> list[str]:
    out, seen = [], set()
    while frame in tables["StackFrames"] and frame not in seen:
      seen.add(frame)
      loc = tables["FileLocations"][field(tables["StackFrames"][frame], "file_location_id")]
      out.append(tables["FileNames"].get(field(loc, "file_name_id"), "").strip('"') + ":" +
                 tables["FunctionNames"].get(field(loc, "function_name_id"), "").strip('"'))
      parent = field(tables["StackFrames"][frame], "parent_frame_id")
      frame = parent if parent != frame else -1
    return out

  return instrs, comps, {f: chain(f) for f in tables["StackFrames"]}


def _conv_label(name: str, line: str, batch: int) -> str:
  """'conv 5x5 @28 fwd' from an HLO convolution (XLA:CPU writes every conv as
  b01f_01io->b01f, with transposes around it where the gradient needs other layouts).

  A weight gradient outputs the kernel (first dimension not the batch) and has the image as
  its window; an input gradient is an autodiff-made conv ('convolution*'), lhs-dilated for a
  strided forward conv; the forward convs keep jax's name (conv_general_dilated*).
  """
  window = re.search(r"window=\{size=(\d+)x(\d+)", line)
  out = re.search(r"= f32\[([\d,]+)\]", line)
  dims = [int(d) for d in out.group(1).split(",")] if out else []
  size = f"{window.group(1)}x{window.group(2)}" if window else "1x1"
  if len(dims) == 4 and dims[0] != batch:
    return f"conv {dims[1]}x{dims[2]} @{window.group(1) if window else '?'} weight grad"
  kind = "fwd" if name.startswith("conv_general_dilated") else "input grad"
  return f"conv {size} @{dims[1] if len(dims) == 4 else '?'} {kind}"


# (needle in a 'file:function' stack frame, class), tried innermost frame first.
_SOURCE_CLASSES = (("_subpixel_conv_transpose", "subpixel upsampling (phases, depth-to-space)"),
                   ("_weight_norm", "weight norm (direction, scale, bias)"),
                   ("/optax/", "optimizer (Adam, clipping)"),
                   ("jax/_src/random.py", "random numbers (threefry)"),
                   ("jax/_src/prng.py", "random numbers (threefry)"))


def classify(name: str, index: tuple[dict, dict, dict], batch: int) -> str:
  """The class of one thunk, from its HLO instruction (and fused computation)."""
  instrs, comps, frames = index
  line = instrs.get(name, "")
  called = re.search(r"calls=%?([\w.\-]+)", line)
  body = comps.get(called.group(1), []) if called else []
  ops = [op for op, _ in body] or ([m.group(3)] if (m := _INSTR.match(line)) else [])
  for op, l in body + ([("convolution", line)] if " convolution(" in line else []):
    if op == "convolution":
      return _conv_label(name, l, batch)
  frame = re.search(r"stack_frame_id=(\d+)", line)
  for where in frames.get(int(frame.group(1)), []) if frame else []:
    for needle, cls in _SOURCE_CLASSES:
      if needle in where:
        return cls
  real = [op for op in ops if op not in ("parameter", "constant", "bitcast", "tuple",
                                         "get-tuple-element", "broadcast", "reshape")]
  if not real:
    return "layout (bitcast, reshape)" if ops else "other (no HLO match)"
  if all(op in ("transpose", "copy", "slice", "concatenate", "pad", "dynamic-slice",
                "dynamic-update-slice") for op in real):
    return "layout (transpose, copy, pad, slice)"
  if any(op.startswith("reduce") for op in real):
    return "reductions (with their elementwise inputs)"
  return "elementwise"


def thunk_times(trace_dir: str) -> dict:
  """Summed start-to-end time (us) per thunk name over a jax.profiler trace."""
  path = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)[0]
  with gzip.open(path) as f:
    events = json.load(f)["traceEvents"]
  events = sorted((e for e in events if e.get("ph") == "X"), key=lambda e: e["ts"])
  started, total = {}, collections.Counter()
  for e in events:
    name = e["name"]
    if name.startswith("end: "):
      base = name[5:]
      if started.get(base):
        total[base] += e["ts"] - started[base].pop(0)
    elif not any(name.startswith(p) for p in ("Thunk", "Threadpool", "PjitFunction", "$",
                                              "CommonPjRt", "Handle", "Allocate", "Parse",
                                              "Python", "Wait")):
      started.setdefault(name, []).append(e["ts"])
  return total


def ours_main(a):
  import jax  # pylint: disable=import-outside-toplevel
  from bench.train_step import load_config, run_steps, setup  # pylint: disable=import-outside-toplevel
  from hvae_jax import training  # pylint: disable=import-outside-toplevel

  step, state, xb, key = setup(load_config(os.path.join(REPO, a.config), a.set), a.batch)
  compiled = training.compile_train_step(step, state, xb, key)
  index = hlo_index(compiled.as_text())
  state, _ = run_steps(compiled, state, xb, key, 2)
  state, seconds = run_steps(compiled, state, xb, key, a.iters)
  step_ms = seconds / a.iters * 1e3
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d, create_perfetto_trace=True)
    run_steps(compiled, state, xb, key, a.iters)
    jax.profiler.stop_trace()
    times = thunk_times(d)
  by_class = collections.Counter()
  for name, us in times.items():
    by_class[classify(name, index, a.batch)] += us / a.iters / 1e3
  emit(dict(side="ours", step_ms=step_ms, ms=dict(by_class), n_thunks=len(times),
            top=sorted(((n, us / a.iters / 1e3, classify(n, index, a.batch))
                        for n, us in times.items()), key=lambda t: -t[1])[:25]))


_TORCH_CLASSES = (("convolution_backward", "conv backward (input + weight grads)"),
                  ("slow_conv_transpose", "transposed conv"),
                  ("conv_transpose", "transposed conv"),
                  ("mkldnn_convolution", "conv forward"),
                  ("_convolution", "conv forward"),
                  ("weight_norm", "weight norm (direction, scale, bias)"),
                  ("norm", "weight norm (direction, scale, bias)"),
                  ("_foreach", "optimizer (Adam)"),
                  ("adam", "optimizer (Adam)"),
                  ("sum", "reductions"), ("mean", "reductions"), ("logsumexp", "reductions"),
                  ("copy_", "layout (copy, cat, pad, slice)"), ("cat", "layout (copy, cat, pad, slice)"),
                  ("pad", "layout (copy, cat, pad, slice)"), ("slice", "layout (copy, cat, pad, slice)"),
                  ("contiguous", "layout (copy, cat, pad, slice)"))


def ref_main(a):
  rb = load_ref_bench(a.ref_bench)
  torch = rb.torch
  torch.set_num_threads(a.threads)
  rb.oodd.utils.set_seed(1)
  model, _ = rb.build_model("fmnist")
  gen = torch.Generator().manual_seed(1)
  # ref_torch_bench.bench_train times (warmup, iters) steps; run it once unprofiled for the
  # step time, then under the profiler.
  r = rb.bench_train(model, "fmnist", a.batch, 2, a.iters, gen)
  from torch.profiler import ProfilerActivity, profile  # pylint: disable=import-outside-toplevel
  with profile(activities=[ProfilerActivity.CPU]) as prof:
    rb.bench_train(model, "fmnist", a.batch, 0, a.iters, gen)
  by_class, top = collections.Counter(), []
  calls = a.iters + 1  # bench_train runs one extra step for its last loss
  for ev in prof.key_averages():
    name = ev.key
    if not name.startswith("aten::"):
      continue
    ms = ev.self_cpu_time_total / 1e3 / calls
    cls = next((c for needle, c in _TORCH_CLASSES if needle in name), "elementwise")
    by_class[cls] += ms
    top.append((name, ms, cls))
  emit(dict(side="ref", step_ms=r["median_s"] * 1e3, ms=dict(by_class),
            top=sorted(top, key=lambda t: -t[1])[:25]))


def table(res: dict) -> str:
  total = sum(res["ms"].values())
  rows = [f"step {res['step_ms']:.0f} ms measured (batch {res.get('batch', '')}); summed op time "
          f"{total:.0f} ms", "", "| class | ms per step | share |", "|---|---|---|"]
  for cls, ms in sorted(res["ms"].items(), key=lambda kv: -kv[1]):
    rows.append(f"| {cls} | {ms:.1f} | {ms / total:.1%} |")
  rows += ["", "Largest single ops:", "", "| op | ms per step | class |", "|---|---|---|"]
  rows += [f"| `{n}` | {ms:.1f} | {c} |" for n, ms, c in res["top"][:15]]
  return "\n".join(rows)


def parent_main(a):
  cpus = sorted(os.sched_getaffinity(0))[:a.threads]
  base = [os.path.abspath(__file__), f"--threads={a.threads}", f"--batch={a.batch}",
          f"--iters={a.iters}", f"--config={a.config}", f"--ref_bench={a.ref_bench}"]
  if a.set:
    base += ["--set", *a.set]
  ours_env = dict(os.environ)
  ours_env.pop("JAX_COMPILATION_CACHE_DIR", None)
  out = [f"# Train step profile, batch {a.batch}, {a.iters} steps, {len(cpus)} cores {cpus}",
         f"command: python bench/profile_train_step.py {' '.join(sys.argv[1:])}", ""]
  ours = run_child([sys.executable, *base, "--_role=ours"], ours_env, cpus, "ours", 3.0)
  ours["batch"] = a.batch
  out += ["## Ours (XLA:CPU thunks)", "", table(ours), ""]
  if not a.skip_ref:
    ref = run_child([a.ref_python, *base, "--_role=ref"], reference_env(a, a.threads), cpus,
                    "reference", 3.0)
    ref["batch"] = a.batch
    out += ["## Reference (torch ops, self CPU time)", "", table(ref), ""]
  text = "\n".join(out)
  print(text)
  if a.out:
    with open(a.out, "w", encoding="utf-8") as f:
      f.write(text + "\n")


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--threads", type=int, default=2)
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--iters", type=int, default=5)
  ap.add_argument("--config", default="configs/fmnist_hvae.py")
  ap.add_argument("--set", nargs="*", default=[], help="config overrides key=value (ours)")
  ap.add_argument("--skip_ref", action="store_true")
  ap.add_argument("--out", default="")
  add_reference_args(ap)
  ap.add_argument("--_role", default="parent", choices=["parent", "ours", "ref"])
  a = ap.parse_args()
  {"parent": parent_main, "ours": ours_main, "ref": ref_main}[a._role](a)


if __name__ == "__main__":
  main()
