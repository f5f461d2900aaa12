"""The prepared device call (`gpu_run.py`) and what it carries in and back (`gpu_carry.py`)."""
