"""End to end: the seed-mlp network trained with jaxnorm vs a plain PyTorch loop.

784 inputs, batch 32, 4,800 samples, 10 epochs, SGD (lr 0.1), Dense 128 / BN / ReLU /
Dropout 0.3 / Dense 64 / BN / ReLU / Dropout 0.3 / Dense 10. jaxnorm uses the toolkit's
scan-fused epochs; PyTorch a DataLoader with shuffling. "cold" includes compilation
(a fresh model and fresh jit caches), "cold, cache warm" the same after
``jax.clear_caches()`` with JAX's persistent compilation cache filled by the first run
(when the cache is on), "warm" is a further full run.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np
import optax

from jaxnorm import training

if __package__.startswith("jaxnorm."):  # installed: jaxnorm.benchmarks
  from ..experiments.models import SeedMLP
else:  # in a clone: the top-level benchmarks/ beside experiments/
  from experiments.models import SeedMLP

SAMPLES, FEATURES, CLASSES, BATCH, EPOCHS, LR = 4800, 784, 10, 32, 10, 0.1


@dataclasses.dataclass
class EndToEnd:
  epochs: int
  jaxnorm_cold_s: float
  jaxnorm_warm_s: float
  torch_cold_s: float | None = None
  torch_warm_s: float | None = None
  jaxnorm_cold_cached_s: float | None = None


def _data(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.random((SAMPLES, FEATURES), np.float32)
  y = rng.integers(0, CLASSES, SAMPLES).astype(np.int32)
  return x, y


class _JaxnormTrainer:
  """The seed network with one compiled epoch function, reused by every run."""

  def __init__(self):
    self.model = SeedMLP()
    self.tx = optax.sgd(LR)
    self.run_epoch = training.make_scan_epoch(training.make_train_step(), BATCH)

  def run(self, x, y, epochs) -> float:
    """Seconds for a full training run from a fresh initial state."""
    start = time.perf_counter()
    variables = self.model.init(jax.random.key(0), x[:2], train=False)
    state = training.TrainState.create(
        apply_fn=self.model.apply, params=variables["params"],
        batch_stats=variables["batch_stats"], tx=self.tx, rng=jax.random.key(1))
    x_dev, y_dev = jax.device_put(x), jax.device_put(y)
    for epoch in range(epochs):
      state, metrics = self.run_epoch(state, x_dev, y_dev,
                                      jax.random.fold_in(jax.random.key(2), epoch))
    jax.block_until_ready((state, metrics))
    return time.perf_counter() - start


def _torch_run(torch, x, y, epochs) -> float:
  start = time.perf_counter()
  nn = torch.nn
  torch.manual_seed(0)
  model = nn.Sequential(
      nn.Linear(FEATURES, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.3),
      nn.Linear(128, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.3),
      nn.Linear(64, CLASSES))
  optimizer = torch.optim.SGD(model.parameters(), lr=LR)
  loader = torch.utils.data.DataLoader(
      torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y).long()),
      batch_size=BATCH, shuffle=True, drop_last=True)
  loss_fn = nn.CrossEntropyLoss()
  model.train()
  for _ in range(epochs):
    for xb, yb in loader:
      optimizer.zero_grad()
      loss_fn(model(xb), yb).backward()
      optimizer.step()
  return time.perf_counter() - start


def run(quick: bool, torch=None, persistent_cache: bool = False) -> EndToEnd:
  epochs = 2 if quick else EPOCHS
  x, y = _data()
  jax.clear_caches()
  cold = _JaxnormTrainer().run(x, y, epochs)
  cold_cached = None
  if persistent_cache:
    jax.clear_caches()
    cold_cached = _JaxnormTrainer().run(x, y, epochs)
  trainer = _JaxnormTrainer()
  trainer.run(x, y, epochs)
  result = EndToEnd(epochs, cold, trainer.run(x, y, epochs),
                    jaxnorm_cold_cached_s=cold_cached)
  if torch is not None:
    result.torch_cold_s = _torch_run(torch, x, y, epochs)
    result.torch_warm_s = _torch_run(torch, x, y, epochs)
  return result
