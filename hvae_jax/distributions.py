import math
import jax, jax.numpy as jnp
LN2 = math.log(2.0)
def softplus_std(pre, min_std=1e-6):
  return jnp.maximum(jax.nn.softplus(LN2 * pre) / LN2, min_std)
def gaussian_log_prob(z, mean, std):
  return -0.5 * jnp.square((z - mean) / std) - jnp.log(std) - 0.5 * math.log(2 * math.pi)
def gaussian_sample(key, mean, std):
  return mean + std * jax.random.normal(key, mean.shape, mean.dtype)
def bernoulli_log_prob(x, logits):
  return x * jax.nn.log_sigmoid(logits) + (1 - x) * jax.nn.log_sigmoid(-logits)
def bernoulli_mean(logits):
  return jax.nn.sigmoid(logits)
def dmol_num_params(c, m):
  return m * 10 if c == 3 else m * 3
