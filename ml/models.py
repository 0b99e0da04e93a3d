"""The three network architectures (Keras 3 on JAX), each a binary classifier of direction.

* ``lstm``: stacked LSTM -> dropout -> dense sigmoid.
* ``gru``: GRU -> dense ReLU -> dense sigmoid.
* ``transformer``: linear projection + learned position embedding -> one encoder block
  (multi-head self-attention, feed-forward, residuals, layer norm) -> average pooling ->
  dense sigmoid.

All output P(forward return > 0) for a window of shape (lookback, n_features).
"""

from __future__ import annotations

import random

import keras

MODEL_TYPES: tuple[str, ...] = ("lstm", "gru", "transformer")


@keras.saving.register_keras_serializable(package="botai")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned vector per time step (the transformer has no notion of order otherwise)."""

    def build(self, input_shape: tuple[int, ...]) -> None:
        self.positions = self.add_weight(
            shape=(input_shape[1], input_shape[2]), initializer="random_normal", name="positions"
        )

    def call(self, inputs):  # type: ignore[no-untyped-def]
        return inputs + self.positions


def seed_this_thread(seed: int) -> None:
    """Seed Python's, NumPy's and Keras's generators for the training that follows.

    Keras draws the seed of every initialiser and dropout layer it builds from Python's
    process-wide ``random``, which other threads of the process draw from meanwhile
    (pymongo's monitors, for one): a seeded training then got one of several models
    depending on their timing. Keras gets a generator of its own here, seeded, so the same
    seed builds the same network whatever else runs in the process.
    """
    from keras.src.random import seed_generator

    keras.utils.set_random_seed(seed)
    seed_generator.python_random = random.Random(seed)


def build_model(
    model_type: str,
    lookback: int,
    n_features: int,
    *,
    learning_rate: float = 1e-3,
    units: int = 32,
    seed: int | None = None,
) -> keras.Model:
    """Build and compile a network.

    Args:
        units: width of the recurrent/attention layers (small by default: data are small).
        seed: seed of the dropout layers (None: Keras draws one from Python's ``random``).

    Returns:
        a compiled model (Adam, binary cross-entropy, accuracy metric).

    Raises:
        ValueError: unknown ``model_type``.
    """
    inputs = keras.Input(shape=(lookback, n_features), name="window")
    if model_type == "lstm":
        x = keras.layers.LSTM(units, return_sequences=True)(inputs)
        x = keras.layers.LSTM(max(units // 2, 4))(x)
        x = keras.layers.Dropout(0.1, seed=seed)(x)
    elif model_type == "gru":
        x = keras.layers.GRU(units)(inputs)
        x = keras.layers.Dense(max(units // 2, 4), activation="relu")(x)
    elif model_type == "transformer":
        x = keras.layers.Dense(units)(inputs)
        x = PositionEmbedding()(x)
        attn = keras.layers.MultiHeadAttention(num_heads=2, key_dim=max(units // 2, 4))(x, x)
        x = keras.layers.LayerNormalization()(x + keras.layers.Dropout(0.1, seed=seed)(attn))
        ff = keras.layers.Dense(units * 2, activation="relu")(x)
        ff = keras.layers.Dense(units)(ff)
        x = keras.layers.LayerNormalization()(x + ff)
        x = keras.layers.GlobalAveragePooling1D()(x)
    else:
        raise ValueError(f"model_type must be one of: {', '.join(MODEL_TYPES)}")
    outputs = keras.layers.Dense(1, activation="sigmoid", name="p_up")(x)
    model = keras.Model(inputs, outputs, name=f"{model_type}_direction")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    return model
