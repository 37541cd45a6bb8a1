"""Training and fine-tuning: records -> batches -> model -> loss -> trainer -> checkpoints.

Nothing here is imported by ``import m3e``; ``m3e.FineTuner`` loads :mod:`m3e.training.finetuner` on first use.
"""
