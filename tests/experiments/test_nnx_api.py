"""``python -m experiments run seed-mlp --api nnx``: the NNX seed network and its runs."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import nnx

from experiments import seed_mlp
from experiments.__main__ import _check_run_arguments, build_parser
from experiments.models import SeedMLP, SeedMLPNNX, parameter_count
from experiments.spec import RunContext


@pytest.mark.parametrize("options", list(seed_mlp.VARIANTS.values()),
                         ids=list(seed_mlp.VARIANTS))
def test_nnx_network_has_the_linen_parameters(options):
  model = SeedMLPNNX(64, num_classes=10, **options, rngs=nnx.Rngs(0))
  shapes = sorted(v.shape for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
  linen = jax.eval_shape(lambda: SeedMLP(num_classes=10, **options).init(
      jax.random.key(0), np.zeros((2, 64), np.float32), train=False))["params"]
  assert shapes == sorted(leaf.shape for leaf in jax.tree.leaves(linen))
  assert sum(int(np.prod(s)) for s in shapes) == parameter_count(
      SeedMLP(num_classes=10, **options), (2, 64))


def test_api_flag_parses_and_applies_to_seed_mlp_only():
  parser = build_parser()
  assert parser.parse_args(["run", "seed-mlp"]).api is None
  args = parser.parse_args(["run", "seed-mlp", "--api", "nnx"])
  assert args.api == "nnx" and _check_run_arguments(args) is None
  with pytest.raises(SystemExit):
    parser.parse_args(["run", "seed-mlp", "--api", "haiku"])


def test_quick_nnx_run_learns_and_records_the_api(tmp_path, capsys, monkeypatch):
  variants = {name: seed_mlp.VARIANTS[name] for name in ("plain", "+BN+Dropout")}
  monkeypatch.setattr(seed_mlp, "VARIANTS", variants)   # two of the four, to save time
  ctx = RunContext(out_dir=str(tmp_path), quick=True, seeds=2, epochs=1, api="nnx")
  payload = seed_mlp.run(ctx)
  stdout = capsys.readouterr().out
  assert "seed-mlp on digits (flax.nnx): 1 epochs" in stdout
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["api"] == payload["api"] == "nnx"
  assert sorted({run["variant"] for run in saved["runs"]}) == sorted(variants)
  assert [run["seed"] for run in saved["runs"]] == [0, 1, 0, 1]
  for run in saved["runs"]:   # one epoch on digits: far above chance (0.1)
    assert run["test_accuracy"] > 0.5 and run["skipped_steps"] == 0
    assert len(run["curves"]["test_accuracy"]) == 1
