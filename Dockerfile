# Image for Kubeflow runs: the official TFX 1.16 image (same stack as
# requirements.lock: Python 3.10, TF 2.16) plus this package and the few
# pinned libraries the image lacks. Build and push:
#   docker build -t REGISTRY/clue-tfx:VERSION . && docker push REGISTRY/clue-tfx:VERSION
FROM tensorflow/tfx:1.16.0

WORKDIR /clue
COPY requirements.txt requirements.lock pyproject.toml README.md ./
# Only what the image does not already carry, at the lock's versions.
RUN grep -E '^(keras|keras-hub|keras-nlp|tokenizers|tensorflow-recommenders|tensorflow-serving-api|tensorflow-text|dill|matplotlib|contourpy|cycler|fonttools|kiwisolver|tqdm)==' \
        requirements.lock > /tmp/extra.txt \
    && pip install --no-cache-dir --no-deps -r /tmp/extra.txt
COPY clue_keras ./clue_keras
COPY clue_tfrs ./clue_tfrs
COPY clue_synth ./clue_synth
COPY components ./components
COPY tfx_pipeline ./tfx_pipeline
COPY clue_cli ./clue_cli
COPY clue_bench ./clue_bench
COPY clue_scaling ./clue_scaling
RUN pip install --no-cache-dir --no-deps . && python -c "import clue_keras, components, tfx_pipeline, clue_cli.main"
# Beam on a dask.distributed cluster (README "Beam engines") is optional: build with
#   --build-arg WITH_DASK=1
ARG WITH_DASK=0
RUN if [ "$WITH_DASK" = "1" ]; then \
      grep -E '^(dask|distributed|locket|msgpack|partd|tblib|toolz|zict|sortedcontainers|tornado)==' \
        requirements.lock > /tmp/dask.txt && pip install --no-cache-dir -r /tmp/dask.txt; fi
ENV TF_CPP_MIN_LOG_LEVEL=2
