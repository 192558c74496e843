"""The ``autodeploy`` model of lm-evaluation-harness.

``import autodeploy.integrations.lm_eval`` registers the model name ``autodeploy``::

    lm_eval --model autodeploy --model_args model=path/to/hf_dir,world_size=1,max_seq_len=2048 \\
        --tasks hellaswag
    python -m autodeploy.tools.lm_eval --model autodeploy --model_args model=... --tasks ...

``--model_args``: ``model`` (or ``pretrained``) and any ``LlmArgs`` setting; a dotted key sets a
nested one (``kv_cache_config.max_tokens=4096``, ``transforms.compile_model.backend=...``);
``yaml_extra`` takes ``a.yaml;b.yaml``. lm-eval's ``--batch_size`` is accepted and ignored
(requests are continuously batched up to ``max_batch_size``); ``--device`` sets ``device``.

The three request types run on autodeploy's runtime:

- ``loglikelihood`` / ``loglikelihood_rolling``: every (context + continuation) sequence is a
  prompt; the log-probabilities of its tokens come from the engine's paged prefill passes
  (``SamplingParams.prompt_logprobs``, see ``prompt_scoring.py``). Tokenization, empty contexts and
  rolling windows follow lm-eval's own ``TemplateLM`` and its Hugging Face model, so results
  match ``--model hf`` on the same checkpoint.
- ``generate_until``: greedy (or sampled, with ``do_sample``/``temperature``) generation of up
  to ``max_gen_toks`` tokens; stops at the ``until`` strings and end of sequence; the text is cut
  at the first stop string, as lm-eval's Hugging Face model does.

On CPU the build uses ``compile_backend: torch-simple`` unless ``--model_args`` names one (the
CPU default ``torch-direct`` does not give per-token logits for ``prompt_logprobs`` yet).

``max_length`` (the longest scored sequence) is ``max_seq_len - 2``: a scored sequence of
``max_length + 1`` tokens is one prompt, plus one sampled token.
"""

from __future__ import annotations

from typing import Any

from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (
    _add_special_kwargs,
    handle_stop_sequences,
    has_bos_prefix,
    normalize_gen_kwargs,
    postprocess_generated_text,
)

from ..utils.errors import ConfigError
from ..utils.logger import logger
from .prompt_scoring import score_prompts

MODEL_NAME = "autodeploy"
DEFAULT_MAX_GEN_TOKS = 256


def settings_from_model_args(model_args: dict[str, Any]) -> dict[str, Any]:
    """``--model_args`` as LlmArgs keyword arguments (dotted keys nest; see the docstring)."""
    settings: dict[str, Any] = {}
    for key, value in model_args.items():
        if key == "pretrained":
            key = "model"
        if key == "yaml_extra" and isinstance(value, str):
            value = [part for part in value.split(";") if part]
        node = settings
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--model_args {key}: {part!r} is set to a value already.")
        node[leaf] = value
    return settings


def _prefer_scoring_backend(settings: dict[str, Any]) -> None:
    """On CPU, build with ``torch-simple`` unless the caller chose a compile backend: the CPU
    default ``torch-direct`` rewrites the logit-gather op, so the engine cannot make the
    all-token model that ``prompt_logprobs`` needs (``score_prompts`` would refuse the result)."""
    import torch

    device = str(settings.get("device", "auto"))
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if on_cpu and "compile_backend" not in settings:
        settings["compile_backend"] = "torch-simple"
        logger.info("lm-eval on CPU: compile_backend torch-simple (prompt_logprobs needs it)")


