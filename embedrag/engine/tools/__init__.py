"""Whole jobs over everything below: the demo, doctor, export."""
