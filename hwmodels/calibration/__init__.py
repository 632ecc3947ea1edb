"""Calibration: fit the hardware models to measured kernels, and prove the accuracy.

Datasheet rooflines are off by 2x or more for small GEMMs, decode attention and
collectives. This package turns measured kernel times into fitted efficiency
curves that the cost model uses in place of the constant efficiencies of the
device catalog, and reports how far the fitted model is from measurements it
did not see. One job per module:

* :mod:`~hwmodels.calibration.schema` -- the tidy measurement table every other
  module reads and writes (one row per timed kernel shape);
* :mod:`~hwmodels.calibration.measure` -- microbenchmarks on this machine
  (numpy on the CPU; torch on the CPU or a CUDA GPU when torch is installed);
* :mod:`~hwmodels.calibration.importers` -- readers for published GPU tables
  (NVIDIA aiconfigurator, Microsoft vidur) converted into the schema;
* :mod:`~hwmodels.calibration.work` -- FLOPs and bytes of a measured kernel,
  with the cost model's formulas;
* :mod:`~hwmodels.calibration.curves` -- the fitted curve families (efficiency
  as a function of problem size, alpha-beta for collectives), evaluated by both
  the fit and the cost model;
* :mod:`~hwmodels.calibration.folds` -- the held-out split (by model shapes);
* :mod:`~hwmodels.calibration.fit` -- scipy fits, and the calibrated profile YAML;
* :mod:`~hwmodels.calibration.validate` -- held-out error tables and plots;
* :mod:`~hwmodels.calibration.overheads` -- CPU / launch overheads per serving engine;
* :mod:`~hwmodels.calibration.profile` -- loading shipped and user profiles;
* :mod:`~hwmodels.calibration.cli` -- ``capsim calibrate ...``.

Only :mod:`profile` and :mod:`curves` are imported by the cost model; they need
numpy and pyyaml only (scipy, pandas and torch are imported where used).
"""
