"""Judging a representation: disentanglement metrics (:mod:`.metrics`), the ELBO decomposition
(:mod:`.decomposition`), ArviZ diagnostics of the amortized posterior (:mod:`.diagnostics`),
held-out ELBO and IWAE (:mod:`.heldout`), run-level evaluation by metric name (:mod:`.evaluate`)
and the multi-run rate-distortion-usefulness report (:mod:`.report`)."""
