"""Lightning training: pretraining, finetuning (lightly harness) and robust evaluation."""
