"""Callbacks of the pretraining run: reconstruction images, backbone export, EuroSAT probe.

All three write or compute on global rank 0 only and find bands, sensor and statistics in the
task's ``data_info`` (linked from the data by the CLI), never by position.
"""

from rsmae.tasks.callbacks.export import BackboneExport
from rsmae.tasks.callbacks.images import ReconstructionImages
from rsmae.tasks.callbacks.probe import ProbeCallback
from rsmae.tasks.render import reconstruct, true_colour

__all__ = ["BackboneExport", "ProbeCallback", "ReconstructionImages", "reconstruct", "true_colour"]
