"""Prompt tuning (Lester et al., 2021) of frozen T5 models in JAX/Flax."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')  # TensorFlow serves only seqio's tf.data.
