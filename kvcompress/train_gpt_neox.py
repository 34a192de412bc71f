"""Train the shipped Pythia-style GPT-NeoX on WikiText-2 (CPU, resumable), and export it.

    python -m kvcompress.train_gpt_neox --output-dir checkpoints/neox --export playground/models/neox-wikitext
    python -m kvcompress.train_gpt_neox --output-dir checkpoints/neox --resume     # after an interruption

Data: the byte-level BPE of :mod:`kvcompress.models.wikitext_neox` is trained on WikiText-2 *valid*;
the model trains on random ``--seq-len`` windows of the first 95 % of *valid* (batch ``t`` depends only
on ``(seed, t)``, and so do its dropout masks: a resumed run continues as an uninterrupted one) and the last 5 % is the held-out
monitor (loss every ``--eval-every`` steps; the step with the lowest one is kept as ``best.pt`` and is
what ``--export`` ships). *Test* is never seen in training: the export measures its strided perplexity
(1024-token windows, stride 512) and writes it into ``training_record.json``.

Optimisation: AdamW (betas 0.9 / 0.95, weight decay 0.1 on matrices), linear warm-up then cosine decay to
10 % (``toolkit_common.training.warmup_cosine_lr``), gradient clipping at 1, hidden dropout 0.1 (the
training split is ~0.3 M tokens, seen ~25 times).

``--device`` / ``--dtype`` (``toolkit_common.script_args``): where and in which precision the model trains (the
weights themselves in ``--dtype``, no mixed precision); ``runs.jsonl`` records both per invocation, and the
export writes float32 weights.

Outputs in ``--output-dir``: ``tokenizer/``, ``last.pt`` (every ``--checkpoint-every`` steps: weights,
optimizer, step), ``best.pt``, ``train_log.jsonl``; ``--export`` writes the HF folder (safetensors,
config, tokenizer), ``training_curves.png``, the log and ``training_record.json`` (settings, steps, wall
time, held-out loss, test perplexity).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm
from transformers import AutoTokenizer, DynamicCache, GPTNeoXForCausalLM, PreTrainedTokenizerBase

from kvcompress.evaluation.perplexity import strided_perplexity
from kvcompress.evaluation.text import DEFAULT_TEXT
from kvcompress.models.wikitext_neox import neox_config, train_tokenizer
from toolkit_common.cli import missing_file_problem, setting_error
from toolkit_common.jsonl import drop_records_from_step
from toolkit_common.script_args import (
    Execution,
    apply_execution_flags,
    execution_flags,
    execution_problem,
    threads_flag,
)
from toolkit_common.training import (
    append_log,
    load_checkpoint,
    read_log,
    resume,
    run_settings,
    save_checkpoint,
    warmup_cosine_lr,
)

MONITOR_SHARE = 0.05  # last share of the training text held out to pick the best step
LOG = "train_log.jsonl"
RUNS = "runs.jsonl"  # in --output-dir: the settings of every training invocation
RECORD = "training_record.json"


def token_stream(path: Path, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """The whole file as one ``[N]`` id tensor (lines joined as they are, ``\\n`` included)."""
    return torch.tensor(tokenizer(path.read_text(encoding="utf-8"), add_special_tokens=False).input_ids)


def training_batch(tokens: torch.Tensor, step: int, batch_size: int, seq_len: int, seed: int) -> torch.Tensor:
    """``[B, seq_len]`` random windows of ``tokens``; a function of ``(seed, step)`` only."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, tokens.numel() - seq_len, (batch_size,), generator=generator)
    return torch.stack([tokens[s : s + seq_len] for s in starts.tolist()])


@torch.no_grad()
def held_out_loss(model: GPTNeoXForCausalLM, tokens: torch.Tensor, seq_len: int) -> float:
    """Mean next-token loss over consecutive ``seq_len`` windows of ``tokens`` (eval mode)."""
    was_training = model.training
    model.eval()
    windows = tokens[: (tokens.numel() - 1) // seq_len * seq_len + 1].to(next(model.parameters()).device)
    total, count = 0.0, 0
    for start in range(0, windows.numel() - 1, seq_len):
        chunk = windows[start : start + seq_len + 1][None]
        logits = model(input_ids=chunk[:, :-1]).logits
        total += nn.functional.cross_entropy(logits[0].float(), chunk[0, 1:], reduction="sum").item()
        count += chunk.shape[1] - 1
    model.train(was_training)
    return total / count


def optimizer_for(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases, layer norms)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))


