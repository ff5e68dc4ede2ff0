"""Issue #18's accuracy fixes, each against a reference built here: transformers' own parameter counts, peft's
trainable counts, the bytes peft's k-bit preparation leaves on the device, and the GPU-memory reading of a card."""

import json

import pytest

from llmkit import memory, modelspec
from llmkit.config import MemoryEstimateConfig

TINY_MT5 = dict(model_type="mt5", d_model=32, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=8,
                vocab_size=96, feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0,
                pad_token_id=0)


def _write(tmp_path, fields, name="config.json"):
    path = tmp_path / name
    path.write_text(json.dumps(fields))
    return str(path)


def _untied_seq2seq(fields, tmp_path):
    """A T5 v1.1-style checkpoint (its own lm_head, tie_word_embeddings false) loaded the way users load it."""
    import torch
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_config(AutoConfig.for_model(**fields))
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    model.save_pretrained(tmp_path / "ckpt")
    return AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "ckpt")


@pytest.mark.parametrize("model_type, gated", [("mt5", True), ("t5", True), ("t5", False)])
def test_t5_family_parameter_count_equals_transformers(tmp_path, model_type, gated):
    fields = dict(TINY_MT5, model_type=model_type, feed_forward_proj="gated-gelu" if gated else "relu")
    reference = sum(p.numel() for p in _untied_seq2seq(fields, tmp_path).parameters())
    spec = modelspec.from_config_dict(fields, name="tiny", source="config")
    assert spec.family == "encoder-decoder" and spec.approximated is None
    assert spec.params_total() == reference


def test_mt5_without_feed_forward_proj_is_gated_like_transformers():
    from transformers import MT5Config

    fields = {k: v for k, v in TINY_MT5.items() if k != "feed_forward_proj"}
    assert MT5Config(**fields).is_gated_act
    assert modelspec.from_config_dict(fields, name="tiny", source="config").activation == "gated-gelu"


def test_mt0_xxl_is_12_92b():
    fields = dict(model_type="mt5", d_model=4096, d_ff=10240, num_layers=24, num_decoder_layers=24, num_heads=64,
                  d_kv=64, vocab_size=250112, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    assert round(modelspec.from_config_dict(fields, name="mt0-xxl", source="config").params_total() / 1e9, 2) == 12.92


@pytest.mark.parametrize("targets", [("q", "v"), ("q_proj", "v_proj"), ("q", "k", "v", "o", "wi_0", "wo")])
def test_t5_lora_trainable_equals_peft_with_cross_attention(tmp_path, targets):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    peft_targets = [{"q_proj": "q", "v_proj": "v"}.get(t, t) for t in targets]   # llmkit's names -> T5's
    model = get_peft_model(AutoModelForSeq2SeqLM.from_config(AutoConfig.for_model(**TINY_MT5)),
                           LoraConfig(r=4, target_modules=peft_targets))
    reference = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result = memory.estimate(MemoryEstimateConfig(model=_write(tmp_path, TINY_MT5), peft="lora", lora_rank=4,
                                                  lora_targets=targets, seq_len=8, overhead="0"))
    assert result.params_trainable == reference


TINY_LLAMA = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, vocab_size=100, tie_word_embeddings=False)


