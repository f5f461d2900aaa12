"""The S curve of LLR^{>1}_S from `bench/estimator_dump.py`'s per-sample bounds (numpy float64).

  python bench/estimator_curve.py --dump=$HOME/runs/estimator/fmnist_hvae \
      --plot=docs/estimator_curve.png --json=docs/results/estimator_curve.json

Estimators at S (each image's samples: main[:, s] = (L_s, L_s^{>1}) sharing z; lk, lk_mean
independent single-sample L^{>1} with skip_inference 'sample' / 'mean'; IW(v) = logsumexp(v)
- log S):
  paper         IW(L_{0..S-1}) - lk[0]           the paper's estimator, as evaluate.py runs it
  paper_shared  IW(L_{0..S-1}) - L^{>1}_0        its L^{>1} sample is the ELBO's first (CRN)
  both          IW(L_{0..S-1}) - IW(L^{>1}_{0..S-1})  both weighted, one sample set (evaluate.py)
  both_indep    IW(L_{0..S-1}) - IW(L^{>1}_{h..h+S-1})  both weighted, disjoint samples
                (h = s_max / 2, so S <= s_max / 2; what the reference's loop does)
  paper_mean    IW(L_{0..S-1}) - lk_mean[0]      the paper's estimator, skip_inference='mean'
Per S: AUROC (the first sample set, = evaluate.py's) +/- Hanley-McNeil SE; the mean AUROC over
up to `reps` disjoint replications (Monte Carlo noise averaged out); and the mean over images of
the per-image variance (over disjoint groups of S samples) of ELBO_S, L^{>1}_S and each score;
paired-bootstrap SEs of a few AUROC differences on the same images.
"""
import argparse
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=wrong-import-position
from scipy.special import logsumexp  # pylint: disable=wrong-import-position
from sklearn import metrics as skm  # pylint: disable=wrong-import-position

from hvae_jax import metrics  # pylint: disable=wrong-import-position

S_GRID = (1, 2, 5, 10, 25, 50, 100, 250)
NAMES = ("paper", "paper_shared", "both", "both_indep", "paper_mean")


def load(folder: str, n: int = -1, s_max: int = -1) -> dict[str, dict[str, np.ndarray]]:
  """{'in'|'out': {main [N, s_max, 2], lk [N, E], lk_mean [N, E]}} float64, the same number of
  complete blocks on both sides (at most `n` images each, at most `s_max` main samples)."""
  blocks = {t: sorted(glob.glob(os.path.join(folder, f"{t}_[0-9]*.npz"))) for t in ("in", "out")}
  nb = min(len(b) for b in blocks.values())
  out = {}
  for tag, files in blocks.items():
    parts = [np.load(f) for f in files[:nb]]
    out[tag] = {k: np.concatenate([p[k] for p in parts]).astype(np.float64)[:n if n > 0 else None]
                for k in ("main", "lk", "lk_mean")}
    if s_max > 0:
      out[tag]["main"] = out[tag]["main"][:, :s_max]
  return out


def iw(v: np.ndarray) -> np.ndarray:
  """log mean exp over the last axis."""
  return logsumexp(v, axis=-1) - np.log(v.shape[-1])


def groups(v: np.ndarray, s: int, start: int = 0, stop: int | None = None) -> np.ndarray:
  """`[N, G]` IW bounds of the disjoint groups of `s` samples of v `[N, samples]`[start:stop]."""
  v = v[:, start:stop]
  g = v.shape[1] // s
  return iw(v[:, :g * s].reshape(len(v), g, s))


