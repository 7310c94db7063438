"""The MLflow pyfunc model (models-from-code): no pickled project classes, weights as safetensors.

Input: a dict of float32 NCHW arrays in [0, 1] named masked (hole zeroed), mask (1 = hole),
reference (colour-matched warped reference) and reference_valid. Output: the rebuilt face,
float32 NCHW in [0, 1], known pixels unchanged.
"""
from __future__ import annotations

import json

import mlflow
import numpy as np

INPUTS = ("masked", "mask", "reference", "reference_valid")


class UnmaskModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import torch  # the model's code loads when MLflow loads the model, not when it logs it
        from safetensors.torch import load_model

        from model.networks import build_generator

        with open(context.artifacts["config"]) as f:
            self.config = json.load(f)
        self.generator = build_generator(self.config.get("generator", "full"), self.config["channels"]).eval()
        load_model(self.generator, context.artifacts["weights"])
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.generator.to(self.device)

    def predict(self, context, model_input, params=None):
        import torch  # as in load_context

        missing = [k for k in INPUTS if k not in model_input]
        if missing:
            raise ValueError(f"missing inputs: {missing}; expected {list(INPUTS)}")
        with torch.no_grad():
            x = {k: torch.as_tensor(np.asarray(model_input[k], dtype=np.float32), device=self.device) for k in INPUTS}
            out = self.generator(x["masked"], x["mask"], x["reference"], x["reference_valid"])
            return ((out.result.float() + 1) / 2).clamp(0, 1).cpu().numpy()


mlflow.models.set_model(UnmaskModel())