def test_qlora_weights_follow_peft_kbit_preparation(tmp_path):
    """llmkit's QLoRA runs call prepare_model_for_kbit_training: what bitsandbytes left alone becomes fp32."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

    AutoModelForCausalLM.from_config(AutoConfig.for_model(**TINY_LLAMA), dtype=torch.bfloat16).save_pretrained(
        tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.bfloat16, quantization_config=(
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)))
    model = get_peft_model(prepare_model_for_kbit_training(model, use_gradient_checkpointing=False),
                           LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    on_device = 0
    for param in model.parameters():
        on_device += param.nbytes
        if type(param).__name__ == "Params4bit":
            on_device += param.quant_state.absmax.nbytes      # one fp32 absmax per 64 values
    assert {p.dtype for p in model.parameters() if type(p).__name__ != "Params4bit"} == {torch.float32}
    for precision in (None, "bf16"):     # the base dtype does not matter: the preparation upcasts
        result = memory.estimate(MemoryEstimateConfig(
            model=_write(tmp_path, TINY_LLAMA), peft="lora", quant="nf4", precision=precision, seq_len=8,
            overhead="0"))
        assert result.per_device["weights"] == on_device


def _saved_per_block(fields, auto_name, b, s, layer_keys):
    """Bytes autograd saves for one more block (unique storages, parameters excluded), measured with
    saved_tensors_hooks by differencing a model with one more block. layer_keys: the config fields to raise."""
    import torch
    import transformers
    from transformers import AutoConfig

    def saved(extra):
        torch.manual_seed(0)
        model = getattr(transformers, auto_name).from_config(AutoConfig.for_model(**dict(fields, **extra)),
                                                            attn_implementation="eager")
        model.train()
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen = {}

        def pack(tensor):
            if tensor.untyped_storage().data_ptr() not in params:
                seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor
        ids = torch.randint(0, fields["vocab_size"], (b, s))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(input_ids=ids, labels=ids).loss
        return sum(seen.values())
    base = saved({key: 1 for key in layer_keys})
    return [saved({k: 2 if k == key else 1 for k in layer_keys}) - base for key in layer_keys]


def _estimated_blocks(fields, tmp_path, b, s):
    cfg = MemoryEstimateConfig(model=_write(tmp_path, fields), batch_size=b, seq_len=s, attention="eager",
                               device="cpu", overhead="0")
    spec = memory.load_model_spec(cfg)
    setup = memory._setup(cfg, spec)
    groups = spec.parameter_groups(setup.task)
    return memory._activations(cfg, spec, setup, memory._tensors(cfg, spec, setup, groups)).per_layer


@pytest.mark.parametrize("fields, auto_name, layer_keys", [
    (dict(model_type="gpt2", n_embd=64, n_inner=224, n_head=4, vocab_size=96, n_positions=64),
     "AutoModelForCausalLM", ("n_layer",)),
    (dict(TINY_MT5, d_ff=224, model_type="t5", feed_forward_proj="relu"), "AutoModelForSeq2SeqLM",
     ("num_layers", "num_decoder_layers")),
    (dict(TINY_MT5, d_ff=224), "AutoModelForSeq2SeqLM", ("num_layers", "num_decoder_layers")),
])
def test_block_activations_equal_saved_tensors(tmp_path, fields, auto_name, layer_keys):
    """GPT-2's gelu_new (four saved intermediates) and T5/mT5 encoder and decoder blocks, fp32, dropout 0.1."""
    b, s = 3, 40
    measured = _saved_per_block(fields, auto_name, b, s, layer_keys)
    per_layer = _estimated_blocks(dict(fields, **{key: 2 for key in layer_keys}), tmp_path, b, s)
    estimated = [per_layer[0]] if len(layer_keys) == 1 else [per_layer[0], per_layer[-1]]
    for got, want in zip(estimated, measured):
        assert abs(got / want - 1) < 0.01, (estimated, measured)


def test_cuda_autocast_keeps_fp32_islands_and_cpu_keeps_its_rows(tmp_path):
    bert = dict(model_type="bert", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                vocab_size=96, max_position_embeddings=64, type_vocab_size=2, attention_probs_dropout_prob=0.1,
                hidden_dropout_prob=0.1)
    kwargs = dict(model=_write(tmp_path, bert), batch_size=2, seq_len=32, attention="eager", mixed_precision="bf16",
                  overhead="0")
    cuda = memory.estimate(MemoryEstimateConfig(device="cuda", **kwargs)).explain["activations"]
    cpu = memory.estimate(MemoryEstimateConfig(device="cpu", **kwargs)).explain["activations"]
    # per block b*s*(30h + 4I + 16) + 7 per score (fp32 softmax 4, bf16 copy 2, 1-byte dropout mask) on CUDA;
    # b*s*(28h + 4I + 16) + 6 per score under CPU autocast
    cuda_block = 2 * 32 * (30 * 64 + 4 * 128 + 16) + 2 * 4 * 32 * 32 * 7
    cpu_block = 2 * 32 * (28 * 64 + 4 * 128 + 16) + 2 * 4 * 32 * 32 * 6
    assert f"per block b*s*(30*h + 4*I + 16) + b*heads*s*s*7 = {cuda_block:,}" in cuda
    assert f"per block b*s*(28*h + 4*I + 16) + b*heads*s*s*6 = {cpu_block:,}" in cpu


@pytest.mark.parametrize("text, gib", [("80GB", 79.65), ("80G", 79.65), ("24GB", 23.99), ("141GB", 140.4),
                                       ("80GiB", 80.0), ("75GB", 69.85), ("8GB", 7.45)])
def test_gpu_memory_reads_a_card_size_as_that_card(text, gib):
    # nvidia-smi's memory.total of the card sold under that size (H100 80GB: 81,559 MiB; RTX 4090: 24,564 MiB;
    # H200: 143,771 MiB); other GB figures are powers of ten and GiB is exact
    cfg = MemoryEstimateConfig(params="125M", gpu_memory=text)
    assert round(cfg.gpu_memory_bytes / 2**30, 2) == gib
    card = text in ("80GB", "80G", "24GB", "141GB")
    assert ("GB card" in memory.estimate(cfg).assumptions.get("gpu_memory_read_as", "")) == card
