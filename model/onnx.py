"""The generator as an ONNX graph that OpenCV's DNN module runs: CPU inference without torch.

Importing torch costs 2-3 s of every process that fills faces (the command's own, each Dask
worker's), more than a one-photo run's whole fill. `make install` builds the shipped small
generator's graph from its weights (`model.shipped.write_graph`), and every model training logs
carries its own (`tasks.registry.log_generator`); `tasks.generator_onnx` runs them with OpenCV,
already loaded for everything else. Results match torch's to within one 8-bit level
(tests/test_shipped.py, tests/test_registry_graph.py).
"""
from __future__ import annotations

import io

import torch
from torch import nn

INPUTS = ("masked", "mask", "reference", "valid")


class _Result(nn.Module):
    """The generator's composited result alone (what inference keeps), for export."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, masked, mask, reference, valid):
        return self.generator(masked, mask, reference, valid).result


def export_generator(generator: nn.Module, size: int) -> bytes:
    """ONNX bytes of `generator` (on the CPU; exported in eval mode) for one face of `size` px: inputs as
    the generator takes them (masked crop, hole, reference, validity; NCHW in 0..1), output its
    `result` in -1..1. The legacy TorchScript exporter at opset 13, as for the mask segmenter:
    OpenCV's importer reads what it writes."""
    example = (torch.zeros(1, 3, size, size), torch.zeros(1, 1, size, size), torch.zeros(1, 3, size, size),
               torch.zeros(1, 1, size, size))
    buf = io.BytesIO()
    # The exporter puts the module it is given back in that module's mode afterwards: a wrapper made
    # here starts in training mode and would leave the caller's generator in it (the shipped model
    # is one shared, cached object), so the wrapper is in eval mode and the generator's mode is kept.
    was_training = generator.training
    try:
        with torch.no_grad():
            torch.onnx.export(_Result(generator.to("cpu")).eval(), example, buf, dynamo=False, opset_version=13,
                              input_names=list(INPUTS), output_names=["result"])
    finally:
        generator.train(was_training)
    return buf.getvalue()
