"""dots_jax: difficulty-targeted online data selection and rollout replay for GRPO, in JAX."""
from setuptools import find_packages, setup

setup(
    name="dots_jax",
    version="0.1.0",
    description="RL fine-tuning of Qwen2.5 in JAX/Flax with DOTS, rollout replay and GRESO.",
    python_requires=">=3.10",
    packages=find_packages(include=["dots_jax", "dots_jax.*"]),
    # The tiny default's base policy (dots_jax.policy.tiny_base: weights, tokenizer, recipe).
    package_data={"dots_jax": ["assets/tiny_base/*"], "dots_jax.tools": ["gpu_specs/*.txtpb"]},
    install_requires=[
        "jax>=0.7",
        "flax>=0.11",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "transformers>=4.50",
        "tensorflow-datasets>=4.9.9",
        "array_record>=0.7",
        "ml-collections>=1.0",
        "absl-py>=2.0",
        "math-verify>=0.8",
        "safetensors>=0.4",
        "tokenizers>=0.20",
        "tensorboardX>=2.6",
        "numpy>=1.26",
    ],
    license="Apache-2.0",
    extras_require={
        # Accelerator builds of jax for the workers (launch/*.sh install them with INSTALL=1).
        "tpu": ["jax[tpu]>=0.7"],
        "cuda12": ["jax[cuda12]>=0.7"],
        # The dry run's real compilers on this CPU (`--config.plan_topology`), at jax's own version
        # (jax's extras pin them): libtpu for TPU topologies; the CUDA plugin for GPUs (h100x8, ...),
        # apart because once installed it logs a few lines to stderr whenever jax starts.
        "plan": ["jax[tpu]"],
        "plan-gpu": ["jax[cuda12-local]"],
        # Learning-curve plots of `python -m dots_jax.compare`.
        "plots": ["matplotlib>=3.8"],
        # Weights & Biases logging (config.log.wandb_project).
        "wandb": ["wandb>=0.17"],
        # gs:// workdirs and model paths (etils.epath over gcsfs; orbax writes arrays through
        # tensorstore's own GCS driver).
        "gcs": ["gcsfs>=2024.2"],
        # torch is pinned exactly: 2.13.0 CPU installs from a local file on the dev/CI machines,
        # any other spec pulls a multi-GB CUDA build. Only the parity tests and benchmarks need it.
        # gcp-storage-emulator: a local bucket server for the gs:// tests. libtpu (the plan extra,
        # a 213 MB wheel) lets the planner's tests compile for a real TPU topology.
        "test": ["torch==2.13.0", "pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100", "scipy>=1.11",
                 "matplotlib>=3.8", "gcsfs>=2024.2", "gcp-storage-emulator>=2024.8", "jax[tpu]"],
    },
)
