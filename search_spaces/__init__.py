"""NNI architecture search for NASLung: the NAS-Lung space, strategies, trials, Pareto reports.

Pure modules (no NNI): :mod:`.space` (space bounds, uniform sampling, repair, encoding),
:mod:`.pareto` (partial order, pruning rule, Pareto front), :mod:`.report` (trials.csv,
pareto.csv, plot, top configs). NNI is reached only through :mod:`.nni_api`; the modules
:mod:`.model_space`, :mod:`.strategies`, :mod:`.experiment`, :mod:`.tuner` and :mod:`.hpo` import it.
"""
