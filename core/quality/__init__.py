"""Sample quality: FID/KID/precision-recall, the feature networks, the evaluator and eval.jsonl."""
