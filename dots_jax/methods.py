"""The method table: what `config.method` means, in one place.

A method is three independent switches:
  * source: where candidate questions come from: "stream" (a seeded epoch-by-epoch shuffle, the
    reference trainers' dataloader), "dots" (difficulty-targeted sampling, `selection.dots`),
    "track" (the same round loop over a tracking difficulty model, `selection.track`) or "oracle"
    (DOTS's sampling from exact pass rates instead of the estimator: a diagnostic upper bound for
    synthetic tasks, not a paper's method);
  * filter: what happens around the rollout: "none" (train on every group), "ds" (dynamic sampling:
    drop zero-variance groups after rollout, roll out more), "greso" (skip predicted zero-variance
    questions before rollout, then as "ds"), "greso_track" (the same, the skip decided by the
    tracking model), "mopps" (Thompson-sampled pass rates pick the batch);
  * replay: rollout replay (GRPO-RR, `rl.replay`) on or off.
The selection factory builds the strategy from (source, filter); the main loop switches replay.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Method:
  source: str  # "stream" | "dots" | "track" | "oracle"
  filter: str  # "none" | "ds" | "greso" | "greso_track" | "mopps"
  replay: bool

  @property
  def tracks(self) -> bool:
    """Whether it selects with the tracking difficulty model (`difficulty.tracker`)."""
    return self.source == "track" or self.filter == "greso_track"

  @property
  def needs_estimator(self) -> bool:
    """Whether it needs the question embeddings and the DOTS estimator (the tracker's kernel)."""
    return self.source == "dots" or self.tracks


METHODS: dict[str, Method] = {
    "grpo": Method("stream", "none", False),  # uniform GRPO
    "ds": Method("stream", "ds", False),  # DAPO dynamic sampling
    "greso": Method("stream", "greso", False),  # GRESO selective rollout
    "mopps": Method("stream", "mopps", False),  # MoPPS
    "dots": Method("dots", "none", False),  # DOTS
    "dots_rr": Method("dots", "none", True),  # DOTS + rollout replay
    "dots_greso": Method("dots", "greso", False),
    "dots_rr_greso": Method("dots", "greso", True),
    "oracle": Method("oracle", "none", False),  # DOTS's rule with a perfect estimator
    "oracle_rr": Method("oracle", "none", True),
    "dots_track": Method("track", "none", False),  # DOTS's rounds over the tracking model
    "dots_track_rr": Method("track", "none", True),
    "greso_track": Method("stream", "greso_track", False),  # GRESO's skip from the tracking model
}


def get_method(name: str) -> Method:
  """The method `name`; ValueError naming the known ones otherwise."""
  if name not in METHODS:
    raise ValueError(f"config.method={name!r} is unknown; use one of {sorted(METHODS)} "
                     "(e.g. --config.method=dots_rr or configs/<name>.py:method=dots_rr)")
  return METHODS[name]
