"""Disentanglement metrics, held-out ELBO and importance-weighted likelihood, diagnostics."""
