"""--reset-attention-mask / --eod-mask-loss / --reset-position-ids with NITP (issue #15 item 7).

megatron-core's GPTDataset builds the masks; the NITP validity then excludes every position whose
implicit target z_{t+1} lies in the next document, and the local attention spec honours the
per-sample mask (a document's outputs do not depend on the documents before it).
"""

import json

import pytest
import torch
from megatron.core.datasets.gpt_dataset import _get_ltor_masks_and_position_ids

from megatron_nitp.data.datasets import build_datasets
from megatron_nitp.data.preprocess import preprocess_jsonl
from megatron_nitp.data.tokenizers import build_tokenizer
from megatron_nitp.nitp.config import NITPConfig
from megatron_nitp.nitp.documents import within_document_mask
from tests.helpers import suite_parse_args as parse_args

VOCAB, SEQ = 64, 16
EOD = VOCAB  # NullTokenizer: ids 0..V-1, EOD = V


def test_dataset_masks_and_nitp_validity_follow_documents(tmp_path):
    # Documents of 3, 5 and 7 ids (+ EOD each): known boundaries inside the first sample.
    docs = [[1, 2, 3], [4, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15]] * 4
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": " ".join(map(str, d))}) + "\n" for d in docs))
    preprocess_jsonl(str(path), str(tmp_path / "d"), "NullTokenizer", vocab_size=VOCAB,
                     append_eod=True, progress=False)
    tokenizer = build_tokenizer("NullTokenizer", vocab_size=VOCAB)
    assert tokenizer.eod == EOD
    train, _, _ = build_datasets([str(tmp_path / "d_text_document")], "100,0,0", False, SEQ,
                                 tokenizer, 1234, (4, 0, 0), reset_position_ids=True,
                                 reset_attention_mask=True, eod_mask_loss=True)
    sample = train[0]
    tokens = torch.as_tensor(sample["tokens"])
    ends = torch.nonzero(tokens == EOD).flatten().tolist()
    assert len(ends) >= 2  # the sample spans several documents
    # megatron-core's meaning: no loss predicting from an EOD, positions restart after it,
    # no attention from a document to the ones before it.
    assert torch.equal(torch.as_tensor(sample["loss_mask"]), (tokens != EOD).float())
    mask = torch.as_tensor(sample["attention_mask"])[0]  # True = masked
    e = ends[0]
    assert mask[e + 1:, :e + 1].all() and not mask[e, :e + 1].any()
    assert sample["position_ids"][e + 1] == 0
    # NITP validity: t is out exactly where t holds an EOD (z_{t+1} starts the next document).
    valid = within_document_mask(torch.ones(SEQ), tokens, EOD)
    assert torch.nonzero(valid == 0).flatten().tolist() == ends


@pytest.fixture(scope="module")
def model(mp):
    from megatron_nitp.models.builder import (build_model_chunks, padded_vocab_size,
                                              transformer_config_from_args)

    args = parse_args(["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
                       "--seq-length", str(SEQ), "--vocab-size", str(VOCAB), "--nitp",
                       "--nitp-target-layer", "1", "--transformer-impl", "local",
                       "--reset-attention-mask"])
    args.padded_vocab_size = padded_vocab_size(VOCAB + 1, args.make_vocab_size_divisible_by, 1)
    (m,) = build_model_chunks(args, transformer_config_from_args(args), NITPConfig.from_args(args))
    return m.eval()


def _forward(model, tokens, reset):
    labels = torch.roll(tokens, -1)
    attention_mask, loss_mask, position_ids = _get_ltor_masks_and_position_ids(
        tokens, EOD, False, reset, False, True)
    nitp_mask = within_document_mask(loss_mask, tokens, EOD) if reset else None
    with torch.no_grad():
        lm, nitp, valid = model(tokens[None], position_ids[None], attention_mask[None],
                                labels=labels[None], loss_mask=loss_mask[None],
                                nitp_loss_mask=None if nitp_mask is None else nitp_mask[None])
    return lm[0], nitp[0], valid[0]


def test_local_attention_honours_the_document_mask_and_nitp_stays_inside(model):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (SEQ,), generator=g)
    tokens[5] = EOD  # document A = positions 0..5, document B = 6..15
    other = tokens.clone()
    other[:5] = (tokens[:5] + 7) % VOCAB  # a different document A
    lm, nitp, valid = _forward(model, tokens, reset=True)
    lm2, nitp2, _ = _forward(model, other, reset=True)
    # Document B (its LM targets 6..14, its NITP targets 7..15) cannot see document A.
    torch.testing.assert_close(lm2[6:15], lm[6:15], rtol=0, atol=1e-6)
    torch.testing.assert_close(nitp2[6:15], nitp[6:15], rtol=0, atol=1e-6)
    # Position 5 (the EOD) would align with z_6, document B's first position: excluded; the
    # last position has no target.
    assert torch.nonzero(valid == 0).flatten().tolist() == [5, 15]
    assert nitp[5] == 0 and (nitp[:5] > 0).all() and (nitp[6:15] > 0).all()
    # Without the reset, document A is visible to B and position 5 counts.
    lm_plain, _, valid_plain = _forward(model, tokens, reset=False)
    lm2_plain, _, _ = _forward(model, other, reset=False)
    assert (lm2_plain[6:15] - lm_plain[6:15]).abs().max() > 1e-4
    assert torch.nonzero(valid_plain == 0).flatten().tolist() == [15]
