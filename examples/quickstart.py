"""MambaRec in a few lines: train on the built-in ``tiny`` synthetic dataset,
evaluate, and recommend.

    python examples/quickstart.py
"""
import torch

from mambarec_pyg import (MambaRec, MambaRecConfig, Trainer, TrainConfig, evaluate,
                          make_synthetic)

torch.manual_seed(999)                       # the initial weights are seeded too
data = make_synthetic('tiny', seed=0)         # 100 users, 60 items, image + text
model = MambaRec(data, MambaRecConfig())      # the released model, paper settings

# The MMRec protocol: BPR + Adam, validation after every epoch, early stopping,
# test metrics at the best validation epoch. Small batches suit the tiny data.
result = Trainer(model, data, TrainConfig(batch_size=128, max_epochs=30, device='cpu'),
                 quiet=True).fit()
print(f'best epoch {result.best_epoch}: valid Recall@20 '
      f'{result.valid["recall@20"]:.4f}, test Recall@20 {result.test["recall@20"]:.4f}')

# The model now holds the best epoch's weights.
metrics = evaluate(model, data, 'test')
print({k: round(v, 4) for k, v in metrics.items() if k.endswith('@20')})
print('top-5 for users 0, 1:', model.recommend(torch.tensor([0, 1]), k=5).tolist())
