"""The README's Python examples run as written (in order, in one namespace)."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_python_blocks_run():
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
  assert len(blocks) >= 3
  namespace = {}
  for number, block in enumerate(blocks, start=1):
    # Line numbers count from the block's start, so the name says which block it is.
    exec(compile(block, f"{README} (python block {number})", "exec"), namespace)  # noqa: S102
  # The example trained one step and produced finite logits for 10 classes.
  assert namespace["logits"].shape == (32, 10)
  assert bool(namespace["jnp"].isfinite(namespace["loss"]))
  assert namespace["new_stats"].mean.shape == (64,)
