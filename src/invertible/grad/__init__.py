"""Gradient transforms that drop in where `eqx.filter_grad` stands."""
