"""Export a trained policy from a run directory as a Hugging Face checkpoint (transformers, vLLM).

  python -m dots_jax.tools.export --workdir=W [--step=S] --out=DIR

Reads W/config.json (written by `dots_jax.main` with the first checkpoint) for the architecture and
the initial policy's tokenizer, restores verified checkpoint S (default: the newest; read only: a
trainer may be writing the run) and writes DIR with config.json, safetensors shards and the
tokenizer files. Prints DIR as the last line.
"""

from __future__ import annotations

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


def main(argv: list[str]) -> None:
  from absl import app, flags
  del argv
  f = flags.FLAGS
  try:
    out = export_workdir(f.workdir, f.out, f.step, f.max_shard_size, f.overwrite)
  except ConfigError as e:
    raise app.UsageError(str(e)) from None
  print(out)


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("workdir", None, "run directory of dots_jax.main", required=True)
  flags.DEFINE_string("out", None, "output Hugging Face directory", required=True)
  flags.DEFINE_integer("step", None, "verified checkpoint step (default: the newest)")
  flags.DEFINE_string("max_shard_size", "5GB", "largest safetensors shard")
  flags.DEFINE_bool("overwrite", False, "write into a non-empty --out (never into a run directory)")
  app.run(main)
