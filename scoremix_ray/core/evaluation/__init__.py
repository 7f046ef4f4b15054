"""Evaluation: sample quality, verification metrics, alignment."""
