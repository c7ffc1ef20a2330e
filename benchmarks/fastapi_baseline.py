"""The baseline: a hand-written FastAPI + onnxruntime JSON app of the kind users write today (pydantic request
model, nested lists in and out, session.run inside an async endpoint). Served by uvicorn with the same
parser/loop as `edgedl serve` so the comparison is about the app, not the transport.

usage: MODEL=cnn.onnx uvicorn benchmarks.fastapi_baseline:app --port 8001 --loop uvloop --http httptools
       (or: python benchmarks/fastapi_baseline.py MODEL.onnx PORT)
POST /predict {"inputs": [[...], ...]}  ->  {"outputs": [[...], ...]}
"""

from __future__ import annotations

import os
import sys

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel

options = ort.SessionOptions()
options.intra_op_num_threads = int(os.environ.get("THREADS", "1"))
session = ort.InferenceSession(os.environ.get("MODEL") or sys.argv[1], options, providers=["CPUExecutionProvider"])
input_name = session.get_inputs()[0].name
app = FastAPI()


class PredictRequest(BaseModel):
    inputs: list


class PredictResponse(BaseModel):
    outputs: list


@app.get("/health")
async def health():
    return {"status": "ok"}


@app.post("/predict", response_model=PredictResponse)
async def predict(request: PredictRequest):
    x = np.asarray(request.inputs, dtype=np.float32)
    y = session.run(None, {input_name: x})[0]
    return PredictResponse(outputs=y.tolist())


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), loop="uvloop", http="httptools", log_level="warning",
                access_log=False)
