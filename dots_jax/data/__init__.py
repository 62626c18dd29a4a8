"""Question sets (TFDS array_record, random access by index), prompts and the synthetic task."""

from dots_jax.data.dataset import QuestionSet, load_dataset
from dots_jax.data.question import Question

__all__ = ["Question", "QuestionSet", "load_dataset"]
