"""Weights and prompts in and out: T5X, Hugging Face and safetensors checkpoints read into the mesh, .npy and PEFT prompt files."""
