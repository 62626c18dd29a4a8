"""Rebuilds the tiny base policy of a config's recipe (default: the shipped one, from configs/tiny.py).

  python -m dots_jax.tiny.build_base --config=configs/tiny.py [--out=DIR]

Without --out it replaces the package's shipped base (dots_jax/assets/tiny_base), recording the
recipe's fingerprint and every file's digest; tests/test_tiny.py holds that fingerprint to
configs/tiny.py's recipe. The builder is deterministic: on one machine a rebuild is byte-identical.
"""

from typing import Any

from dots_jax.policy.tiny_base import SHIPPED_DIR, build_into
from dots_jax.run import settings


def main(argv: Any) -> None:
  del argv
  recipe = settings.read(_CONFIG.value).tiny
  if recipe is None:
    raise SystemExit("dots_jax.tiny.build_base: the config has no tiny base recipe (`tiny` section)")
  out = _OUT.value or SHIPPED_DIR
  print(f"building the tiny base of recipe {recipe.key} into {out}")
  info = build_into(recipe, out, log=print, replace=True)
  print(f"wrote {out}: {len(info['files'])} files, SFT loss {info['sft_final_loss']:.4f} in "
        f"{info['sft_seconds']:.0f}s")


if __name__ == "__main__":  # flags only when run as a command (other modules define --config too)
  from absl import app, flags
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file(
      "config", "configs/tiny.py", "config file whose recipe (tiny.*, data.synthetic, prompt "
      "format) makes the base")
  _OUT = flags.DEFINE_string("out", "", "output directory (default: the package's shipped base, "
                             "dots_jax/assets/tiny_base)")
  app.run(main)
