"""The DOTS stage's programs alone (`tools.plan_dots`), compiled for a topology: the backbone's
embedding pass over the configured mesh and the estimator's step and prediction on one chip, each
with fits / does NOT fit, and a last line that says whether the stage fits (or the embed_batch
that does). The full dry run
(`python -m dots_jax.tools.plan --topology=...`) compiles them with the policy's programs.

  python -m dots_jax.tools.dots_stage --config=configs/qwen7b.py:method=dots_rr --topology=v6e-8
"""

from __future__ import annotations

from typing import Any

import jax
from absl import app, flags
from ml_collections import config_flags

from dots_jax.tools import plan, plan_dots, topology


def main(argv: Any) -> None:
  del argv
  config = _CONFIG.value
  jax.config.update("jax_platforms", "cpu")  # the chips are compile-only; the default backend: CPU
  topo = topology.resolve(_TOPOLOGY.value)
  cfg, _ = plan.policy_shape(config)
  sizes = plan.planned_mesh(config, len(topo.devices))
  backbone, where = plan_dots.backbone_shape(config, cfg)
  print(f"backbone   {where}: {backbone.num_params() / 1e9:.3f}B params in {backbone.dtype}, "
        f"over {dict(sizes)} of {topo.devices[0].device_kind} ({topo.hbm_bytes / 2**30:.2f} GiB "
        "each)", flush=True)
  seq = max(config.data.prompt_buckets) + config.sampling.max_new_tokens
  got = plan.compiled_programs(config, cfg, sizes, seq, devices=topo.devices,
                               hbm_bytes=topo.hbm_bytes, only=tuple(sorted(plan.DOTS_PROGRAMS)))
  if not got:
    raise SystemExit(f"config.method={config.method!r} does not select with DOTS: no DOTS stage")
  verdict = plan_dots.dots_verdict(config, cfg, got, topo, sizes, _MARGIN.value)
  print(f"dots stage {_TOPOLOGY.value}: {verdict}", flush=True)


if __name__ == "__main__":  # flags only when run: tests import this module
  _CONFIG = config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/qwen7b.py")
  _TOPOLOGY = flags.DEFINE_string("topology", None, "TPU topology or slice, or GPUs (v6e-8, "
                                  "v5p:2x2x2, h100x8)", required=True)
  _MARGIN = flags.DEFINE_float("fit_margin", 0.9, "a program fits under this share of HBM")
  app.run(main)
