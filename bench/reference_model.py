"""The authors' model (hvae-oodd) built and scored as its scripts do; torch and numpy only.

Imported by the reference side of bench/reference_equivalence.py and by
scripts/make_port_fixtures.py, in a Python that has torch and finds the hvae-oodd checkout at
$HVAE_OODD_DIR (default .ref/hvae-oodd; setup in bench/compare_reference.py's docstring).
`oodd.models` imports `oodd.datasets` (torchvision) only for a checkpointing type hint, and
`oodd.utils` imports seaborn only for its plotting helpers, so stubs of those modules are put
in sys.modules (seaborn's only where it is not installed); nothing on the compute path is
replaced.

A model is described by `spec`, a dict that `reference_spec` (our side) makes from one of our
configs: class ('VAE' or 'BIVA'), likelihood module, input shape (C, H, W) and the
deterministic and stochastic configs written as the hvae-oodd README writes them.
"""
from __future__ import annotations

import json
import os
import sys
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIKELIHOOD_MODULES = {"bernoulli": "BernoulliLikelihoodConv2d",
                      "dmol": "DiscretizedLogisticMixLikelihoodConv2d"}
CLASSES = {"hvae": "VAE", "biva": "BIVA"}


def reference_spec(config) -> dict:
  """What hvae-oodd's dvae_run.py is told to build our `config`'s model (no torch needed)."""
  m = config.model
  from hvae_jax import data  # pylint: disable=import-outside-toplevel  (jax side only)
  h, w, c = data.get_spec(config.data.name).image_shape
  block = lambda f, k, s: {"block": "ResBlockConv2d", "out_channels": int(f),
                           "kernel_size": int(k), "stride": int(s), "weightnorm": True,
                           "gated": False}
  latent = lambda kind, n: {"block": {"conv": "GaussianConv2d", "dense": "GaussianDense"}[kind],
                            "latent_features": int(n), "weightnorm": True}
  return dict(class_name=CLASSES[m.name], likelihood=LIKELIHOOD_MODULES[m.likelihood],
              input_shape=[c, h, w],
              config_deterministic=[[block(*b) for b in stage] for stage in m.blocks],
              config_stochastic=[latent(*spec) for spec in m.latents])


def import_oodd():
  """(torch, oodd) with oodd from $HVAE_OODD_DIR and its torchvision-only module stubbed."""
  import torch  # pylint: disable=import-outside-toplevel
  path = os.path.abspath(os.environ.get("HVAE_OODD_DIR", os.path.join(REPO, ".ref", "hvae-oodd")))
  if not os.path.isdir(os.path.join(path, "oodd")):
    raise SystemExit(f"no hvae-oodd checkout at {path}: set HVAE_OODD_DIR (see "
                     f"bench/compare_reference.py's docstring for the setup).")
  if path not in sys.path:
    sys.path.insert(0, path)
  stub = types.ModuleType("oodd.datasets")
  stub.DataModule = type("DataModule", (), {})
  sys.modules.setdefault("oodd.datasets", stub)
  try:
    import seaborn  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    sys.modules["seaborn"] = types.ModuleType("seaborn")
  import oodd.losses  # pylint: disable=import-outside-toplevel
  import oodd.models  # pylint: disable=import-outside-toplevel
  import oodd.utils  # pylint: disable=import-outside-toplevel
  return torch, oodd


def build(spec: dict):
  """The model as scripts/dvae_run.py builds it: the class's argparser on the flags, then
  `input_shape` (a torch.Size) set from the data."""
  torch, oodd = import_oodd()
  cls = getattr(oodd.models.dvae, spec["class_name"])
  args, _ = cls.get_argparser().parse_known_args(
      ["--likelihood", spec["likelihood"],
       "--config_deterministic", json.dumps(spec["config_deterministic"]),
       "--config_stochastic", json.dumps(spec["config_stochastic"])])
  args.input_shape = torch.Size(spec["input_shape"])
  return cls(**vars(args))


