"""Training a cross-encoder reranker (``m3e finetune --task rerank``): query groups and scored pairs, listwise /
pointwise / distillation losses, held-out evaluation, on the shared training loop.

    from m3e.training.rerank import RerankFineTuner
    RerankFineTuner.from_pretrained("default", "groups.jsonl").run(output_dir="my-reranker", eval_split=0.05)
"""

from m3e.training.rerank.finetuner import RerankFineTuner, RerankResult

__all__ = ["RerankFineTuner", "RerankResult"]
