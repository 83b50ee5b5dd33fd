"""The networks and models: T5 1.1 and decoder-only transformers in flax.linen, the prompt modules and initialisers, losses, scoring and decoding."""
