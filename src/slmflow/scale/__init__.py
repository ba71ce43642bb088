"""Scale-out on engines users already run: multi-LoRA serving (vLLM, llama.cpp's server) for a
workflow's agents (`slmflow deploy`). See docs/deploy.md."""

from __future__ import annotations

from .deploy import (DeployPlan, ServedAdapter, llamacpp_files, plan_deployment, vllm_files,
                     write_deployment)

__all__ = ["DeployPlan", "ServedAdapter", "llamacpp_files", "plan_deployment", "vllm_files",
           "write_deployment"]
