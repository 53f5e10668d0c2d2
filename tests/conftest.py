"""Test-session set-up: 8 simulated CPU devices for the multi-device tests.

XLA reads the flag once, when JAX starts, so it is set here, before any test module imports JAX.
Single-device code is unaffected: it runs on device 0.
"""

import os

_DEVICES_FLAG = "--xla_force_host_platform_device_count"
if _DEVICES_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICES_FLAG}=8".strip()
