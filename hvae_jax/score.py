"""Score image files as in- or out-of-distribution with a trained model.

  python -m hvae_jax.score --checkpoint=pretrained/fmnist_hvae_small shirt.png photos/ 'more/*.jpg'

PATHs are image files, folders (`folder:PATH` too, the data-set spelling of train.py and
evaluate.py; searched recursively for PNG/JPEG/BMP/TIFF/WebP files in any case) or shell-style
globs (`**` spans folders). Each image is converted to the model's input (greyscale or RGB,
resized to its H x W: see --resize), with one note per kind of conversion. Prints a table
(or, with --json, the JSON report) and writes scores.csv and scores.json to --output: every
score per file (ELBO, L^{>k}, LLR^{>k}, in nats and bits/dim), the verdict at the threshold
evaluate.py calibrated, the threshold itself and the model. --csv=FILE also writes the
per-image CSV evaluate.py writes for each set (`<set>_scores.csv`).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import TYPE_CHECKING, Optional, Sequence

from tqdm import tqdm

from hvae_jax import checks, cli, stat_names
from hvae_jax.data import image_files

if TYPE_CHECKING:  # pragma: no cover
  from hvae_jax.trained import TrainedModel

_TABLE_ROWS = 50  # rows printed; scores.csv holds them all
_LIGHT_BORDER = 127.5  # mean edge pixel above which an image looks dark-on-light


class _Parser(argparse.ArgumentParser):
  """Reports a bad flag in one line. argparse rather than absl: `main(argv)` is called
  repeatedly in one process (tests, notebooks) and absl's flags are process-wide."""

  def error(self, message: str):
    raise SystemExit(f"error: {message}. See --help.")


def _at_least(lo: int):
  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      value = lo - 1
    if value < lo:
      raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, got {text!r}")
    return value
  return parse


def _ks(text: str) -> list[int]:
  return [_at_least(1)(t) for t in text.split(",")]


def parser() -> argparse.ArgumentParser:
  p = _Parser(prog="python -m hvae_jax.score", allow_abbrev=False,
              description=__doc__.split("\n\n")[0])
  p.add_argument("paths", nargs="+", metavar="PATH",
                 help="image files, folders or folder:FOLDER (searched recursively for "
                 f"{'/'.join(image_files.EXTENSIONS)}) or globs")
  p.add_argument("--checkpoint", required=True, help="a training workdir, a step directory in "
                 "its checkpoints/, or a shipped model such as pretrained/fmnist_hvae_small")
  p.add_argument("--output", help="folder for scores.csv and scores.json (default: "
                 "<workdir>/score for a training workdir, else workdirs/<checkpoint name>/score "
                 "in the current folder)")
  p.add_argument("--k", type=_ks, help="comma-separated k of L^{>k} / LLR^{>k} to score "
                 "(default: the threshold's k, which is always scored; without one, every k)")
  p.add_argument("--iw_samples", type=_at_least(1), help="importance samples of the ELBO, "
                 "the paper's LLR^{>k}_S; L^{>k} keeps the threshold's (default: those the "
                 "threshold was calibrated with)")
  p.add_argument("--batch_size", type=_at_least(1), help="images per batch (default: the "
                 "config's eval.batch_size)")
  p.add_argument("--seed", type=_at_least(0), help="seed of the posterior samples (default: the "
                 "threshold's, else 0)")
  p.add_argument("--resize", choices=sorted(image_files.RESIZE), default="pad",
                 help="images of another size: 'pad' fits the longer side and pads with black "
                 "(how FashionMNIST/MNIST were made), 'crop' fills and centre-crops, 'stretch' "
                 "ignores the aspect ratio; all use a Lanczos filter")
  p.add_argument("--invert", action="store_true", help="invert the images (x -> 255 - x), "
                 "e.g. dark objects on a light background for a FashionMNIST model")
  p.add_argument("--skip_bad", action="store_true", help="skip files that cannot be decoded "
                 "as images, with a note, instead of stopping")
  p.add_argument("--csv", help="also write every file's scores, verdict and what drove it to "
                 "this CSV file, in the format of evaluate.py's <set>_scores.csv")
  p.add_argument("--json", action="store_true", help="print the JSON report (as scores.json) "
                 "instead of the table, for programs")
  p.add_argument("--verbose", action="store_true", help="show the traceback of an error")
  return p


def _note(message: str) -> None:
  print(f"note: {message}", file=sys.stderr)


