"""Compiling a lowered program and reading what it needs: the per-device bytes of XLA's
`memory_analysis()`, or the bytes a compiler that refused it for want of memory wanted and had,
and the dry run's line for it (`dots_jax.tools.plan`, `dots_jax.tools.plan_dots`)."""

from __future__ import annotations

import re
import time
from typing import Any


def measure_program(lower: Any, estimate: int, hbm_bytes: int = 0, resident: int = 0
                    ) -> dict[str, Any]:
  """Compiles `lower()` and returns its per-device bytes from `memory_analysis()` (arguments +
  outputs - aliased + temporaries, + `resident`: bytes that stay on the device beside the program
  without being its argument) beside `estimate` (which counts `resident` too); with `hbm_bytes`,
  whether it fits. A compiler that refuses the program for want of memory gives `fits: False`
  with the bytes it wanted and had; any other error propagates."""
  estimate += resident
  t0 = time.perf_counter()
  try:
    ma = lower().compile().memory_analysis()
  except Exception as e:  # noqa: BLE001 - only the compiler's out-of-memory refusal is a result
    refusal = out_of_memory(e)
    if refusal is None:
      raise
    return {"fits": False, "compiled": None, "estimated": int(estimate), **refusal,
            "compile_s": round(time.perf_counter() - t0, 1)}
  compiled = (ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes
              + ma.temp_size_in_bytes + resident)
  out = {"compiled": int(compiled), "estimated": int(estimate),
         "temp": int(ma.temp_size_in_bytes), "arguments": int(ma.argument_size_in_bytes),
         "outputs": int(ma.output_size_in_bytes), "aliased": int(ma.alias_size_in_bytes),
         "resident": int(resident),
         "generated_code": int(getattr(ma, "generated_code_size_in_bytes", 0)),
         "compile_s": round(time.perf_counter() - t0, 1)}
  if hbm_bytes:
    out["fits"] = compiled <= hbm_bytes
  return out


def within(p: dict[str, Any] | None, limit: float) -> bool:
  """Whether a measured program (None: not compiled, nothing to fit) compiled to at most `limit`
  bytes; a refused one never does."""
  return p is None or (p.get("compiled") is not None and p["compiled"] <= limit)


def program_line(name: str, p: dict[str, Any], hbm_bytes: int) -> str:
  """The dry run's line for one measured program."""
  g = lambda n: f"{n / 2**30:.2f}"
  if p["compiled"] is None:
    return (f"program    {name}: does NOT fit: the compiler needs {g(p['wanted'])} GiB of "
            f"temporaries, the chip has {g(p['available'])} GiB; {g(p['estimated'])} GiB estimated")
  verdict = (f"; {'fits' if p['fits'] else 'does NOT fit'} ({100 * p['compiled'] / hbm_bytes:.0f}% "
             f"of {g(hbm_bytes)} GiB)" if hbm_bytes else "")
  beside = f", resident {g(p['resident'])}" if p.get("resident") else ""
  return (f"program    {name}: {g(p['compiled'])} GiB compiled (arguments {g(p['arguments'])}, "
          f"outputs {g(p['outputs'])}, aliased {g(p['aliased'])}, temporaries {g(p['temp'])}"
          f"{beside}, "
          f"code {p['generated_code'] / 2**20:.1f} MiB), {g(p['estimated'])} GiB estimated; "
          f"compiled in {p['compile_s']:.0f} s{verdict}")


def out_of_memory(e: Exception) -> dict[str, int] | None:
  """The bytes a compiler's out-of-memory refusal says it wanted and had, or None for any other
  error ("... required for HLO temporaries (35.13G) exceeds available HBM (31.25G)")."""
  m = re.search(r"\(([\d.]+)([TGMK])\) exceeds available \w+ \(([\d.]+)([TGMK])\)", str(e))
  if "RESOURCE_EXHAUSTED" not in str(e) or m is None:
    return None
  scale = {"T": 2**40, "G": 2**30, "M": 2**20, "K": 2**10}
  return {"wanted": int(float(m.group(1)) * scale[m.group(2)]),
          "available": int(float(m.group(3)) * scale[m.group(4)]),
          "message": str(e).strip().splitlines()[0][:300]}