def estimator_reps(d: dict[str, np.ndarray], s: int, reps: int) -> dict[str, np.ndarray]:
  """{name: [N, R]} each estimator's replications at S = s (R <= reps; column 0 = the first
  sample set). Estimators that need more samples than there are are left out."""
  main, lk, lk_mean = d["main"], d["lk"], d["lk_mean"]
  s_max = main.shape[1]
  elbo = groups(main[..., 0], s)  # [N, s_max // s]
  out = {}
  r = min(reps, elbo.shape[1], lk.shape[1])
  out["paper"] = elbo[:, :r] - lk[:, :r]
  out["paper_mean"] = elbo[:, :r] - lk_mean[:, :r]
  first_lk = main[:, :elbo.shape[1] * s:s, 1]  # the first L^{>1} sample of each group
  out["paper_shared"] = (elbo - first_lk)[:, :reps]
  out["both"] = (elbo - groups(main[..., 1], s))[:, :reps]
  half = s_max // 2
  if s <= half:
    e, l = groups(main[..., 0], s, 0, half), groups(main[..., 1], s, half)
    g = min(e.shape[1], l.shape[1], reps)
    out["both_indep"] = e[:, :g] - l[:, :g]
  return out


def variances(d: dict[str, np.ndarray], s: int) -> dict[str, float]:
  """Mean over images of the per-image variance (nats^2) across disjoint groups of s samples:
  ELBO_S, L^{>1}_S (both weighted), the single-sample L^{>1} ('sample', 'mean') and the scores
  'paper' (= var ELBO_S + var L^{>1}_1, independent) and 'both' (shared samples)."""
  main = d["main"]
  if main.shape[1] // s < 2:
    return {}
  var = lambda a: float(np.mean(np.var(a, axis=1, ddof=1)))
  e, l = groups(main[..., 0], s), groups(main[..., 1], s)
  v_l1 = var(main[..., 1])
  return {"elbo_S": var(e), "lk_S": var(l), "lk_1": v_l1, "lk_1_mean": var(d["lk_mean"]),
          "paper": var(e) + v_l1, "both": var(e - l)}


def curve(data: dict, s_grid=S_GRID, reps: int = 8) -> list[dict]:
  """One row per S: {'S', name: {auroc, se, auroc_mean, reps}, 'var_in', 'var_out'}."""
  rows = []
  for s in s_grid:
    if s > data["in"]["main"].shape[1]:
      break
    r_in, r_out = estimator_reps(data["in"], s, reps), estimator_reps(data["out"], s, reps)
    row = {"S": s}
    for name in NAMES:
      if name not in r_in:
        continue
      a, b = r_in[name], r_out[name]
      m = metrics.ood_metrics(a[:, 0], b[:, 0])
      per_rep = [metrics.ood_metrics(a[:, j], b[:, j])["auroc"] for j in range(a.shape[1])]
      row[name] = {"auroc": m["auroc"], "se": m["auroc_se"], "auroc_mean": float(np.mean(per_rep)),
                   "reps": a.shape[1]}
    row["var_in"], row["var_out"] = variances(data["in"], s), variances(data["out"], s)
    rows.append(row)
  return rows


def paired_delta(data: dict, a: tuple[str, int], b: tuple[str, int], n_boot: int = 500,
                 seed: int = 0) -> tuple[float, float]:
  """AUROC of estimator b[0] at S = b[1] minus a[0]'s at S = a[1] (first sample sets), and its
  standard error from a paired bootstrap over the images (both scored on the same resample)."""
  sc = {side: [estimator_reps(data[side], s, 1)[name][:, 0] for name, s in (a, b)]
        for side in ("in", "out")}
  auc = lambda i, o, j: skm.roc_auc_score(
      np.r_[np.zeros(len(i)), np.ones(len(o))], np.r_[sc["in"][j][i], sc["out"][j][o]])
  n_in, n_out = len(sc["in"][0]), len(sc["out"][0])
  full_i, full_o = np.arange(n_in), np.arange(n_out)
  delta = auc(full_i, full_o, 1) - auc(full_i, full_o, 0)
  rng = np.random.default_rng(seed)
  boots = []
  for _ in range(n_boot):
    i, o = rng.integers(0, n_in, n_in), rng.integers(0, n_out, n_out)
    boots.append(auc(i, o, 1) - auc(i, o, 0))
  return float(delta), float(np.std(boots, ddof=1))


