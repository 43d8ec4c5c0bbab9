"""What is measured: the MI estimator (:mod:`.mi`), the log p(z|x) tensor (:mod:`.scoring`), answer
metrics (:mod:`.metrics`), the likelihood predictor (:mod:`.predict_loglik`), the compressor
baselines (:mod:`.baselines`) and the cost model (:mod:`.cost`).

Imports core, backends and data only; it knows nothing of sweeps, runs or reports.
"""
