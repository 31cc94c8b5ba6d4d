"""Compile the pipeline to a Kubeflow Pipelines v2 / Vertex AI Pipelines JSON spec.

Thin: the definition is `create_pipeline`; this only names the container image
and where the spec goes. Every component runs in ``image``, which must hold
this package (``pip install .`` on top of ``tensorflow/tfx:1.16.0``).

Needs ``kfp-pipeline-spec`` (TFX's ``kfp`` extra) to be installed.
"""

from __future__ import annotations

import os

from tfx_pipeline.config import PipelineConfig


def compile_pipeline(config: PipelineConfig, image: str, out_file: str) -> str:
    """Writes the KFP v2 pipeline spec of ``create_pipeline(config)``; returns its path.

    Args:
      config: pipeline config; ``metadata_path`` must be None (KFP keeps MLMD).
      image: container image every component runs in.
      out_file: the JSON file to write (its directory is created).
    """
    if config.metadata_path:
        raise ValueError("Kubeflow keeps its own metadata store; leave metadata_path unset")
    try:
        from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner as kfp_runner
    except ImportError as e:
        raise ImportError(
            "compiling for Kubeflow needs the 'kfp-pipeline-spec' package "
            f"(pip install 'tfx[kfp]==1.16.0'): {e}") from e

    from tfx_pipeline.pipeline import create_pipeline

    from clue_keras.atomic import atomic_file

    out_file = os.path.abspath(out_file)
    with atomic_file(out_file) as tmp:  # a reader never sees half a spec
        runner = kfp_runner.KubeflowV2DagRunner(
            config=kfp_runner.KubeflowV2DagRunnerConfig(default_image=image),
            output_dir=os.path.dirname(tmp), output_filename=os.path.basename(tmp))
        runner.run(create_pipeline(config), write_out=True)
    return out_file