def table(rows: list[dict]) -> str:
  """Markdown: AUROC +/- SE (mean over replications) per estimator and S; then variances."""
  head = "| S | " + " | ".join(NAMES) + " |\n|---|" + "---|" * len(NAMES) + "\n"
  cell = lambda v: (f"{v['auroc']:.3f} ± {v['se']:.3f} ({v['auroc_mean']:.3f}, {v['reps']})"
                    if v else "")
  body = "".join(f"| {r['S']} | " + " | ".join(cell(r.get(n)) for n in NAMES) + " |\n"
                 for r in rows)
  keys = ("elbo_S", "lk_S", "lk_1", "lk_1_mean", "paper", "both")
  vhead = ("\n| S | " + " | ".join(f"{k} in / out" for k in keys) + " |\n|---|"
           + "---|" * len(keys) + "\n")
  vbody = "".join(f"| {r['S']} | " + " | ".join(
      f"{r['var_in'][k]:.2f} / {r['var_out'][k]:.2f}" if k in r["var_in"] else ""
      for k in keys) + " |\n" for r in rows)
  return head + body + vhead + vbody


def plot(rows: list[dict], path: str, title: str) -> None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(11, 4.2), dpi=100)
  FigureCanvasAgg(fig)
  ax, bx = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
  for name in NAMES:
    pts = [(r["S"], r[name]) for r in rows if name in r]
    s = np.array([p[0] for p in pts])
    ax.errorbar(s, [p[1]["auroc"] for p in pts], [p[1]["se"] for p in pts], capsize=3,
                marker="o", label=name)
  ax.axhline(0.984, color="k", ls="--", lw=1, label="paper LLR^{>1}_{250}")
  ax.set(xscale="log", xlabel="S (importance samples of the ELBO)", ylabel="AUROC", title=title)
  ax.legend(fontsize=8)
  for key, label in (("elbo_S", "ELBO_S"), ("lk_S", "L^{>1}_S"), ("paper", "score 'paper'"),
                     ("both", "score 'both'")):
    for side, ls in (("in", "-"), ("out", ":")):
      pts = [(r["S"], r[f"var_{side}"][key]) for r in rows if key in r[f"var_{side}"]]
      bx.plot([p[0] for p in pts], [p[1] for p in pts], ls, marker=".", label=f"{label} {side}")
  bx.set(xscale="log", yscale="log", xlabel="S", ylabel="mean per-image variance (nats²)",
         title="per-image Monte Carlo variance (in: solid, out: dotted)")
  bx.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--dump", required=True)
  ap.add_argument("--n", type=int, default=-1, help="images per side (default: all dumped)")
  ap.add_argument("--s_max", type=int, default=-1, help="use only the first s_max samples")
  ap.add_argument("--reps", type=int, default=8)
  ap.add_argument("--plot", default="")
  ap.add_argument("--json", default="")
  ap.add_argument("--title", default="FashionMNIST -> MNIST, LLR^{>1}_S")
  a = ap.parse_args()
  data = load(a.dump, a.n, a.s_max)
  n_in, n_out = len(data["in"]["main"]), len(data["out"]["main"])
  rows = curve(data, reps=a.reps)
  print(f"{a.dump}: {n_in} vs {n_out} images, s_max {data['in']['main'].shape[1]}")
  print(table(rows))
  s_top = rows[-1]["S"]
  pairs = ((("paper", 1), ("paper", s_top)), (("paper", s_top), ("paper_mean", s_top)),
           (("paper", s_top), ("both", s_top)), (("paper", 1), ("paper_shared", 1)))
  deltas = {f"{b[0]}@{b[1]} - {a_[0]}@{a_[1]}": paired_delta(data, a_, b) for a_, b in pairs}
  for k, (dl, se) in deltas.items():
    print(f"paired: AUROC {k} = {dl:+.4f} +/- {se:.4f}")
  if a.json:
    with open(a.json, "w") as f:
      json.dump({"dump": a.dump, "n_in": n_in, "n_out": n_out, "rows": rows,
                 "paired_deltas": deltas}, f, indent=1)
  if a.plot:
    plot(rows, a.plot, f"{a.title} ({n_in} vs {n_out})")


if __name__ == "__main__":
  main()
