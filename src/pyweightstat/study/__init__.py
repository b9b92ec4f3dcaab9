"""The optimal-vs-suboptimal study: presets, sweep grid, runner, results store, analysis, report.

The pieces, in the order a study uses them:

- :mod:`.config` -- :class:`StudyConfig`, loaded from a shipped preset (``smoke``, ``quick``,
  ``paper``) plus optional TOML overrides, validated before any work starts;
- :mod:`.grid` -- the preset expanded into a deterministic list of run configs, each with a
  stable run id (a hash of its config);
- :mod:`.runner` -- :func:`execute_run` (one run as a pure function of its config) and the
  executors that run many of them (serial, or a process pool);
- :mod:`.store` -- the SQLite results database (WAL mode), one transaction per finished run;
- :mod:`.analysis` -- the C1/C2 tests, rank correlations and accuracy prediction;
- :mod:`.report` -- ``report.md``, ``report.html`` and the CSV exports.
"""

from __future__ import annotations

from .config import PRESETS, StudyConfig, StudyConfigError, load_study_config
from .grid import expand_grid, run_id_of

__all__ = [
    "PRESETS",
    "StudyConfig",
    "StudyConfigError",
    "expand_grid",
    "load_study_config",
    "run_id_of",
]
