"""Scores: trec_eval metrics, paired significance tests, model and table evaluation."""
