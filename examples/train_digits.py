"""Train the seed MLP (BatchNorm + Dropout) on scikit-learn's digits with jaxnorm.

Dense 128 -> BatchNorm -> ReLU -> Dropout 0.3 -> Dense 64 -> BatchNorm -> ReLU ->
Dropout 0.3 -> Dense 10, SGD (lr 0.1), batch 32, 80/20 split. Runs offline on a CPU in
seconds and prints the loss and accuracy of every epoch.

    python examples/train_digits.py [--epochs 10] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

import jaxnorm


class SeedMLP(nn.Module):
  """The seed network, with jaxnorm's drop-in BatchNorm and Dropout."""

  dropout_rate: float = 0.3

  @nn.compact
  def __call__(self, x, train: bool):
    for width in (128, 64):
      x = nn.Dense(width)(x)
      x = jaxnorm.BatchNorm(use_running_average=not train)(x)
      x = nn.relu(x)
      x = jaxnorm.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(10)(x)


def load_split(seed: int):
  """Digits scaled to [0, 1], shuffled with ``seed``, split 80/20."""
  digits = load_digits()
  x = (digits.data / 16.0).astype(np.float32)
  y = digits.target.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(x))
  n_train = int(0.8 * len(x))
  train, test = order[:n_train], order[n_train:]
  return (x[train], y[train]), (x[test], y[test])


def main(argv=None) -> float:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--lr", type=float, default=0.1)
  args = parser.parse_args(argv)

  (x_train, y_train), (x_test, y_test) = load_split(args.seed)
  model = SeedMLP()
  root = jax.random.key(args.seed)
  init_key, dropout_root, shuffle_root = jax.random.split(root, 3)
  variables = model.init(init_key, x_train[:2], train=False)
  params, batch_stats = variables["params"], variables["batch_stats"]
  optimizer = optax.sgd(args.lr)
  opt_state = optimizer.init(params)
  n_params = sum(p.size for p in jax.tree.leaves(params))
  print(f"seed MLP on digits: {n_params:,} parameters, {len(x_train)} train / "
        f"{len(x_test)} test examples")

  @jax.jit
  def train_step(params, batch_stats, opt_state, x, y, step):
    def loss_fn(params):
      logits, updates = model.apply(
          {"params": params, "batch_stats": batch_stats}, x, train=True,
          mutable=["batch_stats"],
          rngs={"dropout": jax.random.fold_in(dropout_root, step)})
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  @jax.jit
  def accuracy(params, batch_stats, x, y):
    logits = model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)
    return jnp.mean(jnp.argmax(logits, -1) == y)

  steps_per_epoch = len(x_train) // args.batch_size
  step = 0
  start = time.perf_counter()
  for epoch in range(1, args.epochs + 1):
    order = np.asarray(jax.random.permutation(
        jax.random.fold_in(shuffle_root, epoch), len(x_train)))
    losses = []
    for i in range(steps_per_epoch):
      batch = order[i * args.batch_size:(i + 1) * args.batch_size]
      params, batch_stats, opt_state, loss = train_step(
          params, batch_stats, opt_state, x_train[batch], y_train[batch], step)
      losses.append(loss)
      step += 1
    test_acc = float(accuracy(params, batch_stats, x_test, y_test))
    print(f"epoch {epoch:2d}  train loss {float(np.mean(losses)):.4f}  "
          f"test accuracy {test_acc:.4f}")
  print(f"final test accuracy {test_acc:.4f} after {args.epochs} epochs "
        f"({time.perf_counter() - start:.1f} s)")
  return test_acc


if __name__ == "__main__":
  main()
