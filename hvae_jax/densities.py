"""One-class densities over a vector of per-image statistics (DoSE, Morningstar et al. 2021).

A detector's statistics (ELBO, LLR^{>k}, per-layer terms: `stat_names`) are brought to a
common scale by `Features` and scored by a `Density` fitted on in-distribution reference
images; score = -log density up to a constant (larger = more OOD). Estimators come from
scikit-learn and are stored as their fitted parameters (JSON), so a saved detector scores
exactly as when it was calibrated, whatever scikit-learn version loads it:

* 'mcd': a robust Gaussian (minimum covariance determinant, `MinCovDet`); score = squared
  Mahalanobis distance. In-distribution outliers do not inflate it.
* 'gmm': a Gaussian mixture (`GaussianMixture`, full covariances) whose number of
  components (1..GMM_MAX) is chosen by BIC on the fitted images.
* 'kde': a Gaussian kernel density (`KernelDensity`) whose bandwidth is chosen by 5-fold
  cross-validated likelihood (`GridSearchCV`).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np
from scipy import special, stats
from sklearn.covariance import MinCovDet
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KernelDensity
from sklearn.preprocessing import PowerTransformer

KINDS = ("mcd", "gmm", "kde")
TRANSFORMS = ("standard", "yeo-johnson")
GMM_MAX = 8
_BANDWIDTHS = np.logspace(-1.3, 0.3, 12)  # in units of the standardized features
_DUPLICATE = 0.9999  # |correlation| above which a statistic repeats an earlier one


def informative(x: np.ndarray, names: Sequence[str]) -> tuple[str, ...]:
  """The statistics of `x` `[n, d]` that carry information on in-distribution data: not
  constant (a collapsed latent's KL), not a copy of an earlier one (|corr| > _DUPLICATE: e.g.
  a KL above k that the L^{>k} pass shares with the ELBO pass)."""
  kept: list[int] = []
  for j in range(x.shape[1]):
    col = x[:, j]
    if np.std(col) <= 1e-6 * (1.0 + np.abs(np.mean(col))):
      continue
    if any(abs(np.corrcoef(col, x[:, i])[0, 1]) > _DUPLICATE for i in kept):
      continue
    kept.append(j)
  return tuple(names[j] for j in kept)


@dataclasses.dataclass
class Features:
  """`[n, d]` statistics -> standardized features; 'yeo-johnson' first applies the power
  transform whose exponent per statistic makes its reference most Gaussian (log-like for
  the heavy-tailed KL terms: exponent 0 is log(1 + x)). `precision` is the inverse
  covariance of the reference's features, for `residuals`."""
  transform: str
  lambdas: Optional[np.ndarray]
  center: np.ndarray
  scale: np.ndarray
  precision: Optional[np.ndarray] = None

  @classmethod
  def fit(cls, x: np.ndarray, transform: str) -> "Features":
    if transform not in TRANSFORMS:
      raise ValueError(f"unknown transform {transform!r}: choose one of {TRANSFORMS}.")
    lambdas = None
    if transform == "yeo-johnson":
      lambdas = PowerTransformer("yeo-johnson", standardize=False).fit(x).lambdas_
    y = cls(transform, lambdas, np.zeros(x.shape[1]), np.ones(x.shape[1]))(x)
    center, scale = y.mean(0), np.maximum(y.std(0), 1e-12)
    z = (y - center) / scale
    return cls(transform, lambdas, center, scale, np.linalg.pinv(np.atleast_2d(np.cov(z.T))))

  def residuals(self, z: np.ndarray) -> np.ndarray:
    """`[N, d]` how far each feature of `z` (`[N, d]`, this transform's) lies from what the
    others predict, in standard deviations: (P z)_j / sqrt(P_jj) is the standardized residual
    of regressing feature j on the rest under the reference's Gaussian. Names the statistic
    that makes an image unusual even where each margin alone looks ordinary."""
    p = self.precision
    return np.abs(z @ p) / np.sqrt(np.maximum(np.diag(p), 1e-300))

  def __call__(self, x: np.ndarray) -> np.ndarray:
    y = np.asarray(x, np.float64)
    if self.lambdas is not None:
      y = np.stack([stats.yeojohnson(y[:, j], lmbda=lam) for j, lam in enumerate(self.lambdas)],
                   axis=1)
    return (y - self.center) / self.scale

  def to_json(self) -> dict:
    return {"transform": self.transform, "center": self.center.tolist(),
            "scale": self.scale.tolist(), "precision": self.precision.tolist(),
            "lambdas": None if self.lambdas is None else self.lambdas.tolist()}

  @classmethod
  def from_json(cls, d: dict) -> "Features":
    lam = d["lambdas"]
    return cls(d["transform"], None if lam is None else np.asarray(lam, np.float64),
               np.asarray(d["center"], np.float64), np.asarray(d["scale"], np.float64),
               np.asarray(d["precision"], np.float64))


