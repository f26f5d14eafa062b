"""LoRA training and fine-tuning jobs (docs/training.md): the job records, the worker process and, run inside the
training venv, the torch side (`trainer.py`)."""
