"""The configuration every experiment starts from, and its validation.

`configs/*.py` call `base_config()` and override what differs, so every knob lives here once
with its default, and `validate` turns a bad value into an error that names the key.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any, Mapping, Optional, Union

import ml_collections

# The paper's FashionMNIST HVAE (hvae-oodd README): 3 stages of 64-channel residual blocks.
FMNIST_BLOCKS = (((64, 5, 1), (64, 5, 1), (64, 5, 2)),
                 ((64, 3, 1), (64, 3, 1), (64, 3, 2)),
                 ((64, 3, 1), (64, 3, 1), (64, 3, 1)))
FMNIST_LATENTS = (("conv", 8), ("dense", 16), ("dense", 8))
# train.py writes here and evaluate.py reads here unless --workdir says otherwise, so
# `python train.py --config=...` followed by `python evaluate.py --ood=...` just works.
DEFAULT_WORKDIR = "workdirs/default"
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # for names from configs/


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.compilation_cache_dir = ""  # a path enables JAX's persistent compilation cache

  c.data = ml_collections.ConfigDict()
  # A registry name (hvae_jax/data/registry.py), or your own data: folder:PATH (a folder of
  # images), npz:PATH (an archive of uint8 image arrays) or tfds:NAME (hvae_jax/data/names.py).
  c.data.name = "fashion_mnist"
  # 'auto' (local .npz if present, else official idx files if found, else
  # downloaded: the official files of FashionMNIST and MNIST, tfds otherwise), 'npz',
  # 'idx', 'tfds', 'mock' or 'photos' (real photographs, offline); see hvae_jax/data/loading.py.
  c.data.source = "auto"
  c.data.data_dir = ""  # '' = $HVAE_DATA_DIR
  c.data.train_split = "train"
  c.data.test_split = "test"
  c.data.ood = ("mnist",)  # OOD test sets evaluate.py uses by default
  c.data.eval_binarize_seed = 0
  # Ren et al.'s mu: each training step replaces every pixel value with this probability by
  # uniform noise (preprocess.perturb). > 0 only for background models (bg_llr score).
  c.data.perturb_rate = 0.0

  c.model = ml_collections.ConfigDict()
  c.model.name = "hvae"  # 'hvae' or 'biva'
  c.model.blocks = FMNIST_BLOCKS  # per stage: ((features, kernel, stride), ...)
  c.model.latents = FMNIST_LATENTS  # per stage: (kind 'conv'|'dense', features)
  c.model.likelihood = "bernoulli"  # 'bernoulli' (greyscale) or 'dmol' (colour)
  c.model.num_mix = 10
  c.model.activation = "relu"  # residual blocks
  # Before the latent layers' and the likelihood's parameter layers: ReLU, as the reference
  # (hvae-oodd applies its one activation everywhere; bench/RESULTS.md, reference equivalence).
  # Checkpoints saved before these keys existed had ELU / leaky ReLU (_SAVED_BEFORE_THE_KEY).
  c.model.latent_activation = "relu"
  c.model.likelihood_activation = "relu"
  c.model.latent_kernel = 3
  c.model.upsample = "subpixel"  # 'subpixel' (fast on CPU) or 'transpose': same function
  c.model.skip_mode = "mean"  # z_{<=k} in L^{>k}: prior 'mean' (reference) or 'sample'
  # z_{<=k} in L^{>k}'s bottom-up pass: posterior 'sample' (as the ELBO; one pass serves every
  # k) or 'mean' (the reference's ood-llr.py); see HierarchicalModel in models/common.py.
  c.model.skip_inference = "sample"
  c.model.dtype = "float32"  # compute dtype: 'float32' or 'bfloat16' (scores stay float32)
  c.model.biva_conditional_bu = False  # BIVA: condition p(z^BU_i) on z^TD_i too (biva-pytorch)
  # BIVA's wiring: 'hvae-oodd' computes what the authors' code (the paper's numbers) computes,
  # its dropped skip connections included; 'biva-pytorch' keeps every connection of BIVA as
  # published (models/biva.py says which).
  c.model.biva_variant = "hvae-oodd"
  # What the encoder sees of uint8 colour images (dmol): 'unit' = k / 255 in [0, 1], as
  # hvae-oodd (its data sets are ToTensor'd); 'signed' = k / 127.5 - 1 in [-1, 1].
  c.model.colour_input = "unit"

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128
  c.train.epochs = 1000.0
  c.train.max_steps = -1  # > 0 stops earlier than `epochs`
  c.train.learning_rate = 3e-4
  c.train.grad_clip = 0.0  # 0 = no clipping (the reference does not clip)
  c.train.free_bits = 2.0
  c.train.free_bits_epochs = 400.0
  c.train.warmup_epochs = 200.0
  c.train.nan_policy = "stop"  # 'stop' (keep last good checkpoint) or 'skip' the update
  c.train.log_every_steps = 50
  c.train.eval_every_epochs = 10.0
  c.train.eval_examples = -1  # -1 = whole test split
  c.train.checkpoint_every_steps = 2000
  c.train.keep_checkpoints = 3
  # A workdir or exported model (scripts/export_pretrained.py) whose parameters and step start
  # a run that has no checkpoint yet, with a fresh optimizer state: to continue training
  # from shipped parameters (e.g. pretrained/fmnist_hvae) where the optimizer state is gone.
  c.train.init_from = ""
  c.train.sample_grid = 64  # prior samples saved as PNG at each evaluation (0 = none)
  # The (height, width, channels) a folder:, npz: or tfds: training set is brought to (resized,
  # greyscale or colour: hvae_jax/data/conform.py); () = 28x28x1 with the Bernoulli
  # likelihood, 32x32x3 with DMoL. A registry data set keeps its own shape.
  c.train.image_shape = ()

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 500
  c.eval.ks = ()  # () = every k in 1..L-1
  c.eval.iw_samples_elbo = 1
  c.eval.iw_samples_lk = 1
  c.eval.chunk_size = 16
  # Image passes (one image, one bound, one sample) in flight while scoring: a batch is scored
  # in groups, one after another, to stay below it (the same scores). 0 = automatic (256 on a
  # CPU host, no bound on GPU/TPU); -1 = no bound.
  c.eval.max_passes = 0
  # The verdict's per-input rule (hvae_jax.detectors). dose_gmm_elbo, a Gaussian mixture
  # (size by BIC) over the ELBO pass's per-layer terms (log p(x|z), KL per latent), was chosen
  # by the rule stated in docs/RESULTS.md ("Choosing the default detector") on generated
  # validation sets only; other rules: dose_*, any_stat, any_k (the paper's), joint_k<k>, ...
  c.eval.detector = "dose_gmm_elbo"
  # In-distribution training images (a seeded subset) the detectors are fitted on (one half)
  # and calibrated on (the other); independent of max_examples.
  c.eval.reference_examples = 4000
  c.eval.max_examples = -1  # images per data set (a seeded subset); -1 = all
  c.eval.seed = 0  # seeds the samples, the subsets and the detectors' fit/calibration halves
  c.eval.threshold_tpr = 0.95  # in-distribution acceptance the verdict is calibrated for
  # 'paper' (ELBO, L^{>k}, LLR^{>k}), 'all', or a comma list of the competing scores of
  # hvae_jax.baselines: iw_nll, typicality, complexity, bg_llr, waic, regret.
  c.eval.scores = "paper"
  c.eval.use_cache = True  # False rescores sets scored before (the caches are still written)

  # The competing scores (evaluation with eval.scores other than 'paper').
  c.baselines = ml_collections.ConfigDict()
  c.baselines.iw_samples = 100  # S of log p(x) in every likelihood-based score
  c.baselines.typicality_batch = 10  # M of the batch-level typicality test
  # Likelihood regret as Xiao et al.: 100 Adam steps refitting the encoder, lr 2e-4, weight
  # decay 5e-5; regret_batch_size examples are refit at once (each with its own encoder copy).
  c.baselines.regret_steps = 100
  c.baselines.regret_lr = 2e-4
  c.baselines.regret_weight_decay = 5e-5
  c.baselines.regret_batch_size = 32
  # bg_llr's background model (trained with data.perturb_rate = 0.2) and WAIC's other ensemble
  # members; '' / () = those scripts/reproduce_baselines.sh trains beside the scored run.
  c.baselines.background = ""
  c.baselines.ensemble = ()
  return c


_CHOICES = {
    "data.source": ("auto", "npz", "idx", "tfds", "mock", "photos"),
    "model.name": ("hvae", "biva"),
    "model.likelihood": ("bernoulli", "dmol"),
    "model.upsample": ("subpixel", "transpose"),
    "model.skip_mode": ("mean", "sample"),
    "model.skip_inference": ("sample", "mean"),
    "model.dtype": ("float32", "bfloat16"),
    "model.biva_variant": ("hvae-oodd", "biva-pytorch"),
    "model.colour_input": ("unit", "signed"),
    "train.nan_policy": ("stop", "skip"),
}
_POSITIVE = ("train.batch_size", "train.learning_rate", "train.log_every_steps",
             "train.checkpoint_every_steps", "train.keep_checkpoints", "eval.batch_size",
             "eval.iw_samples_elbo", "eval.iw_samples_lk", "eval.chunk_size", "model.num_mix",
             "baselines.iw_samples", "baselines.typicality_batch", "baselines.regret_batch_size",
             "baselines.regret_lr")
_NON_NEGATIVE = ("train.epochs", "train.free_bits", "train.free_bits_epochs",
                 "train.warmup_epochs", "train.grad_clip", "train.eval_every_epochs", "eval.seed",
                 "baselines.regret_steps", "baselines.regret_weight_decay")


def _get(c: ml_collections.ConfigDict, dotted: str):
  for part in dotted.split("."):
    if part not in c:
      raise ValueError(f"config is missing '{dotted}'; start configs from hvae_jax.config.base_config().")
    c = c[part]
  return c


# Keys whose default is not what checkpoints saved before the key existed were trained with.
_SAVED_BEFORE_THE_KEY = {("model", "latent_activation"): "elu",
                         ("model", "likelihood_activation"): "leaky_relu",
                         ("model", "biva_variant"): "biva-pytorch",
                         ("model", "colour_input"): "signed"}


# What a model's scores depend on besides its weights (`score_keys`, `TrainedModel.digest`).
# Every model.* and data.* key is in exactly one of SCORE_KEYS and NOT_SCORE_KEYS (a test
# checks), so a new key must say whether it changes a score. A score key added later whose
# default keeps the old computation goes in SCORE_KEYS_SINCE with that value: models at that
# value keep their digest, and with it their thresholds and score caches.
SCORE_KEYS = tuple(f"model.{k}" for k in (
    "name", "blocks", "latents", "likelihood", "num_mix", "activation", "latent_activation",
    "likelihood_activation", "latent_kernel", "upsample", "skip_mode", "skip_inference", "dtype",
    "biva_conditional_bu", "biva_variant", "colour_input")) + ("data.eval_binarize_seed",)
NOT_SCORE_KEYS = tuple(f"data.{k}" for k in (
    "name", "source", "data_dir", "train_split", "test_split", "ood", "perturb_rate"))
SCORE_KEYS_SINCE: dict[str, Any] = {}


def score_keys(c: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config values a model's scores depend on (`SCORE_KEYS`), by dotted key."""
  return {k: _get(c, k) for k in SCORE_KEYS
          if k not in SCORE_KEYS_SINCE or _get(c, k) != SCORE_KEYS_SINCE[k]}


