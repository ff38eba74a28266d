"""Human-readable outputs of a prediction: figures and the self-contained HTML report."""
