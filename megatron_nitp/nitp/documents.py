"""Document boundaries in the NITP validity mask (--reset-attention-mask).

When attention is reset at each end-of-document token (megatron-core's GPTDataset: the EOD at
position i ends its document, rows i+1.. no longer see columns <= i), the implicit target
z_{t+1} of a position t holding an EOD belongs to the next document: predicting it would carry
information across the boundary the attention mask just closed. Such t are not NITP-valid. (With
--eod-mask-loss the LM loss mask already drops exactly these positions; without it the LM keeps
them, as in Megatron-LM, and only NITP drops them.)
"""

import torch


def within_document_mask(loss_mask: torch.Tensor, tokens: torch.Tensor, eod: int) -> torch.Tensor:
    """`loss_mask` ([b, s], any layout of positions) with every position whose token is `eod`
    zeroed; same dtype as `loss_mask`."""
    return loss_mask.masked_fill(tokens == eod, 0)
