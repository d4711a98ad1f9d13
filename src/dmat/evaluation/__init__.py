"""Evaluating a model: sample quality against real data, behaviour against the teacher, cost."""
