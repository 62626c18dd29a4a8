"""What each remat policy saves: the update of a stack of Qwen2.5-shaped blocks, compiled once per rung
of `plan.REMAT_LADDER`, its temporaries per device against the same program without remat.

  python -m dots_jax.bench.remat --layers 8 --seq 2048                  # host CPU devices, scanned
  python -m dots_jax.bench.remat --layers 8 --seq 2048 --unrolled
  python -m dots_jax.bench.remat --layers 16 --seq 8192 --hidden 1024 --topology v5e:2x2   # TPU compiler

Blocks have Qwen2.5-1.5B's shapes by default (hidden 1536, MLP 8960, 12 heads, 2 KV heads) in
bfloat16 over a small vocabulary (the stack, not the head), `--micro` rows per data shard, data
parallel over `--devices` host devices or the topology's chips (docs/MEMORY.md).
"""

from __future__ import annotations

from absl import app, flags
from typing import Any
import os
import time


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """This benchmark's flags (on `fv`; tests parse their own)."""
  flags.DEFINE_integer("layers", 8, 'layers', flag_values=fv)
  flags.DEFINE_integer("seq", 2048, 'seq', flag_values=fv)
  flags.DEFINE_integer("hidden", 1536, 'hidden', flag_values=fv)
  flags.DEFINE_integer("intermediate", 0, "0: Qwen2.5-1.5B's ratio (8960/1536)", flag_values=fv)
  flags.DEFINE_integer("heads", 12, 'heads', flag_values=fv)
  flags.DEFINE_integer("kv_heads", 2, 'kv heads', flag_values=fv)
  flags.DEFINE_integer("micro", 1, 'rows per data shard in a micro-batch', flag_values=fv)
  flags.DEFINE_integer("devices", 8, 'host CPU devices (no --topology)', flag_values=fv)
  flags.DEFINE_string("topology", '', 'compile for these chips (dots_jax.tools.topology)', flag_values=fv)
  flags.DEFINE_bool("unrolled", False, 'unrolled blocks instead of a scan', flag_values=fv)


def main(argv: list[str]) -> None:
  del argv
  run(flags.FLAGS)


def run(args: Any) -> list[dict[str, float]]:
  """The benchmark with parsed flags `args` (attribute access)."""
  if args.hidden % args.heads or (args.hidden // args.heads) % 2 or args.heads % args.kv_heads:
    raise app.UsageError(f"--hidden {args.hidden} / --heads {args.heads} must give an even head "
                         f"size, and --kv_heads {args.kv_heads} must divide --heads")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  if not args.topology:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={args.devices}")
  from dots_jax.config_base import base_config
  from dots_jax.config_common import policy_runtime
  from dots_jax.model import qwen2
  from dots_jax.tools import plan, topology
  import jax

  devices = topology.resolve(args.topology).devices if args.topology else jax.devices()
  n = len(devices)
  c = base_config()
  c.rl.batch_questions, c.sampling.group_size, c.rl.mini_batches = n * args.micro, 1, 1
  c.rl.micro_batch = n * args.micro
  inter = args.intermediate or round(args.hidden * 8960 / 1536)
  rows = []
  for remat, policy in plan.REMAT_LADDER:
    c.model.update(dtype="bfloat16", remat=remat, remat_policy=policy,
                   scan_layers=not args.unrolled, attn_chunk=min(512, args.seq))
    cfg = qwen2.Qwen2Config(
        vocab_size=1024, hidden_size=args.hidden, intermediate_size=inter,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, **policy_runtime(c))
    t0 = time.perf_counter()
    got = plan.compiled_programs(c, cfg, {"data": n, "fsdp": 1, "tensor": 1}, args.seq,
                                 devices=devices, only=("update",), quiet=True)["update"]
    rows.append({"remat": remat, "policy": policy if remat else "off", "temp": got["temp"],
                 "compiled": got["compiled"], "compile_s": time.perf_counter() - t0})
  base = rows[0]["temp"]
  where = args.topology or f"{n} host CPU devices"
  print(f"update of {args.layers} {'unrolled' if args.unrolled else 'scanned'} blocks, hidden "
        f"{args.hidden}, {args.micro} x {args.seq} tokens per device, on {where}:")
  for r in rows:
    print(f"  remat {r['policy']:34s} temporaries {r['temp'] / 2**30:7.2f} GiB "
          f"({r['temp'] / base:.2f}x no remat), compiled {r['compiled'] / 2**30:.2f} GiB, "
          f"{r['compile_s']:.0f} s to compile")
  return rows


if __name__ == "__main__":
  define_flags()
  app.run(main)