# Keys that no longer exist: dropped from saved configs (they were never read).
_REMOVED_KEYS = (("eval", "subsample_seed"),)


def from_saved(saved: dict) -> ml_collections.ConfigDict:
  """A config saved with a checkpoint (config.json), laid over `base_config()`: checkpoints
  written before a key existed load with that key's default (e.g. data.perturb_rate = 0), or
  with the value they were trained with where the default has changed since."""
  c = base_config()
  for (section, key), value in _SAVED_BEFORE_THE_KEY.items():
    if section in saved and key not in saved[section]:
      c[section][key] = value
  saved = {s: ({k: v for k, v in d.items() if (s, k) not in _REMOVED_KEYS}
               if isinstance(d, dict) else d) for s, d in saved.items()}
  c.update(saved)
  return c


def validate(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks types and ranges; raises ValueError naming the key and the allowed values."""
  base = base_config()

  def walk(ref, cfg, prefix=""):
    for key in cfg.keys():
      if key not in ref:
        raise ValueError(f"Unknown config key '{prefix}{key}'. Known keys here: {sorted(ref.keys())}.")
      if isinstance(ref[key], ml_collections.ConfigDict):
        walk(ref[key], cfg[key], f"{prefix}{key}.")
  walk(base, c)
  for key, allowed in _CHOICES.items():
    if _get(c, key) not in allowed:
      raise ValueError(f"config.{key} = {_get(c, key)!r} is not one of {allowed}.")
  for key in _POSITIVE:
    if not _get(c, key) > 0:
      raise ValueError(f"config.{key} must be > 0, got {_get(c, key)!r}.")
  for key in _NON_NEGATIVE:
    if _get(c, key) < 0:
      raise ValueError(f"config.{key} must be >= 0, got {_get(c, key)!r}.")
  _check_likelihood_fits_data(c)
  # layers imports JAX and Flax: the config stays light (the CLIs read it before JAX loads).
  from hvae_jax.layers import ACTIVATIONS  # pylint: disable=import-outside-toplevel
  for key in ("model.activation", "model.latent_activation", "model.likelihood_activation"):
    if _get(c, key) not in ACTIVATIONS:
      raise ValueError(f"config.{key} = {_get(c, key)!r} is not one of {sorted(ACTIVATIONS)}.")
  if not 0.0 <= c.data.perturb_rate <= 1.0:
    raise ValueError(f"config.data.perturb_rate is a probability in [0, 1], got "
                     f"{c.data.perturb_rate!r}.")
  if not (isinstance(c.eval.max_passes, int) and c.eval.max_passes >= -1):
    raise ValueError(f"config.eval.max_passes must be an integer >= -1 (0 = automatic, -1 = no "
                     f"bound), got {c.eval.max_passes!r}.")
  try:
    blocks = [[tuple(int(v) for v in b) for b in stage] for stage in c.model.blocks]
    latents = [(str(kind), int(n)) for kind, n in c.model.latents]
  except (TypeError, ValueError) as e:
    raise ValueError("config.model.blocks must be ((features, kernel, stride), ...) per stage and "
                     f"config.model.latents (kind, features) per stage: {e}") from None
  if c.model.name == "hvae" and len(blocks) != len(latents):
    raise ValueError(f"config.model.blocks has {len(blocks)} stages but config.model.latents "
                     f"has {len(latents)}; give one latent per stage.")
  if any(len(b) != 3 for stage in blocks for b in stage):
    raise ValueError("each block in config.model.blocks must be (features, kernel, stride).")
  if any(kind not in ("conv", "dense") for kind, _ in latents):
    raise ValueError(f"latent kinds must be 'conv' or 'dense', got {[k for k, _ in latents]}.")
  return c


def load_config(config: Union[str, os.PathLike, ml_collections.ConfigDict],
                overrides: Optional[Mapping[str, Any]] = None) -> ml_collections.ConfigDict:
  """A validated config from a ConfigDict, a config file or a config name.

  Args:
    config: an `ml_collections.ConfigDict` (copied, not modified); a path to a config file
      defining `get_config()`, optionally with an argument as on the command line
      (`"configs/cifar_hvae.py:l4"`); or the name of a file in the repository's `configs/`
      folder (`"tiny"`, `"fmnist_hvae_small"`).
    overrides: dotted keys to set afterwards, e.g. `{"train.max_steps": 100}`.

  Raises:
    FileNotFoundError: no such config file.
    ValueError: the file has no `get_config`, or a key or value is invalid (the message names it).
  """
  if isinstance(config, ml_collections.ConfigDict):
    c = ml_collections.ConfigDict(config.to_dict())
  else:
    c = _config_from_file(os.fspath(config))
  for dotted, value in (overrides or {}).items():
    *parents, leaf = dotted.split(".")
    node = c
    for p in parents:
      if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
        raise ValueError(f"Unknown config key '{dotted}'; keys and defaults are in "
                         f"hvae_jax/config.py.")
      node = node[p]
    if leaf not in node:
      raise ValueError(f"Unknown config key '{dotted}'; keys and defaults are in "
                       f"hvae_jax/config.py.")
    node[leaf] = value
  return validate(c)


def _config_from_file(spec: str) -> ml_collections.ConfigDict:
  path, arg = spec, None
  if ":" in spec and not os.path.exists(spec):
    path, arg = spec.rsplit(":", 1)
  if not os.path.exists(path):  # a name from configs/, or a path relative to the repository
    for candidate in (os.path.join(_REPO, "configs", f"{path}.py"), os.path.join(_REPO, path)):
      if not os.path.isabs(path) and os.path.isfile(candidate):
        path = candidate
        break
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} not found; pass a path to a .py file with "
                            f"get_config(), a name from configs/, or a ConfigDict.")
  module_spec = importlib.util.spec_from_file_location(
      f"_hvae_config_{abs(hash(os.path.abspath(path)))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {path} defines no get_config().")
  return module.get_config(arg) if arg is not None else module.get_config()


# What each kind of data set (hvae_jax.data.DatasetSpec.kind) is fed to the model as, and the
# likelihood that models it.
_LIKELIHOOD_OF_KIND = {"binary": ("bernoulli", "binarized 0/1 pixels"),
                       "discrete": ("dmol", "uint8 colour values 0..255")}


def _check_likelihood_fits_data(c: ml_collections.ConfigDict) -> None:
  # Imported on use: the CLIs read configs before anything else loads, and only this check
  # needs the data package (its names and specs).
  from hvae_jax import data  # pylint: disable=import-outside-toplevel
  try:
    spec = data.config_spec(c)
  except ValueError as e:
    raise ValueError(f"config.data.name = {c.data.name!r}: {e}") from None
  wanted, what = _LIKELIHOOD_OF_KIND[spec.kind]
  if c.model.likelihood != wanted:
    raise ValueError(f"config.model.likelihood = {c.model.likelihood!r} does not fit "
                     f"{c.data.name}, which the model sees as {what}; use "
                     f"config.model.likelihood = {wanted!r}.")
