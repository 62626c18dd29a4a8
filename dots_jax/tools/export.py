"""Export a trained policy from a run directory as a Hugging Face checkpoint (transformers, vLLM).

  python -m dots_jax.tools.export --workdir=W [--step=S] --out=DIR

Reads W/config.json (written by `dots_jax.main` at start-up) for the architecture and the initial
policy's tokenizer, restores checkpoint S (default: the latest) and writes DIR with config.json,
safetensors shards and the tokenizer files. Prints DIR as the last line.
"""

from __future__ import annotations

import argparse
import sys

from flax import nnx

from dots_jax import fs
from dots_jax.config_common import ConfigError
from dots_jax.model import hf_io
from dots_jax.run.workdir import holds_run, load_trained


def export_workdir(workdir: str, out_dir: str, step: int | None = None,
                   max_shard_size: str = "5GB", overwrite: bool = False) -> str:
  """Writes checkpoint `step` of `workdir` to `out_dir` as a HF directory; returns out_dir. A
  directory that holds a run is always refused (its config.json would be replaced); one that holds
  any other files only with `overwrite`."""
  if fs.exists(out_dir):
    if fs.absolute(out_dir) == fs.absolute(workdir) or holds_run(out_dir):
      raise ConfigError(f"--out={out_dir} holds a run directory (config.json, checkpoints or "
                        "metrics): exporting there would replace the run's config; choose another "
                        "--out")
    if fs.listdir(out_dir) and not overwrite:
      raise ConfigError(f"--out={out_dir} is not empty ({len(fs.listdir(out_dir))} entries); pass "
                        "--overwrite to replace its config.json and weights, or choose another --out")
  trained = load_trained(workdir, step)
  model = nnx.merge(trained.graphdef, trained.params)
  return hf_io.export_policy(trained.qcfg, model, out_dir, tokenizer_dir=trained.tokenizer_dir,
                             max_shard_size=max_shard_size)


def main(argv: list[str] | None = None) -> str:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--workdir", required=True, help="run directory of dots_jax.main")
  p.add_argument("--out", required=True, help="output Hugging Face directory")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  p.add_argument("--max_shard_size", default="5GB")
  p.add_argument("--overwrite", action="store_true",
                 help="write into a non-empty --out (never into a run directory)")
  args = p.parse_args(argv)
  try:
    out = export_workdir(args.workdir, args.out, args.step, args.max_shard_size, args.overwrite)
  except ConfigError as e:
    p.error(str(e))
  print(out)
  return out


if __name__ == "__main__":
  main(sys.argv[1:])
