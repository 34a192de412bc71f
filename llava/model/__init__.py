"""Model classes; importing this package registers the pruning Llama with transformers' Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from llava.model.language_model.drop_in import (
    CDPruner_LlamaModel,
    Fastv_LlamaModel,
    FastvAdvanced_LlamaModel,
    FastvFineHead_LlamaModel,
    PDrop_LlamaModel,
    SparseVLM_LlamaModel,
    VisPruner_LlamaModel,
)
from llava.model.language_model.pruning_config import PruningLlamaConfig
from llava.model.language_model.pruning_llama import PruningLlamaForCausalLM, PruningLlamaModel

AutoConfig.register(PruningLlamaConfig.model_type, PruningLlamaConfig, exist_ok=True)
AutoModel.register(PruningLlamaConfig, PruningLlamaModel, exist_ok=True)
AutoModelForCausalLM.register(PruningLlamaConfig, PruningLlamaForCausalLM, exist_ok=True)

__all__ = [
    "CDPruner_LlamaModel",
    "FastvAdvanced_LlamaModel",
    "FastvFineHead_LlamaModel",
    "Fastv_LlamaModel",
    "PDrop_LlamaModel",
    "PruningLlamaConfig",
    "PruningLlamaForCausalLM",
    "PruningLlamaModel",
    "SparseVLM_LlamaModel",
    "VisPruner_LlamaModel",
]
