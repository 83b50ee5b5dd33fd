"""Using trained prompts: evaluation and rank classification, named prompts of one frozen model, mixed-prompt batches, ensembles, the serving engine."""
