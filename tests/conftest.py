"""Test configuration: 8 simulated CPU devices for the cross-device tests.

XLA reads the flag once, when JAX initializes its backend, so it is set here, before any
test module imports JAX.
"""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