def _samples_text(samples: dict) -> str:
  elbo, lk = samples["iw_samples"], samples["iw_samples_lk"]
  if elbo == lk:
    return f"{elbo} importance sample{'s' * (elbo > 1)}"
  return f"{elbo} (ELBO) and {lk} (L^{{>k}}) importance samples"


def _read(files: Sequence[str], args: argparse.Namespace, image_shape: Sequence[int],
          progress: bool) -> tuple[list, list[dict]]:
  """The decoded images as (file, image_files.Converted), and the files skipped with why."""
  done, skipped = [], []
  for f in tqdm(files, desc="read", unit="img", disable=not progress, dynamic_ncols=True):
    try:
      done.append((f, image_files.load_image(f, image_shape, args.resize, args.invert)))
    except image_files.ImageFileError as e:
      if not args.skip_bad:
        raise ValueError(f"{e}; remove it from the paths or pass --skip_bad to skip such "
                         "files") from None
      skipped.append({"file": f, "error": str(e)})
  if skipped:
    _note(f"skipped {len(skipped)} file{'s' * (len(skipped) > 1)} that could not be decoded "
          f"(--skip_bad): {image_files.examples([s['file'] for s in skipped])}")
  if not done:
    raise ValueError(f"none of the {len(files)} files could be decoded as an image")
  return done, skipped


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  """A plain-text table: file and verdict left-aligned, the numbers between right-aligned."""
  widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
  fmt = lambda r: "  ".join(c.ljust(w) if i in (0, len(r) - 1) else c.rjust(w)
                            for i, (c, w) in enumerate(zip(r, widths)))
  return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def _short(path: str, width: int = 48) -> str:
  return path if len(path) <= width else "..." + path[-(width - 3):]


def _settings(trained: TrainedModel, args: argparse.Namespace) -> dict:
  """`trained.score`'s ks, samples and seed: the threshold's (its detector reads every k it
  was fitted on) plus any --k, unless the flags say otherwise."""
  th = trained.threshold
  if not th:  # every k unless --k picks some
    return {"ks": tuple(sorted(trained.check_ks(args.k))), "seed": args.seed or 0,
            "iw_samples": args.iw_samples or trained.config.eval.iw_samples_elbo,
            "iw_samples_lk": trained.config.eval.iw_samples_lk}
  out = th.score_settings()
  out["ks"] = tuple(sorted(set(trained.check_ks(args.k) if args.k else ()) | set(out["ks"])))
  out["iw_samples"] = args.iw_samples or out["iw_samples"]
  out["seed"] = args.seed if args.seed is not None else out["seed"]
  return out


def _warnings(trained: TrainedModel, args: argparse.Namespace, done: list,
              settings: dict) -> None:
  """What the user should know before trusting the scores: conversions, polarity, threshold."""
  for line in image_files.conversion_notes([c.conversions for _, c in done], args.resize):
    _note(line)
  light = [f for f, c in done if c.border_mean > _LIGHT_BORDER]
  if trained.image_shape[-1] == 1 and light and not args.invert:
    print(f"warning: {len(light)} of {len(done)} images have a light border "
          f"({image_files.examples(light)}); "
          f"this model was trained on light objects on a black background "
          f"({trained.config.data.name}). If yours are dark on light, rerun with --invert.",
          file=sys.stderr)
  th = trained.threshold
  if not th:
    _note(f"{trained.threshold_note} Scores only, no verdicts.")
  elif settings["iw_samples"] != th.iw_samples_elbo:
    _note(f"the threshold was calibrated with {_samples_text(th.score_settings())}; "
          f"the verdicts compare scores from {_samples_text(settings)} against it.")


def _write(out_dir: str, report: dict) -> None:
  with open(os.path.join(out_dir, "scores.json"), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=1)
  with open(os.path.join(out_dir, "scores.csv"), "w", encoding="utf-8", newline="") as f:
    w = csv.writer(f)
    w.writerow(["file", *report["images"][0]["scores"], "verdict", "driven_by", "conversions"])
    for r in report["images"]:
      w.writerow([r["file"], *r["scores"].values(), r["verdict"] or "", r["driven_by"] or "",
                  "; ".join(r["conversions"])])


