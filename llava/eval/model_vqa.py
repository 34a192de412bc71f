"""LLaVA's ``model_vqa`` (used for MM-Vet and LLaVA-Bench): same question/answer formats and flags as
``llava.eval.model_vqa_loader``, which does the work."""

import sys

from llava.eval.model_vqa_loader import main

if __name__ == "__main__":
    sys.exit(main())
