"""Training: every option declared once, the trainer and the run directory it writes."""
