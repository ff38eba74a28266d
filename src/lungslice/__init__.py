"""lungslice."""
