"""Machine learning: features, Keras models, training loop, encrypted model registry.

Pure layer: no Prefect import. Keras runs on the JAX backend; the backend is chosen here,
before anything imports keras.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