@dataclasses.dataclass
class Density:
  """A fitted density of `kind` by its parameters; `score` = -log density (+ a constant)."""
  kind: str
  params: dict

  @classmethod
  def fit(cls, kind: str, z: np.ndarray, seed: int = 0) -> "Density":
    """Fitted on the features `z` `[n, d]` of in-distribution reference images."""
    if kind == "mcd":
      m = MinCovDet(random_state=seed).fit(z)
      return cls(kind, {"location": m.location_, "precision": m.get_precision()})
    if kind == "gmm":
      fits = [GaussianMixture(n, covariance_type="full", random_state=seed).fit(z)
              for n in range(1, max(1, min(GMM_MAX, len(z) // (4 * z.shape[1] + 4))) + 1)]
      m = min(fits, key=lambda f: f.bic(z))
      return cls(kind, {"weights": m.weights_, "means": m.means_, "covariances": m.covariances_})
    if kind == "kde":
      search = GridSearchCV(KernelDensity(kernel="gaussian"), {"bandwidth": _BANDWIDTHS}, cv=5)
      bandwidth = float(search.fit(z).best_params_["bandwidth"])
      return cls(kind, {"bandwidth": bandwidth, "points": z})
    raise ValueError(f"unknown density {kind!r}: choose one of {KINDS}.")

  @property
  def summary(self) -> str:
    """What was chosen from the data, in a few words."""
    if self.kind == "gmm":
      return f"{len(self.params['weights'])} components (BIC)"
    if self.kind == "kde":
      return f"bandwidth {self.params['bandwidth']:.3g} (5-fold CV)"
    return "robust Gaussian"

  def score(self, z: np.ndarray) -> np.ndarray:
    """`[N]` -log density of the features `z` `[N, d]` (squared Mahalanobis for 'mcd')."""
    p = self.params
    if self.kind == "mcd":
      d = z - p["location"]
      return np.einsum("ni,ij,nj->n", d, p["precision"], d)
    if self.kind == "gmm":
      logs = [np.log(w) + stats.multivariate_normal(m, c, allow_singular=True).logpdf(z)
              for w, m, c in zip(p["weights"], p["means"], p["covariances"])]
      return -special.logsumexp(np.stack([np.atleast_1d(v) for v in logs]), axis=0)
    kde = KernelDensity(kernel="gaussian", bandwidth=p["bandwidth"]).fit(p["points"])
    return -kde.score_samples(z)

  def to_json(self) -> dict:
    return {"kind": self.kind, **{k: np.asarray(v).tolist() if not np.isscalar(v) else v
                                  for k, v in self.params.items()}}

  @classmethod
  def from_json(cls, d: dict) -> "Density":
    return cls(d["kind"], {k: np.asarray(v, np.float64) if isinstance(v, list) else v
                           for k, v in d.items() if k != "kind"})
