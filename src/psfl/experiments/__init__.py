"""Running and judging experiments (the layer above the runners): ``psfl compare``
(:mod:`~psfl.experiments.compare`), ``psfl seeds`` (:mod:`~psfl.experiments.seeds`), the
run summary (:mod:`~psfl.experiments.report`) and ``psfl reproduce``: the paper's figures
as declarative experiments (:mod:`~psfl.experiments.reproduce`), drawn
(:mod:`~psfl.experiments.figures`) and judged with a fixed rule
(:mod:`~psfl.experiments.claims`). It may import the core, ``psfl.methods`` and
``psfl.runners``; only the CLI imports it. The recipes it runs live outside the package,
in the repository's ``experiments/reproduce/*.toml``."""
