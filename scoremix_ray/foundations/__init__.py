"""Foundations: files, errors, progress, devices, checkpoints. Imports nothing of the project above it."""
