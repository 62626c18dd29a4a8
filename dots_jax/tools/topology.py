"""Compile-only devices of a real accelerator topology, so the dry run compiles with that chip's
own compiler on this CPU (`--config.plan_topology=v6e:2x4`; needs `libtpu`: `pip install -e
".[tpu]"`, or `pip install "jax[tpu]==<jax version>"`).

`jax.experimental.topologies.get_topology_desc(topology_name=..., platform="tpu")` gives the devices;
programs lowered on a mesh of them compile with the TPU compiler, whose `memory_analysis()` and
out-of-memory refusals are the chip's. `HBM_BYTES` is what that compiler reports as available per
chip (its refusals name it: "exceeds available HBM (31.25G)").
"""

from __future__ import annotations

import os
from typing import Any

from dots_jax.config_common import ConfigError

# device_kind -> HBM the TPU compiler makes available per chip (read off its refusals).
HBM_BYTES: dict[str, int] = {
    "TPU v5 lite": int(15.75 * 2**30),  # v5e
    "TPU v5": int(95.74 * 2**30),  # v5p
    "TPU v6 lite": int(31.25 * 2**30),  # v6e
}


def topology_devices(name: str) -> list[Any]:
  """The compile-only devices of TPU topology `name` (e.g. "v5p:2x2x2", "v6e:2x4")."""
  # Compile-only use holds no chip: let several processes (a test run beside a dry run) load it.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    from jax.experimental import topologies
    desc = topologies.get_topology_desc(topology_name=name, platform="tpu")
  except Exception as e:  # noqa: BLE001 - no libtpu, an unknown name: one line either way
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    raise ConfigError(f"config.plan_topology={name!r}: no compile-only TPU devices ({first}); it "
                      "needs libtpu (pip install -e \".[tpu]\") and a name like 'v5p:2x2x2' or "
                      "'v6e:2x4'") from None
  return list(desc.devices)


def hbm_bytes(device_kind: str) -> int:
  if device_kind not in HBM_BYTES:
    raise ConfigError(f"no HBM size known for {device_kind!r} (dots_jax.tools.topology.HBM_BYTES)")
  return HBM_BYTES[device_kind]
