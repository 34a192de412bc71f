"""GPT-NeoX with dead heads removed, driven by the head classification stored in its config.

``HeadPrunedGPTNeoXModel`` (a ``GPTNeoXModel``) slices the fused ``query_key_value`` rows and the
``dense`` columns of the heads labelled ``dead`` in ``config.head_classification`` when it is built,
so ``from_pretrained`` loads a checkpoint saved from a pruned model directly:

    pruned = HeadPrunedGPTNeoXForCausalLM.from_dense(model, classification)
    pruned.save_pretrained(folder)
    again = AutoModelForCausalLM.from_pretrained(folder)   # model_type "gpt_neox_head_pruned"
"""

from __future__ import annotations

from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXModel, GPTNeoXPreTrainedModel

from kvcompress.adapters import GPTNeoXAdapter
from kvcompress.classification import HeadClassification
from kvcompress.layout import HeadLayout, set_layout
from kvcompress.methods.dead_heads import DeadHeadPruner


class HeadPrunedGPTNeoXConfig(GPTNeoXConfig):
    """``GPTNeoXConfig`` plus ``head_classification`` (the ``head_classification.json`` content)."""

    model_type = "gpt_neox_head_pruned"

    def __init__(self, head_classification: dict | None = None, **kwargs):
        self.head_classification = head_classification
        super().__init__(**kwargs)

    def classification(self) -> HeadClassification | None:
        return None if self.head_classification is None else HeadClassification.from_dict(self.head_classification)


class HeadPrunedGPTNeoXModel(GPTNeoXModel):
    """``GPTNeoXModel`` whose attention layers only hold the heads not labelled dead."""

    config_class = HeadPrunedGPTNeoXConfig

    def __init__(self, config: HeadPrunedGPTNeoXConfig):
        super().__init__(config)
        classification = config.classification()
        if classification is None:
            return
        adapter = GPTNeoXAdapter()
        heads = config.num_attention_heads
        if classification.shape.num_layers != config.num_hidden_layers or \
                classification.shape.num_query_heads != heads:
            raise ValueError(f"head classification is for {classification.shape.as_dict()}, config has "
                             f"{config.num_hidden_layers} layers x {heads} heads")
        for layer, labels in zip(self.layers, classification.labels, strict=True):
            kept = [head for head, label in enumerate(labels) if label != "dead"]
            if not kept:
                raise ValueError("a layer would lose every head")
            adapter.keep_heads(layer.attention, kept, kept)
            set_layout(layer.attention, HeadLayout.dense(heads, heads).keeping(set(kept), set(kept)))


class HeadPrunedGPTNeoXForCausalLM(GPTNeoXForCausalLM):
    """Causal LM head on :class:`HeadPrunedGPTNeoXModel`."""

    config_class = HeadPrunedGPTNeoXConfig

    def __init__(self, config: HeadPrunedGPTNeoXConfig):
        GPTNeoXPreTrainedModel.__init__(self, config)
        self.gpt_neox = HeadPrunedGPTNeoXModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def from_dense(cls, model: GPTNeoXForCausalLM, classification: HeadClassification) -> HeadPrunedGPTNeoXForCausalLM:
        """Build the pruned model from a dense ``GPTNeoXForCausalLM`` and a classification for it."""
        classification.check_model(model)
        settings = {key: value for key, value in model.config.to_dict().items()
                    if key not in ("model_type", "architectures", "transformers_version")}
        config = HeadPrunedGPTNeoXConfig(head_classification=classification.to_dict(), **settings)
        pruned = cls(config)
        with DeadHeadPruner(classification).apply(model):
            pruned.load_state_dict(model.state_dict())
        return pruned.to(model.dtype).eval()


AutoConfig.register(HeadPrunedGPTNeoXConfig.model_type, HeadPrunedGPTNeoXConfig)
AutoModel.register(HeadPrunedGPTNeoXConfig, HeadPrunedGPTNeoXModel)
AutoModelForCausalLM.register(HeadPrunedGPTNeoXConfig, HeadPrunedGPTNeoXForCausalLM)
