"""Compile-only devices of a real accelerator topology, so the dry run compiles with that chip's
own compiler on this CPU (`----topology=v6e:2x4`, `v5p-16`, `h100x8`, `h200x1`).

TPUs: `jax.experimental.topologies.get_topology_desc(topology_name=..., platform="tpu")` (needs
`libtpu`); programs lowered on a mesh of its devices compile with the TPU compiler, whose
`memory_analysis()` and out-of-memory refusals are the chip's. Names are the topology's
("v5p:2x2x2") or the slice names Cloud TPU rents ("v5p-16": v5p counts TensorCores, two a chip;
"v5litepod-8" / "v5e-8" / "v6e-8" count chips). `HBM_BYTES` is what the TPU compiler reports as
available per chip (its refusals name it: "exceeds available HBM (31.25G)").

GPUs: the CUDA plugin (`jax-cuda12-plugin`) compiles for a GPU described by a GpuTargetConfigProto,
with no GPU present: `get_topology_desc(platform="cuda", target_config=<spec>, topology=...)`. The
specs the project ships are in `gpu_specs/` (each file says where its values come from); their
`device_memory_size` is the chip's HBM here. "h100x8" is one host of eight H100 SXM.

Install the compilers at jax's own version: `pip install -e ".[plan]"` (libtpu) and
`pip install -e ".[plan-gpu]"` (the CUDA plugin, which logs a few lines to stderr whenever jax
starts once it is installed).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from dots_jax.config_common import ConfigError

# device_kind -> HBM the TPU compiler makes available per chip (read off its refusals).
HBM_BYTES: dict[str, int] = {
    "TPU v5 lite": int(15.75 * 2**30),  # v5e
    "TPU v5": int(95.74 * 2**30),  # v5p
    "TPU v6 lite": int(31.25 * 2**30),  # v6e
}

# GPU name -> its spec file in gpu_specs/.
GPU_SPECS = {"h100": "h100_sxm.txtpb", "h200": "h200_sxm.txtpb"}
GPUS_PER_HOST = 8

# Cloud TPU slice names: generation -> (topology prefix, units per chip in the name, chips -> shape).
_TORUS_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
             256: "4x8x8", 512: "8x8x8"}
_TORUS_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
             256: "16x16"}
_RENTAL = {"v5p": ("v5p", 2, _TORUS_3D), "v5e": ("v5e", 1, _TORUS_2D),
           "v5litepod": ("v5e", 1, _TORUS_2D), "v6e": ("v6e", 1, _TORUS_2D)}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A named topology's compile-only devices and what each chip holds."""

  name: str  # as the user wrote it
  platform: str  # "tpu" | "cuda"
  devices: list[Any]
  hbm_bytes: int

  @property
  def compiler(self) -> str:
    return "the TPU compiler" if self.platform == "tpu" else "XLA's GPU compiler, CUDA plugin"


def resolve(name: str) -> Topology:
  """The compile-only devices of `name`: a TPU topology or slice name, or `<gpu>x<count>`."""
  gpu = re.fullmatch(r"([a-z]\d+)x(\d+)", name.lower())
  if gpu:
    return _gpu_topology(name, gpu.group(1), int(gpu.group(2)))
  devices = _tpu_devices(name, tpu_topology_name(name))
  return Topology(name, "tpu", devices, hbm_bytes(devices[0].device_kind))


def tpu_topology_name(name: str) -> str:
  """'v5p-16' -> 'v5p:2x2x2', 'v6e-8' -> 'v6e:2x4'; a topology name ('v5p:2x2x2') as it is."""
  m = re.fullmatch(r"(v5p|v5e|v5litepod|v6e)-(\d+)", name.lower())
  if not m:
    return name
  prefix, per_chip, shapes = _RENTAL[m.group(1)]
  units = int(m.group(2))
  if units % per_chip or units // per_chip not in shapes:
    raise ConfigError(f"--topology={name!r}: {m.group(1)} slices are "
                      f"{', '.join(f'{m.group(1)}-{c * per_chip}' for c in shapes)}")
  return f"{prefix}:{shapes[units // per_chip]}"


def _tpu_devices(name: str, topology_name: str) -> list[Any]:
  # Compile-only use holds no chip: let several processes (a test run beside a dry run) load it.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    from jax.experimental import topologies
    desc = topologies.get_topology_desc(topology_name=topology_name, platform="tpu")
  except Exception as e:  # noqa: BLE001 - no libtpu, an unknown name: one line either way
    raise ConfigError(f"--topology={name!r}: no compile-only TPU devices "
                      f"({_first_line(e)}); it needs libtpu (pip install -e \".[plan]\") and a name "
                      "like 'v5p:2x2x2', 'v6e:2x4', 'v5p-16' or a GPU's 'h100x8'") from None
  return list(desc.devices)


def _gpu_topology(name: str, gpu: str, count: int) -> Topology:
  if gpu not in GPU_SPECS:
    raise ConfigError(f"--topology={name!r}: no spec for GPU {gpu!r}; known: "
                      f"{sorted(GPU_SPECS)} (dots_jax/tools/gpu_specs)")
  if count < 1 or (count > GPUS_PER_HOST and count % GPUS_PER_HOST):
    raise ConfigError(f"--topology={name!r}: {count} GPUs; use up to {GPUS_PER_HOST} or "
                      f"a multiple of {GPUS_PER_HOST} (hosts of {GPUS_PER_HOST})")
  spec = gpu_spec(gpu)
  hosts, per_host = (1, count) if count <= GPUS_PER_HOST else (count // GPUS_PER_HOST, GPUS_PER_HOST)
  try:
    from jax.experimental import topologies
    desc = topologies.get_topology_desc(platform="cuda", target_config=spec,
                                        topology=f"1x{hosts}x{per_host}")
  except Exception as e:  # noqa: BLE001 - no CUDA plugin: one line
    raise ConfigError(f"--topology={name!r}: no compile-only GPU devices "
                      f"({_first_line(e)}); it needs the CUDA plugin (pip install -e \".[plan-gpu]\") "
                      "and JAX_PLATFORMS=cpu before jax starts (a CUDA backend that failed to "
                      "start leaves no topology)") from None
  m = re.search(r"device_memory_size:\s*(\d+)", spec)
  return Topology(name, "cuda", list(desc.devices), int(m.group(1)))


def gpu_spec(gpu: str) -> str:
  """The GpuTargetConfigProto text of a shipped GPU spec."""
  with open(os.path.join(os.path.dirname(__file__), "gpu_specs", GPU_SPECS[gpu])) as f:
    return f.read()


def hbm_bytes(device_kind: str) -> int:
  if device_kind not in HBM_BYTES:
    raise ConfigError(f"no HBM size known for {device_kind!r} (dots_jax.tools.topology.HBM_BYTES)")
  return HBM_BYTES[device_kind]


def _first_line(e: Exception) -> str:
  return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
