"""Time the data-dependent init (`training.init_state`'s parameters) four ways.

  python bench/init_compile.py --config=configs/cifar_biva.py [--batch=256] [--ways jit two o0 eager]

`jit`: `model.init` as one XLA program (compile + run); `two`: `layers.init_params`, what
the training code runs: the kernels drawn in a tiny program of their own, then the data-dependent
pass compiled with them as inputs; `o0`: the one program compiled with XLA's backend
optimisation level 0 (the init runs once, so only compile time counts); `eager`: op by op,
no program. Each way runs in its own process (no shared caches) on random inputs of the
config's image shape, `--batch` of them (training uses 256), and reports seconds and how far
its parameters are from the first way's (`two` draws other kernels than `model.init`, from the
same distribution, so it differs from the others).
"""
import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_way(config_path: str, batch: int, way: str, out: str) -> None:
  sys.path.insert(0, REPO)
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from bench.train_step import load_config  # pylint: disable=import-outside-toplevel
  from hvae_jax import data, layers, preprocess  # pylint: disable=import-outside-toplevel
  from hvae_jax.models import build_model  # pylint: disable=import-outside-toplevel

  config = load_config(config_path, [])
  spec = data.get_spec(config.data.name)
  model = build_model(config, spec.image_shape)
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (batch, *spec.image_shape), dtype=np.uint8)
  x = preprocess.eval_input(x, spec.kind, 0)
  k_params, k_sample = jax.random.split(jax.random.key(config.seed))
  t0 = time.time()
  if way == "eager":
    params = model.init(k_params, x, k_sample)["params"]
  elif way == "two":
    params = layers.init_params(model, k_params, x, k_sample)
  else:
    options = {"xla_backend_optimization_level": 0} if way == "o0" else None
    params = jax.jit(model.init).lower(k_params, x, k_sample).compile(options)(
        k_params, x, k_sample)["params"]
  params = jax.block_until_ready(params)
  seconds = time.time() - t0
  np.savez(out, *[np.asarray(v) for v in jax.tree_util.tree_leaves(params)])
  print(json.dumps({"way": way, "seconds": round(seconds, 1)}))


def main() -> None:
  import numpy as np  # pylint: disable=import-outside-toplevel
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--config", required=True)
  ap.add_argument("--batch", type=int, default=256)
  ap.add_argument("--ways", nargs="+", default=["jit", "two", "o0", "eager"],
                  choices=["jit", "two", "o0", "eager"])
  ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one way, write here
  a = ap.parse_args()
  if a.one:
    one_way(a.config, a.batch, a.ways[0], a.one)
    return
  results, leaves = [], {}
  for way in a.ways:
    out = f"/tmp/init_compile_{os.getpid()}_{way}.npz"
    line = subprocess.run([sys.executable, __file__, f"--config={a.config}", f"--batch={a.batch}",
                           "--ways", way, "--one", out], check=True, capture_output=True,
                          text=True).stdout.strip().splitlines()[-1]
    results.append(json.loads(line))
    with np.load(out) as f:
      leaves[way] = [f[k] for k in sorted(f.files, key=lambda s: int(s.split("_")[1]))]
    os.remove(out)
  base = leaves[a.ways[0]]
  for r in results:
    r["max_abs_diff_vs_" + a.ways[0]] = float(max(np.max(np.abs(p - q)) for p, q in
                                                  zip(leaves[r["way"]], base)))
    print(json.dumps(r))


if __name__ == "__main__":
  main()
