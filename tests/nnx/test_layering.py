"""jaxnorm.nnx is exported lazily and the shared front-end helpers import no Flax."""

import subprocess
import sys

import pytest


def test_nnx_is_imported_on_first_use_and_frontend_needs_no_flax():
  code = ("import sys, jaxnorm, jaxnorm._frontend; assert 'flax' not in sys.modules; "
          "jaxnorm.nnx.BatchNorm; assert 'flax.nnx' in sys.modules; "
          "assert 'jaxnorm.linen' not in sys.modules")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", [
    "AlphaDropout", "BatchNorm", "BatchRenorm", "ClassicDropout", "ConcreteDropoutLinear",
    "DropConnectLinear", "DropPath", "Dropout", "EvoNormB0", "EvoNormS0", "GaussianDropout",
    "GhostBatchNorm", "GroupNorm", "InstanceNorm", "LayerNorm", "RMSNorm", "SpatialDropout",
    "SwitchNorm", "state_from_linen", "state_to_linen"])
def test_public_nnx_names(name):
  import jaxnorm
  assert name in jaxnorm.nnx.__all__ and getattr(jaxnorm.nnx, name) is not None
