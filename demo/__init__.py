"""A deterministic demo store that drives the product through its real entry points."""
