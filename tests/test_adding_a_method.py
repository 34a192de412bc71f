"""docs/adding_a_method.md's worked example is real: its code block, registered, passes the engine invariants,
and its parameter works as the doc says (``from_params``, the unknown-key error, ``--method-param``).

Runs in a fresh interpreter so the example method never enters this process's registry.
"""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "adding_a_method.md"


def example_code() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    (block,) = [b for b in blocks if "@register_method" in b]
    return block


def test_documented_example_passes_every_engine_invariant():
    script = example_code() + textwrap.dedent(
        r"""
        import pytest
        import torch
        from llava.eval.cli_args import build_parser, pruning_params
        from llava.model.builder import load_pretrained_model
        from llava.pruning.registry import available_methods, plan_method
        from tests.test_method_invariants import (
            test_llava_batch_equals_single_and_cache_equals_no_cache as llava_invariants,
            test_lm_batch_equals_single_and_cache_equals_no_cache as lm_invariants,
        )

        hidden = torch.zeros(1, 5, 2)
        hidden[0, 1] = torch.tensor([3.0, 4.0])
        hidden[0, 3] = torch.tensor([1.0, 0.0])
        hidden[0, 4] = torch.tensor([0.0, 2.0])
        scores = hidden_norm_scores(hidden, torch.tensor([[1, 2, 3, 4]]))
        torch.testing.assert_close(scores, torch.tensor([[5.0, 0.0, 1.0, 2.0]]))
        torch.testing.assert_close(hidden_norm_scores(hidden, torch.tensor([[1]]), p=1.0), torch.tensor([[7.0]]))
        assert "token_norm" in available_methods()
        method = plan_method("token_norm", 128, 32, 576, {"p": 1.0})
        assert (method.keep, method.p) == (98, 1.0), method
        with pytest.raises(ValueError, match=r"unknown parameters \['q'\]; valid parameters: agg_layer, keep, p"):
            TokenNorm.from_params({"q": 1.0})
        flags = ["--question-file", "q", "--answers-file", "a", "--pruning_method", "token_norm", "--method-param", "p=1.0"]
        assert pruning_params(build_parser("test").parse_args(flags)) == {"p": 1.0}
        llava = load_pretrained_model("tiny-random-llava", pruning_method="token_norm", visual_token_num=64)[1]
        llava_invariants(llava, "token_norm", None)
        lm_invariants("token_norm", None)
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]

