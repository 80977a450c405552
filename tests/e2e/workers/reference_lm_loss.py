"""Independent reference for tests/e2e/test_eval_lm_loss.py: concatenate every document of the
indexed dataset, score token t+1 from tokens [k*S, t] with windows starting at k*S, via logits
(labels=None) and log_softmax -- not megatron's fused loss path. Prints the mean nats/token."""

import sys

import numpy as np
import torch

sys.path.insert(0, sys.argv[4])


def main():
    ckpt, prefix, seq = sys.argv[1], sys.argv[2], int(sys.argv[3])
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_nitp.training.checkpoint_io import load_model_single_process

    model, _, _ = load_model_single_process(ckpt, None, drop_nitp_head=True)
    ds = IndexedDataset(prefix)
    stream = torch.from_numpy(np.concatenate([np.asarray(ds[i], dtype=np.int64)
                                              for i in range(len(ds))]))
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, stream.numel() - 1, seq):
            w = stream[start:start + seq + 1].unsqueeze(0)
            inputs = w[:, :-1]
            logits = model(inputs, torch.arange(inputs.size(1)).unsqueeze(0), None, labels=None)
            logp = torch.log_softmax(logits.float(), dim=-1)[0]
            total -= logp[torch.arange(inputs.size(1)), w[0, 1:]].sum().item()
            count += inputs.size(1)
    print(f"REFERENCE {total / count} {count}")


if __name__ == "__main__":
    main()
