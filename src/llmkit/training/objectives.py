"""Training objectives: what a batch looks like and which positions carry loss.

Every collator returns the model's inputs plus `labels` aligned with the inputs (-100 = no loss); decoder-only
objectives (causal-lm, prefix-lm) shift inside `token_loss`, as transformers' own causal-LM loss does. Randomness
(masking, spans, prefix split) is a pure function of the run seed and each row's split, epoch and index
(`row_generators`), never of a global generator: a resumed run, which skips batches without collating them, sees
the same batches as an uninterrupted one, the dropout RNG the Trainer restores is not drawn from by collation,
every evaluation masks alike (a deterministic eval loss), and the ranks of a launch, reading different rows, mask
differently.
"""

from __future__ import annotations

import numpy as np
import torch

from llmkit.errors import ConfigError
from llmkit.training.data import ROW_KEY

NUM_TOKENS = "num_tokens"   # non-pad tokens of a batch: popped before the model sees the batch
SHIFTED = {"causal-lm": True, "prefix-lm": True, "masked-lm": False, "seq2seq": False}


def token_loss(logits: torch.Tensor, labels: torch.Tensor, shift: bool, num_items=None) -> torch.Tensor:
    """Sum of token cross-entropies divided by the number of target tokens of the whole optimizer step.

    With the Trainer's `num_items_in_batch` (counted over all micro-batches of a gradient-accumulation window),
    k micro-batches of b give exactly the loss and gradients of one batch of k*b, however the targets are spread.
    """
    # the labels move, never the logits: a slice of the (batch, length, vocab) logits would be copied whole, in the
    # forward and again in the backward (about 7 % of a small model's step)
    virtual = logits.shape[-2] - labels.shape[-1]   # prompt/p-tuning prepend virtual tokens: they carry no target
    if virtual > 0 or shift:
        labels = torch.nn.functional.pad(labels, (max(virtual, 0), 1 if shift else 0), value=-100)
        if shift:
            labels = labels[..., 1:]
    total = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                              ignore_index=-100, reduction="sum")
    count = num_items if num_items is not None else labels.ne(-100).sum()
    if torch.is_tensor(count):
        count = count.to(total.device)
    return total / count