def train(args: argparse.Namespace, execution: Execution) -> None:
    out: Path = args.output_dir
    append_log(out / RUNS, {**run_settings(args), **execution.metadata(), "requested_device": args.device})
    tokenizer_dir = out / "tokenizer"
    if not (tokenizer_dir / "tokenizer.json").is_file():
        train_tokenizer(args.train_text, args.vocab_size).save_pretrained(tokenizer_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokens = token_stream(args.train_text, tokenizer)
    split = int(tokens.numel() * (1 - MONITOR_SHARE))
    train_tokens, monitor_tokens = tokens[:split], tokens[split:]
    print(f"{args.train_text}: {tokens.numel()} tokens ({split} training, {tokens.numel() - split} held out)")
    torch.manual_seed(args.seed)
    model = GPTNeoXForCausalLM(neox_config(len(tokenizer), args.hidden_size, args.layers, args.heads,
                                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    model.set_attn_implementation("sdpa")
    model.to(device=execution.device, dtype=execution.dtype)
    optimizer = optimizer_for(model, args.lr, args.weight_decay)
    start = resume(out / "last.pt", {"model": model}, optimizer)
    drop_records_from_step(out / LOG, start)
    best = load_checkpoint(out / "best.pt")
    best_loss = best["held_out_loss"] if best else math.inf
    model.train()
    started = time.time()
    bar = tqdm(range(start, args.steps), desc="gpt-neox", initial=start, total=args.steps)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine_lr(step, args.steps, args.lr, args.warmup)
        batch = training_batch(train_tokens, step, args.batch_size, args.seq_len, args.seed).to(execution.device)
        torch.manual_seed(args.seed * 1_000_003 + step)  # dropout masks: a function of (seed, step) too
        loss = model(input_ids=batch, labels=batch).loss  # the model shifts the labels
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        row = {"step": step, "loss": round(float(loss), 4), "lr": optimizer.param_groups[0]["lr"]}
        last = step + 1 == args.steps
        if (step + 1) % args.eval_every == 0 or last:
            row["held_out_loss"] = round(held_out_loss(model, monitor_tokens, args.seq_len), 4)
            if row["held_out_loss"] < best_loss:
                best_loss = row["held_out_loss"]
                save_checkpoint(out / "best.pt", {"step": step + 1, "model": model.state_dict(),
                                                  "held_out_loss": best_loss})
        row["elapsed_s"] = round(time.time() - started, 1)
        append_log(out / LOG, row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", held_out=f"{best_loss:.3f}")
        if (step + 1) % args.checkpoint_every == 0 or last:
            save_checkpoint(out / "last.pt", {"step": step + 1, "model": model.state_dict(),
                                              "optimizer": optimizer.state_dict()})


def plot_curves(log: list[dict], target: Path) -> None:
    """Training loss (moving mean over 20 steps) and held-out loss against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in log]
    losses = [r["loss"] for r in log]
    smooth = [sum(losses[max(0, i - 19) : i + 1]) / len(losses[max(0, i - 19) : i + 1]) for i in range(len(losses))]
    held = [(r["step"], r["held_out_loss"]) for r in log if "held_out_loss" in r]
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(steps, smooth, label="training loss (mean of 20 steps)")
    axis.plot([s for s, _ in held], [v for _, v in held], "o-", label="held-out loss (last 5 % of valid)")
    axis.set(xlabel="step", ylabel="next-token cross-entropy (nats)", title="GPT-NeoX on WikiText-2")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(target, dpi=90)
    plt.close(figure)


def export(args: argparse.Namespace, execution: Execution) -> None:
    """The best step as an HF folder (float32 weights), with its curves, log and record (test perplexity
    measured here, on ``--device`` in ``--dtype``)."""
    out: Path = args.output_dir
    best = load_checkpoint(out / "best.pt")
    if best is None:
        raise SystemExit(f"--export needs {out / 'best.pt'}: train first")
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    model = GPTNeoXForCausalLM(neox_config(len(tokenizer), args.hidden_size, args.layers, args.heads,
                                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    model.load_state_dict(best["model"])
    model.set_attn_implementation("sdpa")
    model.eval()
    log = read_log(out / LOG)
    record = {"steps_trained": len(log), "best_step": best["step"], "held_out_loss": best["held_out_loss"],
              "wall_time_s": sum(r["elapsed_s"] for r in _run_ends(log)), "runs": read_log(out / RUNS),
              "parameters": sum(p.numel() for p in model.parameters())}
    if args.test_text.is_file():
        test = token_stream(args.test_text, tokenizer)
        model.to(device=execution.device, dtype=execution.dtype)
        ppl = strided_perplexity(model, test, lambda: DynamicCache(config=model.config), max_length=1024, stride=512)
        model.to(device="cpu", dtype=torch.float32)
        record["test_perplexity"] = {"text": str(args.test_text), "max_length": 1024, "stride": 512,
                                     "device": str(execution.device), "dtype": execution.dtype_name, **ppl}
        print(f"test perplexity {ppl['perplexity']:.2f} over {ppl['tokens']} tokens")
    target: Path = args.export
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    (target / "training_logs").mkdir(exist_ok=True)
    (target / "training_logs" / LOG).write_bytes((out / LOG).read_bytes())
    plot_curves(log, target / "training_curves.png")
    (target / RECORD).write_text(json.dumps(record, indent=1), encoding="utf-8")
    print(f"exported step {best['step']} (held-out loss {best['held_out_loss']:.3f}) to {target}")


def _run_ends(log: list[dict]) -> list[dict]:
    """The last record of each uninterrupted run in a log (``elapsed_s`` restarts at each resume)."""
    ends = [row for row, after in zip(log, log[1:], strict=False) if after["elapsed_s"] < row["elapsed_s"]]
    return ends + log[-1:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[threads_flag(2), execution_flags()])
    parser.add_argument("--output-dir", type=Path, default=Path("checkpoints/neox"))
    parser.add_argument("--train-text", type=Path, default=DEFAULT_TEXT.with_name("valid.txt"))
    parser.add_argument("--test-text", type=Path, default=DEFAULT_TEXT)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--checkpoint-every", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-train", action="store_true", help="only --export")
    parser.add_argument("--export", type=Path, help="write the HF checkpoint of the best step here")
    parser.add_argument("--resume", action="store_true", help="continue the checkpoint in --output-dir")
    parser.add_argument("--overwrite", action="store_true", help="start again (checkpoints and log deleted)")
    args = parser.parse_args(argv)
    for flag in ("vocab_size", "hidden_size", "layers", "heads", "seq_len", "batch_size", "steps", "eval_every",
                 "checkpoint_every", "threads"):
        if getattr(args, flag) < 1:
            setting_error(parser, f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.hidden_size % args.heads:
        setting_error(parser, f"--hidden-size {args.hidden_size} must be a multiple of --heads {args.heads}")
    if args.resume and args.overwrite:
        setting_error(parser, "--resume and --overwrite exclude each other")
    if problem := execution_problem(args):
        setting_error(parser, problem)
    if not args.no_train:
        if problem := missing_file_problem("--train-text", args.train_text, "WikiText-2 valid"):
            setting_error(parser, problem)
        if (args.output_dir / "last.pt").exists() and not (args.resume or args.overwrite):
            setting_error(parser, f"{args.output_dir} holds a started run: pass --resume to continue it or "
                                  "--overwrite to start again")
    elif args.export is None:
        setting_error(parser, "--no-train without --export does nothing")
    if args.overwrite:
        for name in ("last.pt", "best.pt", LOG):
            (args.output_dir / name).unlink(missing_ok=True)
    execution = apply_execution_flags(args)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    if not args.no_train:
        train(args, execution)
    if args.export:
        export(args, execution)
    return 0


if __name__ == "__main__":
    sys.exit(main())
