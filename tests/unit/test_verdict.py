"""The verdict is bound to its model and depends on the image alone (issue: a verdict users can
trust): threshold.json records the model digest, a mismatch is refused in one line, no parent
folder is searched, and permuting or splitting a batch changes no score and no verdict."""
import json
import shutil

import jax
import numpy as np
import pytest

import hvae_jax
from hvae_jax import api, thresholds
from tests.helpers import DATA_DIR, fmnist_slice, mnist_slice


@pytest.fixture(scope="module")
def calibrated(tiny_workdir, tmp_path_factory):
  """A copy of the tiny run with threshold.json from evaluate() in its eval/ folder."""
  work = tmp_path_factory.mktemp("verdict") / "run"
  shutil.copytree(tiny_workdir, work, ignore=shutil.ignore_patterns("eval"))
  model = hvae_jax.load_model(str(work))
  hvae_jax.evaluate(model, ood=["mnist"], max_examples=40, batch_size=40, data_dir=DATA_DIR)
  return work, model


def test_the_threshold_records_the_model_and_is_found_again(calibrated):
  work, model = calibrated
  rec = json.loads((work / "eval" / "threshold.json").read_text())
  assert rec["model_digest"] == model.digest and rec["format"] == thresholds.FORMAT
  reloaded = hvae_jax.load_model(str(work))
  assert reloaded.threshold.to_json() == rec and reloaded.threshold_note == ""
  x = mnist_slice(6)
  np.testing.assert_array_equal(reloaded.is_ood(x), model.is_ood(x))


def test_a_threshold_for_other_weights_is_refused_in_one_line(calibrated):
  """Another step of the same run (other weights, same config) must not use this threshold."""
  work, model = calibrated
  other = api.TrainedModel(model.model, jax.tree_util.tree_map(lambda p: p * 1.001, model.params),
                           model.config, model.image_shape, model.kind, path=str(work))
  other.threshold, other.threshold_note = thresholds.load(str(work), other.digest)
  assert other.threshold is None
  with pytest.raises(ValueError) as e:
    other.is_ood(fmnist_slice(2))
  msg = str(e.value)
  assert "calibrated for another model" in msg and "re-run python evaluate.py" in msg
  assert "\n" not in msg
  # Passing the other model's record explicitly is refused too.
  with pytest.raises(ValueError, match="calibrated for another model"):
    other.verdict(fmnist_slice(2), threshold=model.threshold)


def test_no_parent_folder_and_no_old_format_is_used(calibrated, tmp_path):
  work, model = calibrated
  # A checkpoint step folder: its parent's threshold.json belongs to whatever sits there.
  step = sorted((work / "checkpoints").iterdir())[-1]
  shutil.copy(work / "eval" / "threshold.json", work / "checkpoints" / "threshold.json")
  m = hvae_jax.load_model(str(step))
  assert m.threshold is None and "no calibrated threshold" in m.threshold_note
  # An older hvae-jax's file (no detector, no digest) is refused with what to do.
  old = tmp_path / "old"
  shutil.copytree(work, old)
  (old / "eval" / "threshold.json").write_text(json.dumps({"score": "llr_k1", "value": 3.0}))
  m = hvae_jax.load_model(str(old))
  assert m.threshold is None and "older hvae-jax" in m.threshold_note
  with pytest.raises(ValueError, match="re-run python evaluate.py"):
    m.is_ood(fmnist_slice(2))


def test_scores_and_verdicts_depend_on_the_image_alone(calibrated):
  _, model = calibrated
  x = np.concatenate([fmnist_slice(9), mnist_slice(9)])
  s, flags = model.verdict(x, batch_size=8)
  perm = np.random.default_rng(0).permutation(len(x))
  s_p, flags_p = model.verdict(x[perm], batch_size=5)
  for n in ("elbo", "lk_k1", "llr_k1", "llr_k2"):
    np.testing.assert_allclose(s_p[n], s[n][perm], rtol=1e-5, atol=1e-3)
  np.testing.assert_array_equal(flags_p, flags[perm])
  np.testing.assert_array_equal(s_p["driven_by"], s["driven_by"][perm])
  alone = model.score(x[4:5])
  np.testing.assert_allclose(alone["llr_k1"], s["llr_k1"][4:5], rtol=1e-5, atol=1e-3)
  # Another seed draws other samples.
  assert not np.allclose(model.score(x, seed=1)["llr_k1"], s["llr_k1"])


def test_empty_and_bool_images_get_a_clear_error(calibrated):
  _, model = calibrated
  with pytest.raises(ValueError, match="no images to score"):
    model.score(np.zeros((0, 28, 28), np.uint8))
  with pytest.raises(ValueError, match="no images to score"):
    model.is_ood([])
  with pytest.raises(ValueError, match="bool array"):
    model.score(np.ones((2, 28, 28), bool))