def make_loss(objective: str):
    shift = SHIFTED[objective]

    def compute(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        return token_loss(logits, labels, shift, num_items_in_batch)

    return compute


def row_generators(features: list[dict], seed: int) -> list[np.random.Generator]:
    """One generator per row, seeded (numpy's SeedSequence: stable across processes, unlike hash()) from the run
    seed and the row's ROW_KEY, so a row's random choices depend neither on what was drawn before it nor on the
    rows it is batched with. Rows without a key (a collator called directly) are numbered by their place."""
    return [np.random.default_rng([seed, *f.get(ROW_KEY, (i,))]) for i, f in enumerate(features)]


class BatchCollator:
    """What every llmkit collator shares: padding rows to the batch's width, and the count of tokens trained on."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id
        self.tokens_seen = 0          # non-pad tokens trained on (counted by LlmkitTrainer.training_step)

    def _pad(self, seqs: list[list[int]], value: int) -> torch.Tensor:
        width = max(len(s) for s in seqs)
        out = torch.full((len(seqs), width), value, dtype=torch.long)
        for i, s in enumerate(seqs):
            out[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
        return out


class CausalLMCollator(BatchCollator):
    """Next-token prediction over whole rows; pads carry no loss. Rows with position_ids (padding-free packing)
    are full blocks: no attention mask is passed, so transformers builds a block-diagonal causal mask from the
    restarting position ids (it does so only without a KV cache, hence use_cache=False), and each document's
    first token (position 0) is not a target."""

    def __call__(self, features: list[dict]) -> dict:
        ids = [list(f["input_ids"]) for f in features]
        if "position_ids" in features[0]:
            input_ids = torch.as_tensor(ids, dtype=torch.long)
            position_ids = torch.as_tensor([list(f["position_ids"]) for f in features], dtype=torch.long)
            labels = input_ids.masked_fill(position_ids == 0, -100)
            # use_cache=False: transformers looks for packed sequences only when no KV cache is being built
            return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels, "use_cache": False,
                    NUM_TOKENS: input_ids.numel()}
        input_ids = self._pad(ids, self.pad_id)
        attention_mask = self._pad([[1] * len(s) for s in ids], 0)
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                NUM_TOKENS: int(attention_mask.sum())}


def continuation_table(tokenizer) -> torch.Tensor:
    """True for tokens that continue a word (WordPiece `##x`; in Ġ/▁-marked vocabularies, tokens without the mark)."""
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    vocab = [t or "" for t in vocab]
    marked = sum(1 for t in vocab if t.startswith(("Ġ", "▁"))) > len(vocab) // 10
    special = set(tokenizer.all_special_ids)
    table = torch.zeros(len(vocab), dtype=torch.bool)
    for i, t in enumerate(vocab):
        if i in special:
            continue
        table[i] = t.startswith("##") or (marked and not t.startswith(("Ġ", "▁")) and t[:1].isalnum())
    return table


class MaskedLMCollator(BatchCollator):
    """BERT masking: choose `mlm_probability` of the tokens (or of the words), replace `mask_replace_prob` of them
    with the mask token and `random_replace_prob` with a random token, leave the rest; loss only on the chosen.

    Token masking is transformers' DataCollatorForLanguageModeling.torch_mask_tokens, called once per row with a
    generator seeded from the row (row_generators), so that a row's mask does not depend on the rows drawn before
    it and a resumed run masks as the uninterrupted one did (the collator's own generator is one stream for the
    whole run). Whole-word masking stays llmkit's: transformers' needs each row's offset mapping, which mapped token
    rows do not keep, and it forces mask_replace_prob to 1 (no 80/10/10)."""

    def __init__(self, tokenizer, mlm_probability=0.15, mask_replace_prob=0.8, random_replace_prob=0.1,
                 whole_word_masking=False, seed: int = 0):
        if tokenizer.mask_token_id is None:
            raise ConfigError("--objective masked-lm needs a mask token, and this tokenizer has none",
                              hint="add one: tokenizer.add_special_tokens({'mask_token': '[MASK]'}) (or '<mask>'), "
                                   "save it, and pass it with --tokenizer")
        super().__init__(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self.mask_id = tokenizer.mask_token_id
        self.vocab_size = len(tokenizer)
        self.special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self.p, self.p_mask, self.p_random = mlm_probability, mask_replace_prob, random_replace_prob
        self.continuation = continuation_table(tokenizer) if whole_word_masking else None
        self.seed = seed
        self.token_masking = None
        if not whole_word_masking:
            from transformers import DataCollatorForLanguageModeling

            self.token_masking = DataCollatorForLanguageModeling(
                tokenizer, mlm_probability=mlm_probability, mask_replace_prob=mask_replace_prob,
                random_replace_prob=random_replace_prob, return_tensors="pt")

    def __call__(self, features: list[dict]) -> dict:
        ids = [list(f["input_ids"]) for f in features]
        attention_mask = self._pad([[1] * len(s) for s in ids], 0)
        n_tokens = int(attention_mask.sum())
        if self.token_masking is not None:
            rows, labels = [], []
            for s, rng in zip(ids, row_generators(features, self.seed)):
                row = torch.tensor([s], dtype=torch.long)
                self.token_masking.generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
                masked, chosen = self.token_masking.torch_mask_tokens(
                    row, special_tokens_mask=torch.isin(row, self.special))
                rows.append(masked[0].tolist())
                labels.append(chosen[0].tolist())
            return {"input_ids": self._pad(rows, self.pad_id), "attention_mask": attention_mask,
                    "labels": self._pad(labels, -100), NUM_TOKENS: n_tokens}
        input_ids = self._pad(ids, self.pad_id)
        eligible = (attention_mask == 1) & ~torch.isin(input_ids, self.special)
        # per row: which words are chosen, what each chosen token becomes, the random replacements
        draw, how = np.ones(input_ids.shape), np.ones(input_ids.shape)
        random_ids = np.zeros(input_ids.shape, dtype=np.int64)
        for row, (s, rng) in enumerate(zip(ids, row_generators(features, self.seed))):
            draw[row, :len(s)], how[row, :len(s)] = rng.random(len(s)), rng.random(len(s))
            random_ids[row, :len(s)] = rng.integers(self.vocab_size, size=len(s))
        draw, how, random_ids = torch.from_numpy(draw), torch.from_numpy(how), torch.from_numpy(random_ids)
        # every token takes the draw of the first token of its word
        starts = ~self.continuation[input_ids]
        positions = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        word_start = torch.cummax(torch.where(starts, positions, torch.zeros_like(positions)), dim=1).values
        draw = draw.gather(1, word_start)
        chosen = eligible & (draw < self.p)
        labels = input_ids.masked_fill(~chosen, -100)
        to_mask = chosen & (how < self.p_mask)
        to_random = chosen & (how >= self.p_mask) & (how < self.p_mask + self.p_random)
        input_ids = input_ids.masked_fill(to_mask, self.mask_id)
        input_ids = torch.where(to_random, random_ids, input_ids)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, NUM_TOKENS: n_tokens}


def sentinel_tokens(count: int) -> list[str]:
    return [f"<extra_id_{i}>" for i in range(count)]


def max_spans(seq_len: int, noise_density: float, mean_span_length: float) -> int:
    noise = max(round(seq_len * noise_density), 1)
    return max(round(noise / mean_span_length), 1)


def ensure_sentinels(tokenizer, count: int) -> int:
    """Add T5 sentinel tokens `<extra_id_N>` the tokenizer lacks; returns how many were added."""
    missing = [t for t in sentinel_tokens(count) if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return len(missing)


def random_spans_noise_mask(length: int, noise_density: float, mean_span_length: float,
                            rng: np.random.Generator) -> np.ndarray:
    """T5's span-corruption mask: about noise_density of `length` tokens in spans of mean_span_length."""
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_nonnoise = length - num_noise
    num_spans = max(min(round(num_noise / mean_span_length), num_noise, num_nonnoise), 1)

    def segment(items: int, segments: int) -> np.ndarray:
        first = np.arange(items - 1) < segments - 1
        rng.shuffle(first)
        ids = np.cumsum(np.concatenate([[0], first]))
        return np.bincount(ids, minlength=segments)

    noise_lengths, nonnoise_lengths = segment(num_noise, num_spans), segment(num_nonnoise, num_spans)
    interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
    starts = np.cumsum(interleaved)[:-1]
    indicator = np.zeros(length, dtype=np.int64)
    indicator[starts] = 1
    return np.cumsum(indicator) % 2 == 1


class Seq2SeqCollator(BatchCollator):
    """T5 span corruption: the encoder reads the text with each corrupted span replaced by one sentinel; the decoder
    writes sentinel + span for every span, then eos. Loss on the decoder side only."""

    def __init__(self, tokenizer, noise_density: float, mean_span_length: float, decoder_start_token_id: int,
                 seed: int = 0):
        super().__init__(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self.eos = tokenizer.eos_token_id
        self.density, self.mean_span = noise_density, mean_span_length
        self.start = decoder_start_token_id
        self.tokenizer = tokenizer
        self.seed = seed
        self._sentinels: list[int] = []

    def sentinel(self, i: int) -> int:
        while len(self._sentinels) <= i:
            self._sentinels.append(self.tokenizer.convert_tokens_to_ids(f"<extra_id_{len(self._sentinels)}>"))
        return self._sentinels[i]

    def corrupt(self, tokens: list[int], rng: np.random.Generator) -> tuple[list[int], list[int]]:
        noise = random_spans_noise_mask(len(tokens), self.density, self.mean_span, rng)
        inputs, targets, span = [], [], -1
        for i, (token, is_noise) in enumerate(zip(tokens, noise)):
            if is_noise:
                if i == 0 or not noise[i - 1]:
                    span += 1
                    inputs.append(self.sentinel(span))
                    targets.append(self.sentinel(span))
                targets.append(token)
            else:
                inputs.append(token)
        return inputs + [self.eos], targets + [self.eos]

    def __call__(self, features: list[dict]) -> dict:
        rngs = row_generators(features, self.seed)
        pairs = [self.corrupt(list(f["input_ids"]), rng) for f, rng in zip(features, rngs)]
        input_ids = self._pad([p[0] for p in pairs], self.pad_id)
        attention_mask = self._pad([[1] * len(p[0]) for p in pairs], 0)
        labels = self._pad([p[1] for p in pairs], -100)
        decoder_input_ids = torch.cat([torch.full((len(pairs), 1), self.start, dtype=torch.long),
                                       labels[:, :-1].masked_fill(labels[:, :-1] == -100, self.pad_id)], dim=1)
        decoder_attention_mask = (labels != -100).long()
        return {"input_ids": input_ids, "attention_mask": attention_mask, "decoder_input_ids": decoder_input_ids,
                "decoder_attention_mask": decoder_attention_mask, "labels": labels,
                NUM_TOKENS: int(attention_mask.sum()) + int(decoder_attention_mask.sum())}


def prefix_lm_mask(lengths: list[int], prefix_lengths: list[int], width: int, dtype=torch.float32) -> torch.Tensor:
    """Additive 4D mask (batch, 1, query, key): a prefix token sees the whole prefix (bidirectional); a target token
    sees the prefix and the targets up to itself (causal); no real token sees padding."""
    positions = torch.arange(width)
    q, k = positions[:, None], positions[None, :]
    masks = []
    for length, prefix in zip(lengths, prefix_lengths):
        allowed = ((k < prefix) | (k <= q)) & (k < length)
        allowed |= torch.eye(width, dtype=torch.bool)   # padded queries see themselves: no all-masked row
        masks.append(allowed)
    allowed = torch.stack(masks)[:, None]
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)


class PrefixLMCollator(BatchCollator):
    """Prefix-LM on a decoder-only model (the GLM way): each document is split at a random point; the prefix
    attends bidirectionally through a 4D attention mask, and only the target part (ending with eos) has loss."""

    def __init__(self, pad_id: int, dtype=torch.float32, seed: int = 0):
        super().__init__(pad_id)
        self.dtype = dtype
        self.seed = seed

    def __call__(self, features: list[dict]) -> dict:
        ids = [list(f["input_ids"]) for f in features]
        # 1 .. len-1: at least one target token
        prefixes = [int(rng.integers(1, len(s))) for s, rng in zip(ids, row_generators(features, self.seed))]
        input_ids = self._pad(ids, self.pad_id)
        width = input_ids.shape[1]
        labels = torch.full_like(input_ids, -100)
        for i, (s, p) in enumerate(zip(ids, prefixes)):
            labels[i, p:len(s)] = input_ids[i, p:len(s)]
        return {"input_ids": input_ids,
                "attention_mask": prefix_lm_mask([len(s) for s in ids], prefixes, width, self.dtype),
                "labels": labels, NUM_TOKENS: sum(map(len, ids))}
