"""Multi-step workflows: ``sweep`` (presets x grid x seeds at one step budget, one comparison report; the
reference tables as studies) and ``demo`` (phantom -> train -> evaluate -> report). Each step is the public
function a user could call."""

from prostate_vq.workflows.demo import demo
from prostate_vq.workflows.studies import list_studies, study_names
from prostate_vq.workflows.sweep import sweep

__all__ = ["demo", "list_studies", "study_names", "sweep"]