@register_model(MODEL_NAME)
class AutoDeployLM(TemplateLM):
    """lm-eval model backed by ``autodeploy.LLM`` (see the module docstring)."""

    def __init__(self, batch_size: Any = None, device: str | None = None, **model_args: Any):
        super().__init__()
        from ..runtime.llm import LLM

        settings = settings_from_model_args(model_args)
        if device is not None:
            settings.setdefault("device", device)
        _prefer_scoring_backend(settings)
        self.llm = LLM(**settings)
        self.tokenizer = self.llm.tokenizer
        if self.tokenizer is None:
            raise ConfigError(
                f"lm-eval needs a tokenizer, and model {self.llm.args.model!r} has none. Set "
                "tokenizer=<id or directory> in --model_args."
            )
        self.add_bos_token: bool | None = None

    @classmethod
    def create_from_arg_string(
        cls, arg_string: str, additional_config: dict[str, Any] | None = None
    ) -> AutoDeployLM:
        """``--model_args`` win over lm-eval's own ``--device`` / ``--max_batch_size``."""
        model_args = lm_utils.simple_parse_args_string(arg_string)
        return cls.create_from_arg_obj(model_args, additional_config)

    @classmethod
    def create_from_arg_obj(
        cls, arg_dict: dict[str, Any], additional_config: dict[str, Any] | None = None
    ) -> AutoDeployLM:
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        for key in ("device", "max_batch_size"):
            if key in arg_dict:
                extra.pop(key, None)
        return cls(**arg_dict, **extra)

    # ------------------------------------------------------------------ tokenization

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self.llm.args.max_seq_len - 2

    @property
    def max_gen_toks(self) -> int:
        return DEFAULT_MAX_GEN_TOKS

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", self.llm.args.model)).replace("/", "__")

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, **kwargs: Any
    ) -> list[int]:
        special = _add_special_kwargs(add_special_tokens, self.add_bos_token)
        if add_special_tokens is None and has_bos_prefix(
            string, self.tokenizer.decode(self.prefix_token_id)
        ):
            special["add_special_tokens"] = False
        return self.tokenizer.encode(string, **special)

    def tok_decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------------ requests

    def _loglikelihood_tokens(
        self, requests: list[tuple[Any, list[int], list[int]]], **kwargs: Any
    ) -> list[tuple[float, bool]]:
        sequences, lengths = [], []
        for _, context_enc, continuation_enc in requests:
            if not continuation_enc or len(continuation_enc) > self.max_length:
                raise ConfigError(
                    f"A continuation of {len(continuation_enc)} tokens cannot be scored with "
                    f"max_length={self.max_length} (max_seq_len - 2); raise max_seq_len."
                )
            # as lm-eval's HF model: keep the last max_length + 1 tokens
            sequences.append((context_enc + continuation_enc)[-(self.max_length + 1) :])
            lengths.append(len(continuation_enc))
        results = []
        for scores, length, request in zip(score_prompts(self.llm, sequences), lengths, requests):
            tail = scores[-length:]
            answer = (sum(s.logprob for s in tail), all(s.greedy for s in tail))
            results.append(answer)
            if request[0] is not None:
                self.cache_hook.add_partial("loglikelihood", request[0], answer)
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        windows, owners = [], []
        for index, (text,) in enumerate(req.args for req in requests):
            rolling = lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            for context, continuation in map(lm_utils.make_disjoint_window, rolling):
                windows.append((None, context, continuation))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows)):
            totals[owner] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        from ..runtime.sampling import SamplingParams

        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        prompts, params, stops = [], [], []
        for context, gen_kwargs in (req.args for req in requests):
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen_toks = kwargs.pop("max_gen_toks")
            if max_gen_toks >= self.max_length:
                raise ConfigError(
                    f"max_gen_toks={max_gen_toks} leaves no room for a prompt with "
                    f"max_length={self.max_length} (max_seq_len - 2); raise max_seq_len."
                )
            context_len = self.max_length - max_gen_toks  # as lm-eval's HF model truncates
            prompts.append(self.tok_encode(context)[-context_len:])
            sampled = bool(kwargs.get("do_sample")) and float(kwargs.get("temperature", 1.0)) > 0
            params.append(
                SamplingParams(
                    max_tokens=max_gen_toks,
                    temperature=float(kwargs.get("temperature", 1.0)) if sampled else 0.0,
                    stop=[s for s in until if s] or None,
                )
            )
            stops.append(until)
        outputs = self.llm.generate(prompts, params)
        results = []
        for request, output, until in zip(requests, outputs, stops):
            text = self.tok_decode(output.outputs[0].token_ids)
            text = postprocess_generated_text(generation=text, stop=until, think_end_token=None)
            results.append(text)
            self.cache_hook.add_partial("generate_until", request.args, text)
        return results
