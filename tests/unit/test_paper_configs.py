"""The paper's HVAE configs score as the authors' scripts/ood-llr.py: L^{>k}'s skipped latents
at their mode in both passes (use_mode=decode_from_p), L^{>k} with one sample."""
import pytest

import hvae_jax


@pytest.mark.parametrize("path", ["configs/fmnist_hvae.py", "configs/fmnist_hvae_cpu.py",
                                  "configs/cifar_hvae.py"])
def test_paper_hvae_configs_score_as_the_authors(path):
  c = hvae_jax.load_config(path)
  assert (c.model.skip_inference, c.model.skip_mode) == ("mean", "mean")
  assert c.eval.iw_samples_lk == 1
  assert hvae_jax.build_model(c).skip_inference == "mean"


def test_the_base_config_keeps_the_shared_pass_as_its_named_option():
  assert hvae_jax.load_config("configs/fmnist_hvae_small.py").model.skip_inference == "sample"
