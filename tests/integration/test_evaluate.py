"""evaluate.py end to end on a tiny trained checkpoint, the library API, and clear errors."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from hvae_jax import api, checkpoints, thresholds
from tests.helpers import DATA_DIR, REPO, fmnist_slice, mnist_slice, tiny_config


def _run(*args, cwd=REPO):
  env = dict(os.environ, HVAE_DATA_DIR=DATA_DIR)
  return subprocess.run([sys.executable, os.path.join(REPO, "evaluate.py"), *args], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=600, check=False)


def test_evaluate_cli_writes_tables_json_plots_and_threshold(tiny_workdir, tmp_path):
  out = tmp_path / "eval"
  cache = tmp_path / "jax_cache"
  r = _run(f"--workdir={tiny_workdir}", "--ood=mnist", "--max_examples=120", "--iw_samples=2",
           f"--output={out}", f"--compilation_cache_dir={cache}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert any(cache.iterdir()), "the persistent compilation cache was not written"
  for f in ("results.json", "results.md", "roc_mnist.png", "hist_mnist.png", "threshold.json",
            "scores_fashion_mnist_test.npz", "scores_mnist_test.npz"):
    assert (out / f).exists(), f
  res = json.loads((out / "results.json").read_text())
  m = res["ood"]["mnist"]["metrics"]
  assert set(m) >= {"elbo", "lk_k1", "lk_k2", "llr_k1", "llr_k2"}
  assert all(0.0 <= v["auroc"] <= 1.0 for v in m.values())
  table = (out / "results.md").read_text()
  assert "| llr_k1 |" in table and "Average bits/dim" in table
  # The cache is reused: a second run with the same settings does not rescore.
  mtime = (out / "scores_mnist_test.npz").stat().st_mtime
  r = _run(f"--workdir={tiny_workdir}", "--ood=mnist", "--max_examples=120", "--iw_samples=2",
           f"--output={out}")
  assert r.returncode == 0 and (out / "scores_mnist_test.npz").stat().st_mtime == mtime


def test_evaluate_cli_clear_errors(tiny_workdir, tmp_path):
  r = _run(f"--workdir={tmp_path / 'nothing'}")
  assert r.returncode != 0 and "no checkpoint found" in r.stderr and "Traceback" not in r.stderr
  r = _run(f"--workdir={tiny_workdir}", "--ood=not_a_dataset")
  assert r.returncode != 0 and "Unknown dataset" in r.stderr and "Traceback" not in r.stderr
  r = _run(f"--workdir={tiny_workdir}", "--scores=bg_llr")  # no background model anywhere
  assert r.returncode != 0 and "needs --background_checkpoint" in r.stderr
  assert "Traceback" not in r.stderr
  r = _run(f"--workdir={tiny_workdir}", "--config=configs/fmnist_hvae.py")  # other architecture
  assert r.returncode != 0 and "checkpoint" in r.stderr and "Traceback" not in r.stderr


def test_evaluate_cli_reads_train_py_default_workdir(tiny_workdir, tmp_path):
  # `python train.py --config=...` then `python evaluate.py --ood=...`: no --workdir on either.
  r = _run("--ood=mnist", cwd=tmp_path)
  assert r.returncode != 0 and "Traceback" not in r.stderr
  assert "no checkpoint found" in r.stderr and os.path.join("workdirs", "default") in r.stderr
  (tmp_path / "workdirs").mkdir()
  os.symlink(tiny_workdir, tmp_path / "workdirs" / "default")
  r = _run("--ood=mnist", "--max_examples=32", "--k=1", f"--output={tmp_path / 'eval'}",
           cwd=tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "| llr_k1 |" in r.stdout and (tmp_path / "eval" / "results.json").exists()


def test_library_api_scores_raw_images_and_rejects_bad_ones(tiny_workdir):
  m = api.load_model(tiny_workdir)
  s = m.score(fmnist_slice(7)[..., 0])  # [N, H, W] greyscale is accepted too
  assert set(s) >= {"elbo", "llr_k1", "lk_k2_bpd"} and s["elbo"].shape == (7,)
  assert np.all(np.isfinite(s["llr_k1"]))
  # Any batch size: one compiled shape serves a partial batch.
  s2 = m.score(mnist_slice(3), batch_size=4)
  assert s2["llr_k2"].shape == (3,)
  with pytest.raises(ValueError, match="shape"):
    m.score(np.zeros((2, 32, 32, 3), np.uint8))
  with pytest.raises(ValueError, match="uint8"):
    m.score(np.full((2, 28, 28, 1), 0.5, np.float32))
  with pytest.raises(ValueError, match="threshold"):
    m.is_ood(fmnist_slice(2))


def test_config_mismatch_is_a_checkpoint_error(tiny_workdir):
  c = tiny_config()
  c.model.blocks = (((16, 3, 2),), ((16, 3, 2),), ((16, 3, 1),))
  with pytest.raises(checkpoints.CheckpointError, match="checkpoint"):
    api.load_model(tiny_workdir, c)


def test_scores_cannot_go_stale(tiny_workdir, tmp_path, capsys):
  """Cached scores never outlive their checkpoint: evaluate, train further, evaluate again:
  new scores, no cache hit; the same evaluation twice is a reported hit; use_cache=False and
  another binarization rescore."""
  import shutil  # pylint: disable=import-outside-toplevel

  import hvae_jax  # pylint: disable=import-outside-toplevel
  from hvae_jax import training  # pylint: disable=import-outside-toplevel
  run = tmp_path / "run"
  shutil.copytree(tiny_workdir, run)
  kw = dict(ood={"digits": mnist_slice(40, seed=5)}, in_test=fmnist_slice(40, seed=5),
            in_train=fmnist_slice(40, "train"), ks=(1,), batch_size=40)
  first = hvae_jax.evaluate(str(run), **kw)
  assert "from the cache" not in capsys.readouterr().out
  again = hvae_jax.evaluate(str(run), **kw)
  out = capsys.readouterr().out
  assert out.count("from the cache") == 3, out  # in-test, in-train, digits: one line each
  assert again["ood"] == first["ood"]
  hvae_jax.evaluate(str(run), use_cache=False, **kw)
  assert "from the cache" not in capsys.readouterr().out
  cached = dict(np.load(run / "eval" / "scores_digits_test.npz"))

  c = tiny_config()
  c.train.max_steps = 50  # 10 more steps than the fixture's
  c.train.sample_grid = 0
  training.train_and_evaluate(c, str(run))
  capsys.readouterr()
  hvae_jax.evaluate(str(run), **kw)
  assert "from the cache" not in capsys.readouterr().out
  new = dict(np.load(run / "eval" / "scores_digits_test.npz"))
  assert not np.allclose(new["llr_k1"], cached["llr_k1"])

  other_bin = api.load_model(str(run))
  other_bin.config.data.eval_binarize_seed = 1
  hvae_jax.evaluate(other_bin, **kw)
  assert "from the cache" not in capsys.readouterr().out


def test_cli_and_api_are_one_path_and_the_threshold_records_both_sample_counts(tiny_workdir,
                                                                                tmp_path):
  import hvae_jax  # pylint: disable=import-outside-toplevel
  cli_out, api_out = tmp_path / "cli", tmp_path / "api"
  r = _run(f"--workdir={tiny_workdir}", "--ood=mnist", "--max_examples=60", "--k=1,2",
           "--iw_samples_elbo=2", "--iw_samples_lk=3", "--batch_size=30", f"--output={cli_out}",
           "--reference_examples=60")
  assert r.returncode == 0, r.stderr[-3000:]
  model = hvae_jax.load_model(tiny_workdir)
  res = hvae_jax.evaluate(model, ood=["mnist"], max_examples=60, reference_examples=60,
                          ks=(1, 2), iw_samples_elbo=2,
                          iw_samples_lk=3, batch_size=30, output_dir=str(api_out),
                          data_dir=DATA_DIR)
  cli = json.loads((cli_out / "results.json").read_text())
  for key in ("settings", "bits_per_dim", "ood", "train_vs_test", "verdicts"):
    assert cli[key] == json.loads(json.dumps(res[key])), key
  assert "k_unsupervised" not in cli  # the noisy global pick of k is retired
  for f in ("scores_fashion_mnist_test.npz", "scores_mnist_test.npz"):
    a, b = np.load(cli_out / f), np.load(api_out / f)
    for k in a.files:
      if k not in ("_key", "_seconds"):
        np.testing.assert_array_equal(a[k], b[k])
  th = res["threshold"]
  assert (th["iw_samples_elbo"], th["iw_samples_lk"]) == (2, 3)
  assert json.loads((cli_out / "threshold.json").read_text()) == json.loads(json.dumps(th))
  assert th["model_digest"] == model.digest and th["ks"] == [1, 2]
  # Fitted on one half of 60 training images, calibrated on the other; acceptance measured on
  # all 60 test images, none of which it saw.
  assert "30 reference images" in th["calibrated_on"] and "all 60" in th["acceptance_on"]
  assert 0.0 <= th["acceptance"] <= 1.0 and set(th["ood_flagged"]) == {"mnist"}
  assert {len(v) for v in th["reference"].values()} == {30}
  report = (cli_out / "results.md").read_text()
  assert "Per-input verdicts" in report and "| any_k |" in report and "FPR95" in report
  # verdict: the threshold's detector, ks and both sample counts; it names what drove it.
  images = mnist_slice(12, seed=9)
  s, flags = model.verdict(images)
  ref = model.score(images, ks=(1, 2), iw_samples=2, iw_samples_lk=3)
  score, driver = thresholds.Threshold.from_json(th).detector.score(ref)
  np.testing.assert_array_equal(s[th["detector"]], score)
  np.testing.assert_array_equal(flags, score > th["value"])
  assert set(s["driven_by"]) <= set(th["features_of"] or th["reference"])
  np.testing.assert_array_equal(model.is_ood(images), flags)


def test_a_shipped_model_is_evaluated_into_workdirs_not_into_its_folder(tmp_path):
  shipped = os.path.join(REPO, "pretrained", "fmnist_hvae_small")
  before = sorted(os.path.relpath(os.path.join(d, f), shipped)
                  for d, _, fs in os.walk(shipped) for f in fs)
  r = _run(f"--checkpoint={shipped}", "--ood=mnist", "--max_examples=16", "--k=1", cwd=tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  out = tmp_path / "workdirs" / "fmnist_hvae_small" / "eval"
  assert (out / "results.json").exists() and str(out) in r.stdout
  after = sorted(os.path.relpath(os.path.join(d, f), shipped)
                 for d, _, fs in os.walk(shipped) for f in fs)
  assert after == before


@pytest.mark.parametrize("args, message", [
    (["--iw_samples=0"], "iw_samples=0 is not allowed"),
    (["--max_examples=-3"], "max_examples=-3 is not allowed"),
    (["--batch_size=0"], "batch_size=0 is not allowed"),
    (["--k=7"], "k=['7'] is not allowed"),
    (["--data_dir=/nowhere"], "data_dir='/nowhere' is not a folder"),
    (["--scores=nope"], "unknown score 'nope'"),
    (["--scores=typicality", "--typicality_batch=0"], "typicality_batch must be >= 1"),
    (["--checkpoint=/nowhere"], "no checkpoint found"),
    (["--eval.typo=3"], "--eval.typo=3: no such config key 'typo'"),
    (["--iw_samples=2", "--eval.iw_samples_elbo=3"], "disagree: both set eval.iw_samples_elbo"),
    (["--scores=regret", "--baselines.regret_lr=0"], "lr > 0"),
])
def test_evaluate_cli_bad_inputs_one_line_each(args, message):
  r = _run(f"--checkpoint={os.path.join(REPO, 'pretrained', 'fmnist_hvae_small')}", *args)
  assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
  lines = [l for l in r.stderr.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1 and message in lines[0], r.stderr[-2000:]


def test_every_setting_is_a_config_key_the_short_flags_name(tmp_path):
  """--eval.* / --baselines.* set config.eval / config.baselines over the saved config; the
  short flags set the same keys; the results record what ran."""
  out = tmp_path / "eval"
  r = _run(f"--checkpoint={os.path.join(REPO, 'pretrained', 'fmnist_hvae_small')}", "--ood=mnist",
           "--eval.max_examples=24", "--eval.ks=(1,)", "--iw_samples=2", "--eval.seed=3",
           "--eval.detector=llr_k1", f"--output={out}")
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.loads((out / "results.json").read_text())
  assert res["settings"] == {"ks": [1], "iw_samples_elbo": 2, "iw_samples_lk": 1,
                             "batch_size": 500, "max_examples": 24, "seed": 3,
                             "threshold_tpr": 0.95, "detector": "llr_k1",
                             "reference_examples": 4000}
  assert res["threshold"]["detector"] == "llr_k1" and res["threshold"]["seed"] == 3


def test_python_api_bad_inputs(tmp_path):
  import hvae_jax  # pylint: disable=import-outside-toplevel
  m = hvae_jax.load_model(os.path.join(REPO, "pretrained", "fmnist_hvae_small"))
  x = fmnist_slice(4)
  kw = dict(in_test=x, in_train=x, ood={"d": mnist_slice(4)}, output_dir=str(tmp_path))
  for bad, message in [({"iw_samples": 0}, "iw_samples=0"), ({"max_examples": -3}, "max_examples"),
                       ({"batch_size": 0}, "batch_size=0"), ({"ks": (9,)}, "k=[9]"),
                       ({"seed": -1}, "seed=-1"), ({"scores": "nope"}, "unknown score"),
                       ({"data_dir": "/nowhere", "in_test": None}, "data_dir"),
                       ({"regret_foo": 1}, "unknown evaluation option 'regret_foo'"),
                       ({"iw_samples_elbo": 1.5}, "iw_samples_elbo=1.5")]:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
      hvae_jax.evaluate(m, **{**kw, **bad})
  for bad, message in [({"iw_samples": 0}, "iw_samples=0"), ({"batch_size": 0}, "batch_size=0"),
                       ({"ks": (0,)}, "k=")]:
    with pytest.raises(ValueError, match=message):
      m.score(x, **bad)
  assert not list(tmp_path.iterdir())  # every check ran before any work


def test_a_stopped_scoring_pass_continues_where_it_stopped(tiny_workdir, tmp_path, monkeypatch,
                                                           capsys):
  """A set's scoring keeps its progress when stopped; the next run scores only the rest and
  ends with exactly the scores of one uninterrupted pass (same keys per batch)."""
  from hvae_jax import batching, cache, evaluation  # pylint: disable=import-outside-toplevel
  m = api.load_model(tiny_workdir)
  images = fmnist_slice(24, seed=7)
  settings = evaluation.EvalSettings(ks=(1,), iw_samples_elbo=3, iw_samples_lk=2, batch_size=8)
  whole = m.score(images, ks=(1,), iw_samples=3, iw_samples_lk=2, batch_size=8)
  calls = []
  real_score_fn = m.score_fn

  def counting_score_fn(*args):
    fn = real_score_fn(*args)

    def counted(*a):
      calls.append(1)
      if stop_at and len(calls) == stop_at:
        raise KeyboardInterrupt
      return fn(*a)
    return counted

  monkeypatch.setattr(m, "score_fn", counting_score_fn)
  monkeypatch.setattr(evaluation.scoring, "PARTIAL_EVERY_S", 1e9)  # only the stop itself saves
  score_cache = cache.ScoreCache(str(tmp_path))
  stop_at = 3  # Ctrl-C in the third of three batches
  with pytest.raises(KeyboardInterrupt):
    evaluation.score_set(m, images, settings, score_cache, "part")
  with np.load(tmp_path / "scores_part.partial.npz") as f:
    assert f["elbo"].shape == (16,)
  assert not (tmp_path / "scores_part.npz").exists()

  calls.clear()
  stop_at = None
  s = evaluation.score_set(m, images, settings, score_cache, "part").scores
  assert len(calls) == 1, "only the batch not yet scored runs again"
  assert "continuing an interrupted pass at image 16 of 24" in capsys.readouterr().out
  for name in whole:
    np.testing.assert_allclose(s[name], whole[name], rtol=1e-6, err_msg=name)
  assert (tmp_path / "scores_part.npz").exists()
  assert not (tmp_path / "scores_part.partial.npz").exists()

  with pytest.raises(ValueError, match="multiple of the batch size"):
    batching.map_batches(lambda p, x, k: {"a": x[:, 0, 0, 0]}, {}, images, 8,
                         jax.random.key(0), done={"a": np.zeros(5)})