def _print(report: dict) -> None:
  """The table (file, ELBO bits/dim, LLR^{>k} per k, verdict and what drove it) and how many
  are OOD."""
  images, th = report["images"], report["threshold"]
  llr = [f"llr_k{k}" for k in report["settings"]["ks"]]
  rows = [[_short(r["file"]), f"{r['scores']['elbo_bpd']:.3f}",
           *(f"{r['scores'][n]:.3f}" for n in llr),
           f"{r['verdict']} ({r['driven_by']})" if r["verdict"] else "no threshold"]
          for r in images]
  print(_table(["file", "ELBO bits/dim", *llr, "verdict (driven by)"], rows[:_TABLE_ROWS]))
  if len(rows) > _TABLE_ROWS:
    print(f"... {len(rows) - _TABLE_ROWS} more rows in scores.csv")
  drivers = sorted({r["driven_by"] for r in images if r["driven_by"]})
  if drivers:
    print("driven by: " + "; ".join(f"{d} = {stat_names.describe(d)}" for d in drivers))
  if th:
    print(f"{sum(r['verdict'] == 'OOD' for r in images)} of {len(images)} images are OOD: "
          f"detector {th['detector']} > {th['value']:.3f}, which accepted "
          f"{th['acceptance']:.1%} of {th['acceptance_on']}.")


def run(args: argparse.Namespace) -> dict:
  """Finds, converts and scores the images; writes scores.csv / scores.json; returns the JSON."""
  if not os.path.isdir(args.checkpoint):
    raise ValueError(f"--checkpoint={args.checkpoint}: no such folder; pass a training workdir, "
                     "a step directory in its checkpoints/, or pretrained/fmnist_hvae_small")
  if args.csv:
    checks.writable_path("--csv", args.csv, folder=False)
  paths = [p.removeprefix("folder:") for p in args.paths]  # the data-set spelling of a folder
  files, passed_over = image_files.find_images(paths)
  if passed_over:
    _note(f"passed over {passed_over} file{'s' * (passed_over > 1)} in the folders that are not "
          f"{'/'.join(image_files.EXTENSIONS)} (name a file to score it anyway)")
  if not files:
    raise ValueError(f"no {'/'.join(image_files.EXTENSIONS)} images in {' '.join(paths)} "
                     "(folders are searched recursively)")

  # JAX and the model load only once the paths are known to hold images: a typo fails at once.
  import numpy as np  # pylint: disable=import-outside-toplevel
  from hvae_jax import checkpoints, evaluation, trained as trained_lib  # pylint: disable=import-outside-toplevel
  from hvae_jax.evaluation import flagged  # pylint: disable=import-outside-toplevel
  try:
    trained = trained_lib.load_model(args.checkpoint)
  except checkpoints.CheckpointError as e:
    raise ValueError(f"--checkpoint={args.checkpoint}: {e}") from None
  settings = _settings(trained, args)
  out_dir = args.output or evaluation.default_output_dir(args.checkpoint, "score")
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise ValueError(f"--output={out_dir}: cannot create this folder ({e.strerror})") from None

  batch_size = args.batch_size or trained.config.eval.batch_size
  many = len(files) > batch_size  # a progress bar only when it takes more than one batch
  done, skipped = _read(files, args, trained.image_shape, many)
  _warnings(trained, args, done, settings)
  s = trained.score(np.stack([c.pixels for _, c in done]), batch_size=args.batch_size,
                    progress=many, **settings)
  th = trained.threshold
  flags, drivers, verdict = [None] * len(done), [None] * len(done), None
  if th:
    verdict = th.flags(s)
    s[th.rule], flags, drivers = verdict
  report = {
      "model": os.path.abspath(args.checkpoint),
      "threshold": th and th.brief(),
      "settings": {**settings, "ks": list(settings["ks"]), "batch_size": batch_size,
                   "resize": args.resize, "invert": args.invert},
      "images": [{"file": f, "verdict": None if flag is None else ("OOD" if flag else "in"),
                  "driven_by": None if driver is None else str(driver),
                  "scores": {n: float(v[i]) for n, v in s.items()},
                  "conversions": [f"{kind}: {a} -> {b}" for kind, a, b in c.conversions]}
                 for i, ((f, c), flag, driver) in enumerate(zip(done, flags, drivers))],
      "skipped": skipped,
  }
  _write(out_dir, report)
  if args.csv:
    flagged.write_csv(args.csv, [f for f, _ in done], s, verdict)
  if args.json:
    print(json.dumps(report, indent=1))
  else:
    _print(report)
  print(f"Wrote scores.csv and scores.json to {out_dir}" + (f", and {args.csv}" if args.csv
                                                             else ""),
        file=sys.stderr if args.json else sys.stdout)
  return report


def main(argv: Optional[Sequence[str]] = None) -> dict:
  """The command line (`argv` without the program name; default sys.argv[1:])."""
  args = parser().parse_args(argv)
  with cli.errors_to_exit((ValueError, OSError), args.verbose):
    return run(args)


if __name__ == "__main__":
  main()
