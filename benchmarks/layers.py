"""Per-layer benchmarks: jaxnorm vs its fused kernels vs flax.linen vs PyTorch (CPU).

Forward and forward+backward (the VJP w.r.t. the input and the parameters, for a given
output cotangent), jit-compiled, at each shape and dtype; plus the memory floor (one
fused read+write pass over ``x``), XLA's compiled temporary memory and the page faults
per call. Candidates: ``jaxnorm`` (the pure-JAX functional path, as the layers run
today), ``kernels`` (the same layer through ``jaxnorm.kernels.normalize``, the fused
C++ kernels), ``before`` (dropout only: the mask drawn by ``jax.random.bernoulli``, as
jaxnorm did before its fused sampler), ``flax`` and ``torch``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxnorm
from jaxnorm import kernels
from .timing import cpu_per_call, faults_per_call, interleaved_medians, jax_runner

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
  kernel_fn: Callable | None = None  # (params, x) -> y through jaxnorm.kernels
  before_fn: Callable | None = None  # (params, x) -> y as jaxnorm computed it before


def _kernel_batch_norm(params, x):
  axes = tuple(range(x.ndim - 1))
  y, mean, var, _ = kernels.normalize(x, params["scale"], params["bias"], reduce_axes=axes,
                                      epsilon=1e-5)
  # The running statistics' update, as the modules return it.
  return y, (0.99 * jnp.zeros_like(mean) + 0.01 * mean, 0.99 + 0.01 * var)


def _kernel_layer_norm(params, x):
  return kernels.normalize(x, params["scale"], params["bias"], reduce_axes=(x.ndim - 1,),
                           epsilon=1e-6)[0]


def _kernel_rms_norm(params, x):
  return kernels.normalize(x, params["scale"], None, reduce_axes=(x.ndim - 1,),
                           epsilon=1e-6, center=False)[0]


def _kernel_group_norm(params, x, groups=32):
  channels = x.shape[-1]
  grouped = x.reshape(x.shape[:-1] + (groups, channels // groups))
  axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)
  param_shape = (groups, channels // groups)
  y = kernels.normalize(grouped, params["scale"].reshape(param_shape),
                        params["bias"].reshape(param_shape), reduce_axes=axes,
                        epsilon=1e-6)[0]
  return y.reshape(x.shape)


def _before_dropout(params, x, rate=0.5):
  del params
  keep = jax.random.bernoulli(jax.random.key(2), 1.0 - rate, x.shape)
  return jax.lax.select(keep, x / (1.0 - rate), jnp.zeros_like(x))


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
            nn.BatchNorm(use_running_average=False), torch["batch_norm"],
            kernel_fn=_kernel_batch_norm),
      Layer("layer_norm", jaxnorm.LayerNorm(), nn.LayerNorm(), torch["layer_norm"],
            kernel_fn=_kernel_layer_norm),
      Layer("group_norm", jaxnorm.GroupNorm(num_groups=32), nn.GroupNorm(num_groups=32),
            torch["group_norm"], kernel_fn=_kernel_group_norm),
      Layer("rms_norm", jaxnorm.RMSNorm(), nn.RMSNorm(), torch["rms_norm"],
            kernel_fn=_kernel_rms_norm),
      Layer("dropout", jaxnorm.Dropout(0.5, deterministic=False),
            nn.Dropout(0.5, deterministic=False), torch["dropout"],
            before_fn=_before_dropout),
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


def _plain_functions(fn, params):
  """(forward, forward+backward, params) for ``fn(params, x)``."""

  def output(params, x):
    out = fn(params, x)
    return out[0] if isinstance(out, tuple) else out

  def forward_backward(params, x, dy):
    y, vjp = jax.vjp(output, params, x)
    return vjp(dy.astype(y.dtype))

  return fn, forward_backward, params


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
  kernel_s: float | None = None      # the layer through jaxnorm.kernels
  before_s: float | None = None      # dropout as jaxnorm drew its mask before
  kernel_temp_bytes: int | None = None
  faults: dict | None = None         # minor page faults per call, per candidate
  tuned: dict | None = None          # seconds per candidate with the tuned allocator
  cpu: dict | None = None            # CPU seconds (all threads) per call, per candidate

  @property
  def best_s(self) -> float:
    """jaxnorm's time on its fastest path (the kernels when they were measured)."""
    return min(t for t in (self.jaxnorm_s, self.kernel_s) if t is not None)

  @property
  def flax_over_jaxnorm(self) -> float:
    return self.flax_s / self.jaxnorm_s

  @property
  def torch_over_jaxnorm(self) -> float | None:
    return None if self.torch_s is None else self.torch_s / self.jaxnorm_s

  @property
  def passes(self) -> float:
    return self.jaxnorm_s / self.floor_s

  @property
  def kernel_passes(self) -> float | None:
    return None if self.kernel_s is None else self.kernel_s / self.floor_s


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


