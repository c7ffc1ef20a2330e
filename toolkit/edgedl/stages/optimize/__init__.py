"""``edgedl optimize``: the best deployable configuration of a model for a device, under an accuracy budget,
measured on the device.

Modules: ``space`` (every knob declared once: name, type, values, description; ``Candidate``, ``Space``),
``config`` (``OptimizeConfig``, the objectives), ``models`` (model files built by quantize's ``Workbench`` and
judged by its accuracy gate), ``device`` (timing through the bench worker, here or over SSH), ``cache``
(evaluations keyed by candidate, model, data and device), ``search`` (the budgeted engine: short timings, then
successive halving), ``front`` (interleaved re-measurement, the noise-aware Pareto front, the choice),
``report`` (the report and the configuration file quantize and bench read), ``plot``, ``pipeline`` (the flow).
"""

from edgedl.stages.optimize.config import OBJECTIVES, OptimizeConfig, RemoteDevice, parse_budget
from edgedl.stages.optimize.pipeline import optimize
from edgedl.stages.optimize.report import ChosenConfig, OptimizeReport
from edgedl.stages.optimize.space import KNOBS, Candidate, parse_space

__all__ = ["KNOBS", "OBJECTIVES", "Candidate", "ChosenConfig", "OptimizeConfig", "OptimizeReport", "RemoteDevice",
           "optimize", "parse_budget", "parse_space"]