def as_input(x_uint8_or_binary, dmol: bool):
  """Our images `[N, H, W, C]` (uint8 colour or {0, 1} floats) as the reference's NCHW input:
  colour k / 255 (its CIFAR10Quantized ToTensor), binary as they are."""
  torch, _ = import_oodd()
  x = torch.from_numpy(x_uint8_or_binary).permute(0, 3, 1, 2).contiguous()
  return x.float().div(255) if dmol else x.float()


def elbo_terms(criterion, likelihood_data, stage_datas, **kw):
  kls = [sd.loss.kl_elementwise for sd in stage_datas if sd.loss.kl_elementwise is not None]
  return criterion(likelihood_data.likelihood, kls, **kw)


def train(model, x, steps: int, batch: int, seed: int, lr: float = 3e-4, log=None) -> list:
  """Step 0 runs the data-dependent init; then `steps` Adam steps on the plain ELBO with
  batches drawn (seeded) from `x` (reference input, NCHW). Returns the -ELBO per step."""
  torch, oodd = import_oodd()
  gen = torch.Generator().manual_seed(seed)
  criterion = oodd.losses.ELBO()
  optimizer = torch.optim.Adam(model.parameters(), lr=lr)
  model.train()
  losses = []
  for step in range(steps + 1):
    idx = torch.randint(0, len(x), (batch,), generator=gen)
    ld, sds = model(x[idx])
    loss, _, _, _ = elbo_terms(criterion, ld, sds, samples=1, free_nats=0, beta=1,
                               sample_reduction=torch.mean, batch_reduction=None)
    if step:
      loss.mean().backward()
      optimizer.step()
      optimizer.zero_grad()
      losses.append(loss.mean().item())
    if log and step % 50 == 0:
      log(f"[ref] step {step}: -ELBO {loss.mean().item():.1f} nats")
  model.eval()
  return losses


def scores(model, x, eval_batch: int) -> dict:
  """Per image, every latent at its mean (use_mode=True), for k = 0 (ELBO) .. L-1 with
  ood-llr.py's decode_from_p: log p(x|z) `[N]`, each latent's KL `[N, n_latents]` (0 where it
  comes from the prior) and the bound `[N]`, as numpy in the model's dtype."""
  torch, oodd = import_oodd()
  criterion = oodd.losses.ELBO()
  out = {}
  with torch.no_grad():
    for k in range(model.n_latents):
      dfp = [True] * k + [False] * (model.n_latents - k)  # ood-llr.py's get_decode_from_p
      log_px, kls, bounds = [], [], []
      for xb in x.split(eval_batch):
        ld, sds = model(xb, use_mode=True, decode_from_p=dfp)
        _, bound, _, _ = elbo_terms(criterion, ld, sds, samples=1, free_nats=0, beta=1,
                                    sample_reduction=None, batch_reduction=None)
        log_px.append(ld.likelihood)
        kls.append(torch.stack([
            torch.zeros(len(xb), dtype=x.dtype) if sd.loss.kl_elementwise is None
            else sd.loss.kl_elementwise.flatten(1).sum(1) for sd in sds], 1))
        bounds.append(bound)
      out.update({f"log_px_k{k}": torch.cat(log_px).numpy(), f"kl_k{k}": torch.cat(kls).numpy(),
                  f"bound_k{k}": torch.cat(bounds).numpy()})
  return out


def scores_f32_f64(model, x, eval_batch: int) -> dict:
  """`scores` in float32 (keys f32_*) and of the same model and inputs in float64 (f64_*),
  how far the reference's own float32 result is from exact. Leaves the model in float64."""
  out = {f"f32_{k}": v for k, v in scores(model, x, eval_batch).items()}
  out.update({f"f64_{k}": v for k, v in scores(model.double(), x.double(), eval_batch).items()})
  return out


def n_params(model) -> int:
  return sum(p.numel() for p in model.parameters())