def run(quick: bool, torch=None, log=print, shapes=None, dtypes=None,
        repeats=None) -> list[Row]:
  """Benchmarks every layer at every shape and dtype; returns one row per case."""
  shapes = shapes or (QUICK_SHAPES if quick else SHAPES)
  dtypes = dtypes or (DTYPES[:1] if quick else DTYPES)
  repeats = repeats or (5 if quick else 11)
  use_kernels = kernels.enabled()
  rows = []
  for shape in shapes:
    for dtype in dtypes:
      x = jax.random.normal(jax.random.key(0), shape, jnp.float32).astype(dtype)
      dy = jax.random.normal(jax.random.key(1), shape, jnp.float32).astype(dtype)
      floor_run = jax_runner(copy_pass, x)[0]
      for layer in layers():
        jn_fwd, jn_bwd, jn_params = _jax_functions(layer.jaxnorm_module, x)
        fx_fwd, fx_bwd, fx_params = _jax_functions(layer.flax_module, x)
        t_fwd, t_bwd = _torch_candidates(torch, layer, x.astype(jnp.float32), dtype)
        extra = {}
        if layer.kernel_fn is not None and use_kernels:
          extra["kernels"] = _plain_functions(layer.kernel_fn, jn_params)
        if layer.before_fn is not None:
          extra["before"] = _plain_functions(layer.before_fn, jn_params)
        for mode in ("forward", "forward+backward"):
          with_dy = mode == "forward+backward"
          pick = 1 if with_dy else 0
          runs, temps = {}, {}
          for name, fns in [("jaxnorm", (jn_fwd, jn_bwd, jn_params)),
                            ("flax", (fx_fwd, fx_bwd, fx_params))] + list(extra.items()):
            args = (fns[2], x, dy) if with_dy else (fns[2], x)
            runs[name], temps[name] = jax_runner(fns[pick], *args)
          tt = t_bwd if with_dy else t_fwd
          if tt is not None:
            runs["torch"] = tt
          runs["floor"] = floor_run  # in the same rounds: passes compare like with like
          medians = interleaved_medians(runs, repeats)
          row = Row(layer.name, shape, dtype, mode, medians["jaxnorm"], medians["flax"],
                    medians.get("torch"), medians["floor"], kernel_s=medians.get("kernels"),
                    before_s=medians.get("before"))
          row.faults = {name: faults_per_call(fn) for name, fn in runs.items()}
          row.cpu = {name: cpu_per_call(fn) for name, fn in runs.items()}
          if with_dy:
            row.jaxnorm_temp_bytes, row.flax_temp_bytes = temps["jaxnorm"], temps["flax"]
            row.kernel_temp_bytes = temps.get("kernels")
          rows.append(row)
          log(f"  {layer.name:<10} {str(shape):<18} {dtype:<8} {mode:<16} jaxnorm "
              f"{row.jaxnorm_s * 1e3:7.2f} ms"
              + (f"  kernels {row.kernel_s * 1e3:7.2f} ms" if row.kernel_s else "")
              + (f"  before {row.before_s * 1e3:7.2f} ms" if row.before_s else "")
              + f"  flax x{row.flax_s / row.best_s:5.2f}"
              + (f"  torch x{row.torch_s / row.best_s:5.2f}" if row.torch_s else ""))
  return rows
