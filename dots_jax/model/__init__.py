"""Qwen2/Qwen2.5 policy: `qwen2` (the Flax NNX model), `hf_io` (Hugging Face directories in/out),
`sharding` (mesh and parameter layout rules), `variants` (released shapes for shape-only work)."""
