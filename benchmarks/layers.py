"""Per-layer benchmarks: jaxnorm vs flax.linen (defaults) vs PyTorch on the CPU.

Forward and forward+backward (the VJP w.r.t. the input and the parameters, for a given
output cotangent), jit-compiled, at each shape and dtype; plus the memory floor (one
fused read+write pass over ``x``) and XLA's compiled temporary memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxnorm
from .timing import interleaved_medians, jax_runner

SHAPES = ((4096, 1024), (8192, 256), (64, 32, 32, 128))
QUICK_SHAPES = ((512, 256),)
DTYPES = ("float32", "bfloat16")

#: Transfers of x-sized arrays the arithmetic strictly needs, in passes (one pass =
#: one read + one write of x, what the memory-floor copy does). Forward of a
#: normalization: read x for the statistics, read x and write y = 3 transfers = 1.5
#: passes. Forward+backward (y not kept): read x (statistics), read x and dy (the two
#: reductions of the backward), read x and dy and write dx = 6 transfers = 3 passes.
#: Dropout: read x, write y (1 pass); its backward regenerates the mask from the key:
#: read dy, write dx (1 pass).
MIN_PASSES = {"forward": {"batch_norm": 1.5, "layer_norm": 1.5, "group_norm": 1.5,
                          "rms_norm": 1.5, "dropout": 1.0},
              "forward+backward": {"batch_norm": 3.0, "layer_norm": 3.0,
                                   "group_norm": 3.0, "rms_norm": 3.0, "dropout": 1.0}}


@dataclasses.dataclass(frozen=True)
class Layer:
  """A layer with its jaxnorm and flax.linen modules (same arguments)."""

  name: str
  jaxnorm_module: nn.Module
  flax_module: nn.Module
  torch_fn: Callable | None  # (torch) -> (x, weight, bias, training) -> y


def _torch_layers():
  return {
      "batch_norm": lambda F, x, w, b: F.batch_norm(
          x.reshape(-1, x.shape[-1]), None, None, w, b, training=True),
      "layer_norm": lambda F, x, w, b: F.layer_norm(x, (x.shape[-1],), w, b),
      "group_norm": lambda F, x, w, b: F.group_norm(
          x.reshape(x.shape[0], -1, x.shape[-1]).transpose(1, 2), 32, w, b),
      "rms_norm": lambda F, x, w, b: F.rms_norm(x, (x.shape[-1],), w, eps=1e-6),
      "dropout": lambda F, x, w, b: F.dropout(x, 0.5, training=True),
  }


def layers() -> list[Layer]:
  torch = _torch_layers()
  return [
      Layer("batch_norm", jaxnorm.BatchNorm(use_running_average=False),
            nn.BatchNorm(use_running_average=False), torch["batch_norm"]),
      Layer("layer_norm", jaxnorm.LayerNorm(), nn.LayerNorm(), torch["layer_norm"]),
      Layer("group_norm", jaxnorm.GroupNorm(num_groups=32), nn.GroupNorm(num_groups=32),
            torch["group_norm"]),
      Layer("rms_norm", jaxnorm.RMSNorm(), nn.RMSNorm(), torch["rms_norm"]),
      Layer("dropout", jaxnorm.Dropout(0.5, deterministic=False),
            nn.Dropout(0.5, deterministic=False), torch["dropout"]),
  ]


def _jax_functions(module: nn.Module, x):
  """(forward, forward+backward, params) for a flax-style module on ``x``."""
  variables = module.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x)
  params = variables.get("params", {})
  state = {k: v for k, v in variables.items() if k != "params"}
  rngs = {"dropout": jax.random.key(2)}

  def forward(params, x):
    return module.apply({"params": params, **state}, x, rngs=rngs,
                        mutable=list(state) or False)

  def output(params, x):
    out = forward(params, x)
    return out[0] if state else out

  def forward_backward(params, x, dy):
    y, vjp = jax.vjp(output, params, x)
    return vjp(dy.astype(y.dtype))  # flax may return float32 for bfloat16 input

  return forward, forward_backward, params


def copy_pass(x):
  """The memory floor: one fused read + write pass over ``x``."""
  return x * 2 + 1


@dataclasses.dataclass
class Row:
  layer: str
  shape: tuple[int, ...]
  dtype: str
  mode: str
  jaxnorm_s: float
  flax_s: float
  torch_s: float | None
  floor_s: float
  jaxnorm_temp_bytes: int | None = None
  flax_temp_bytes: int | None = None

  @property
  def flax_over_jaxnorm(self) -> float:
    return self.flax_s / self.jaxnorm_s

  @property
  def torch_over_jaxnorm(self) -> float | None:
    return None if self.torch_s is None else self.torch_s / self.jaxnorm_s

  @property
  def passes(self) -> float:
    return self.jaxnorm_s / self.floor_s


def _torch_candidates(torch, layer: Layer, x_np, dtype: str):
  """(forward, forward+backward) runners for PyTorch, or (None, None)."""
  if torch is None or layer.torch_fn is None:
    return None, None
  functional = torch.nn.functional
  torch_dtype = getattr(torch, dtype)
  x = torch.from_numpy(np.array(x_np, np.float32)).to(torch_dtype)
  channels = x.shape[-1]
  w = torch.ones(channels, dtype=torch_dtype, requires_grad=True)
  b = torch.zeros(channels, dtype=torch_dtype, requires_grad=True)
  x_grad = x.clone().requires_grad_(True)
  try:
    reference = layer.torch_fn(functional, x, w, b)
  except RuntimeError:
    return None, None  # e.g. an op without a bf16 CPU kernel
  dy = torch.ones_like(reference)

  def forward():
    with torch.no_grad():
      layer.torch_fn(functional, x, w, b)

  def forward_backward():
    y = layer.torch_fn(functional, x_grad, w, b)
    torch.autograd.grad(y, (x_grad, w, b), dy, allow_unused=True)

  return forward, forward_backward


def run(quick: bool, torch=None, log=print) -> list[Row]:
  """Benchmarks every layer at every shape and dtype; returns one row per case."""
  shapes = QUICK_SHAPES if quick else SHAPES
  dtypes = DTYPES[:1] if quick else DTYPES
  repeats = 5 if quick else 15
  rows = []
  for shape in shapes:
    for dtype in dtypes:
      x = jax.random.normal(jax.random.key(0), shape, jnp.float32).astype(dtype)
      dy = jax.random.normal(jax.random.key(1), shape, jnp.float32).astype(dtype)
      floor = interleaved_medians({"copy": jax_runner(copy_pass, x)[0]}, repeats)["copy"]
      for layer in layers():
        jn_fwd, jn_bwd, jn_params = _jax_functions(layer.jaxnorm_module, x)
        fx_fwd, fx_bwd, fx_params = _jax_functions(layer.flax_module, x)
        t_fwd, t_bwd = _torch_candidates(torch, layer, x.astype(jnp.float32), dtype)
        for mode, (jn, fx, tt, args_jn, args_fx) in {
            "forward": (jn_fwd, fx_fwd, t_fwd, (jn_params, x), (fx_params, x)),
            "forward+backward": (jn_bwd, fx_bwd, t_bwd, (jn_params, x, dy),
                                 (fx_params, x, dy)),
        }.items():
          (run_jn, mem_jn), (run_fx, mem_fx) = jax_runner(jn, *args_jn), jax_runner(fx, *args_fx)
          candidates = {"jaxnorm": run_jn, "flax": run_fx}
          if tt is not None:
            candidates["torch"] = tt
          medians = interleaved_medians(candidates, repeats)
          row = Row(layer.name, shape, dtype, mode, medians["jaxnorm"], medians["flax"],
                    medians.get("torch"), floor)
          if mode == "forward+backward":
            row.jaxnorm_temp_bytes, row.flax_temp_bytes = mem_jn, mem_fx
          rows.append(row)
          log(f"  {layer.name:<10} {str(shape):<18} {dtype:<8} {mode:<16} jaxnorm "
              f"{row.jaxnorm_s * 1e3:7.2f} ms  flax x{row.flax_over_jaxnorm:5.2f}"
              + (f"  torch x{row.torch_over_jaxnorm:5.2f}" if row.torch_s else ""))
  return rows
