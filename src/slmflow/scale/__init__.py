"""Scale-out on engines users already run: multi-LoRA serving (vLLM, llama.cpp's server) for a
workflow's agents (`slmflow deploy`); batch work (evals, batch inference over the call log) as Ray
tasks (`ray_map`, `run_suite_ray`, `batch_infer`). See docs/deploy.md."""

from __future__ import annotations

from .deploy import (DeployPlan, ServedAdapter, llamacpp_files, plan_deployment, vllm_files,
                     write_deployment)
from .batch import AgentRef, batch_infer, run_suite_ray
from .distributed import LocalCluster, ray_map, worker_cache

__all__ = ["DeployPlan", "ServedAdapter", "llamacpp_files", "plan_deployment", "vllm_files",
           "write_deployment", "AgentRef", "batch_infer", "run_suite_ray", "LocalCluster",
           "ray_map", "worker_cache"]
